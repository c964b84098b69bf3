"""Simulation + policy + controller: `ros2 launch dysl_ros sim_demo.launch.py`.

Includes policy.launch.py (same arguments) and adds the MuJoCo tabletop node. Start an
episode with `ros2 topic pub --once instruction std_msgs/String "data: open the drawer"`, or
set the `instruction` argument. Off the robot, `python -m dysl_ros demo` runs the same nodes
without `ros2 launch`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'dysl_ros'
POLICY_ARGUMENTS = ('params_file', 'namespace', 'backend', 'model_path', 'use_sim_time',
                    'autostart')


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument('params_file',
                              default_value=PathJoinSubstitution([share, 'config',
                                                                  'policy.yaml']),
                              description='parameters file of the policy and controller'),
        DeclareLaunchArgument('sim_params_file',
                              default_value=PathJoinSubstitution([share, 'config', 'sim.yaml']),
                              description='parameters file of the simulation node'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of all'),
        DeclareLaunchArgument('backend', default_value='torch',
                              choices=['torch', 'onnxruntime', 'tensorrt'],
                              description='inference backend of the policy node'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='model directory; empty: models/default'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              choices=['true', 'false'], description='follow /clock'),
        DeclareLaunchArgument('autostart', default_value='true', choices=['true', 'false'],
                              description='configure and activate the policy node on start'),
        DeclareLaunchArgument('instruction', default_value='',
                              description='start an episode with this instruction'),
    ]
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch',
                                                            'policy.launch.py'])),
        launch_arguments={name: LaunchConfiguration(name)
                          for name in POLICY_ARGUMENTS}.items())
    sim = Node(
        package=PACKAGE, executable='sim_node', name='sim_node',
        namespace=LaunchConfiguration('namespace'), output='screen',
        parameters=[LaunchConfiguration('sim_params_file'), {
            'instruction': ParameterValue(LaunchConfiguration('instruction'), value_type=str),
            'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                           value_type=bool)}])
    return LaunchDescription(arguments + [policy, sim])
