"""Policy + controller: `ros2 launch dysl_ros policy.launch.py [backend:=onnxruntime] ...`.

Arguments: params_file (default config/policy.yaml of the package), namespace, backend,
model_path (empty: the package's models/default), use_sim_time, autostart (the policy node
configures and activates itself; false leaves it unconfigured for a lifecycle manager).
Humble-compatible: PathJoinSubstitution (no `/` on substitutions), string parameters typed
with ParameterValue, autostart as a node parameter (launch_ros's LifecycleNode autostart is
newer than Humble).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'dysl_ros'


def generate_launch_description() -> LaunchDescription:
    params_file = LaunchConfiguration('params_file')
    namespace = LaunchConfiguration('namespace')
    use_sim_time = LaunchConfiguration('use_sim_time')
    arguments = [
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), 'config',
                                                'policy.yaml']),
            description='parameters file of the policy and controller nodes'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of both nodes (topics are relative)'),
        DeclareLaunchArgument('backend', default_value='torch',
                              choices=['torch', 'onnxruntime', 'tensorrt'],
                              description='inference backend of the policy node'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='model directory; empty: the package\'s '
                                          'models/default'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              choices=['true', 'false'], description='follow /clock'),
        DeclareLaunchArgument('autostart', default_value='true', choices=['true', 'false'],
                              description='configure and activate the policy node on start'),
    ]
    policy = LifecycleNode(
        package=PACKAGE, executable='policy_node', name='policy_node', namespace=namespace,
        output='screen',
        parameters=[params_file, {
            'backend': ParameterValue(LaunchConfiguration('backend'), value_type=str),
            'model_path': ParameterValue(LaunchConfiguration('model_path'), value_type=str),
            'autostart': ParameterValue(LaunchConfiguration('autostart'), value_type=bool),
            'use_sim_time': ParameterValue(use_sim_time, value_type=bool)}])
    controller = Node(
        package=PACKAGE, executable='controller_node', name='controller_node',
        namespace=namespace, output='screen',
        parameters=[params_file,
                    {'use_sim_time': ParameterValue(use_sim_time, value_type=bool)}])
    return LaunchDescription(arguments + [policy, controller])
