"""ROS 2 nodes (policy, controller, MuJoCo simulation), QoS profiles and image conversion.

The only package that imports rclpy. Everything a node does beyond message plumbing lives in
ROS-free modules here (chunk scheduling, statistics, configuration) or in the core.
"""
