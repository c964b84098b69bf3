"""rosbag2 bags: record simulated episodes, replay bags through a policy, bags -> demos.

    python -m dysl_ros record --out bags/expert --source expert --episodes 2
    python -m dysl_ros record --out bags/dysl --source policy --model models/default
    python -m dysl_ros replay bags/dysl --out reports/dysl                 # step-locked
    python -m dysl_ros replay bags/dysl --out reports/live --live          # over DDS
    python -m dysl_ros bag2demos bags/robot_day1 bags/robot_day2 --out data/robot_demos

Bags are read and written with `rosbags` (pure Python, rosbag2 MCAP or sqlite3): no ROS
installation is needed, except for live replay (dysl_ros.nodes.bag_player, which
imports rclpy and is loaded only for --live; its comparison is dysl_ros.bags.evaluate).
Message types are the standard ROS 2 ones, so `ros2 bag info` / `ros2 bag play` read the bags
on a robot.
"""
