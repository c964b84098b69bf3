"""dysl_ros: dynamic-static layer skipping (DySL) for VLA policies, as a ROS 2 package.

Everything outside `dysl_ros.nodes` is ROS-free and importable without rclpy.
"""
__version__ = '0.1.0'
