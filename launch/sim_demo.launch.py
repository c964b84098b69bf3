"""Simulation + policy + controller: `ros2 launch dysl_ros sim_demo.launch.py`.

Includes policy.launch.py (same arguments) and adds the simulation node. `suite` picks the
simulation (dysl_ros/sim/suites.py): `tabletop` (default, the MuJoCo tabletop: 7-D actions at
20 Hz, cameras front and wrist) or `metaworld-mt10` (Meta-World MT10: dx dy dz gripper at
80 Hz, cameras corner and gripperPOV on corner/image and gripperPOV/image). It sets the sim
node's `suite` parameter and, unless `params_file` is given, the policy and controller
parameters: config/policy.yaml for the tabletop, config/policy_mt10.yaml for MT10 (its
cameras, topics, rate, action names, limits and gripper convention over the declared
defaults; a `params_file` given for MT10 must set those too). The model must be made for the
suite:

    ros2 launch dysl_ros sim_demo.launch.py suite:=metaworld-mt10

runs the shipped MT10 model (models/metaworld); `model_path:=DIR` runs another.

Start an episode with `ros2 topic pub --once instruction std_msgs/String "data: open the
drawer"`, or set the `instruction` argument. Off the robot, `python -m dysl_ros demo [--suite
metaworld-mt10]` runs the same nodes without `ros2 launch`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'dysl_ros'
POLICY_ARGUMENTS = ('namespace', 'backend', 'model_path', 'use_sim_time', 'autostart')
# suite -> its policy / controller parameters file under config/. The names are those of
# dysl_ros/sim/suites.py, written out so that `ros2 launch` does not import MuJoCo
# (test/test_launch.py keeps the two equal).
SUITE_PARAMS = {'tabletop': 'policy.yaml', 'metaworld-mt10': 'policy_mt10.yaml'}
# suite -> its shipped model under models/ (Suite.model_folder), used when model_path is empty
SUITE_MODELS = {'tabletop': 'default', 'metaworld-mt10': 'metaworld'}


def include_policy(context, share):
    """policy.launch.py with the suite's parameters file and model, or those given."""
    suite = LaunchConfiguration('suite').perform(context)
    arguments = {name: LaunchConfiguration(name) for name in POLICY_ARGUMENTS}
    arguments['params_file'] = (LaunchConfiguration('params_file').perform(context)
                                or PathJoinSubstitution([share, 'config', SUITE_PARAMS[suite]]))
    if not LaunchConfiguration('model_path').perform(context):
        arguments['model_path'] = PathJoinSubstitution([share, 'models', SUITE_MODELS[suite]])
    return [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch',
                                                            'policy.launch.py'])),
        launch_arguments=arguments.items())]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument('suite', default_value='tabletop', choices=list(SUITE_PARAMS),
                              description='simulation suite (sim node) and the policy and '
                                          'controller parameters made for it'),
        DeclareLaunchArgument('params_file', default_value='',
                              description='parameters file of the policy and controller; '
                                          'empty: the suite\'s (config/policy.yaml, '
                                          'metaworld-mt10: config/policy_mt10.yaml)'),
        DeclareLaunchArgument('sim_params_file',
                              default_value=PathJoinSubstitution([share, 'config', 'sim.yaml']),
                              description='parameters file of the simulation node'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of all'),
        DeclareLaunchArgument('backend', default_value='torch',
                              choices=['torch', 'onnxruntime', 'tensorrt'],
                              description='inference backend of the policy node'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='model directory (made for the suite); empty: '
                                          "the suite's shipped model, models/default "
                                          '(tabletop) or models/metaworld (MT10)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              choices=['true', 'false'], description='follow /clock'),
        DeclareLaunchArgument('autostart', default_value='true', choices=['true', 'false'],
                              description='configure and activate the policy node on start'),
        DeclareLaunchArgument('instruction', default_value='',
                              description='start an episode with this instruction'),
    ]
    policy = OpaqueFunction(function=include_policy, args=[share])
    sim = Node(
        package=PACKAGE, executable='sim_node', name='sim_node',
        namespace=LaunchConfiguration('namespace'), output='screen',
        parameters=[LaunchConfiguration('sim_params_file'), {
            'suite': ParameterValue(LaunchConfiguration('suite'), value_type=str),
            'instruction': ParameterValue(LaunchConfiguration('instruction'), value_type=str),
            'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                           value_type=bool)}])
    return LaunchDescription(arguments + [policy, sim])
