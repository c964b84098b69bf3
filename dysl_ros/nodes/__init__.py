"""ROS 2 nodes (policy, controller, MuJoCo simulation), QoS profiles and image conversion.

The only package that imports rclpy. Everything a node does beyond message plumbing lives in
the ROS-free core (runtime: chunk execution, the policy session, statistics) or in the
parameter and QoS tables here.
"""
