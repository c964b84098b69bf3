"""The controller node's per-tick figures over real rclpy on loopback (domain from
conftest.py): ~/tick_stats JSON, a prefix blend across DDS, chunk age in /diagnostics."""
import json

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dysl_ros.nodes.controller_node import ControllerNode
from dysl_ros.nodes.launcher import LocalLaunch, wait_for
from dysl_ros.nodes.qos import CHUNK_QOS, COMMAND_QOS, STATUS_QOS
from test_nodes import Collector

NAMES = ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper']
CHUNK_TOPIC, COMMAND_TOPIC = 'action_chunk', 'command'
TICK_TOPIC = '/controller_node/tick_stats'
KEYS = {'time', 'hold', 'switch', 'chunk_age_ms', 'command'}


def make_chunk(node, points, dx, gripper):
    """A chunk stamped now: `points` equal actions (dx, 0, ..., gripper), one period apart."""
    msg = JointTrajectory(joint_names=NAMES)
    msg.header.stamp = node.get_clock().now().to_msg()
    for i in range(points):
        msg.points.append(JointTrajectoryPoint(positions=[dx, 0, 0, 0, 0, 0, gripper],
                                               time_from_start=Duration(nanosec=i * 50_000_000)))
    return msg


def test_tick_stats_report_every_tick_and_a_prefix_blend():
    with LocalLaunch() as launch:
        node = launch.add(lambda context: rclpy.create_node('tester', context=context))
        ticks = Collector(node, String, TICK_TOPIC, STATUS_QOS)
        commands = Collector(node, Float64MultiArray, COMMAND_TOPIC, COMMAND_QOS)
        diagnostics = Collector(node, DiagnosticArray, '/diagnostics', STATUS_QOS)
        controller = launch.add(ControllerNode, parameter_overrides=[
            Parameter('tick_stats', value=True), Parameter('mode', value='prefix'),
            Parameter('blend_actions', value=2), Parameter('diagnostics_rate', value=20.0)])
        pub = node.create_publisher(JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        launch.start()
        wait_for(lambda: pub.get_subscription_count() > 0 and ticks.msgs(), 10.0, 'match')

        def records():
            return [json.loads(m.data) for m in ticks.msgs()]
        first = records()[0]
        assert set(first) == KEYS
        assert first['hold'] and not first['switch'] and first['chunk_age_ms'] is None
        assert first['command'] == [0.0] * 7 and isinstance(first['time'], float)
        n = len(records())
        pub.publish(make_chunk(node, 20, 0.002, 1.0))  # 1 s of actions
        wait_for(lambda: any(not r['hold'] for r in records()[n:]), 10.0, 'the first chunk')
        pub.publish(make_chunk(node, 6, 0.008, 0.4))  # takes over, blended in over 2 ticks
        wait_for(lambda: records()[-1]['hold'] and records()[-1]['command'][6] == 0.4, 10.0,
                 'the second chunk to run out')
        run = [r for r in records()[n:] if not r['hold']]
        assert all(set(r) == KEYS for r in records())
        assert [r['switch'] for r in run].count(True) == 1
        s = next(i for i, r in enumerate(run) if r['switch'])
        np.testing.assert_allclose([r['command'][0] for r in run[s - 1:s + 3]],
                                   [0.002, 0.004, 0.006, 0.008])  # 1/3 and 2/3 of the new
        np.testing.assert_allclose([r['command'][6] for r in run[s - 1:s + 3]],
                                   [1.0, 0.8, 0.6, 0.4])
        assert all(0.0 <= r['chunk_age_ms'] < 1000.0 for r in run)
        times = [r['time'] for r in records()]
        assert all(b > a for a, b in zip(times, times[1:]))
        published = {tuple(m.data) for m in commands.msgs()}
        assert all(tuple(r['command']) in published for r in run)  # the command as sent
        assert TICK_TOPIC in [p.topic_name for p in controller.publishers]

        def chunk_age_p50():
            for array in diagnostics.msgs()[::-1]:
                values = {kv.key: kv.value for st in array.status for kv in st.values}
                if values.get('chunk_age_ms_p50', 'n/a') != 'n/a':
                    return values
            return None
        wait_for(chunk_age_p50, 10.0, 'chunk age in /diagnostics')
        values = chunk_age_p50()
        assert 0.0 <= float(values['chunk_age_ms_p50']) <= float(values['chunk_age_ms_p95'])


def test_tick_stats_are_off_by_default():
    with LocalLaunch() as launch:
        controller = launch.add(ControllerNode)
        assert controller.get_parameter('tick_stats').value is False
        assert controller.describe_parameter('tick_stats').read_only
        assert controller.get_parameter('blend_actions').value == 4
        assert TICK_TOPIC not in [p.topic_name for p in controller.publishers]
