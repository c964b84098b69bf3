"""The ROS-free codecs (dysl_ros.runtime.messages) on rclpy and rosbags messages alike."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dysl_ros.runtime.messages import StepStats, chunk_positions, time_to_ns

CHUNK = np.arange(12, dtype=np.float64).reshape(4, 3) / 7  # (H=4, D=3)
NAMES = ['x', 'y', 'z']
STAMP = 1_700_000_000_123_456_789


def _check_chunk(msg, dt_ns: int) -> None:
    assert list(msg.joint_names) == NAMES
    assert time_to_ns(msg.header.stamp) == STAMP and msg.header.frame_id == ''
    np.testing.assert_array_equal(chunk_positions(msg.points, 3), CHUNK)
    assert [time_to_ns(p.time_from_start) for p in msg.points] == [i * dt_ns for i in range(4)]
    assert chunk_positions(msg.points, 2) is None


def test_chunk_codec_on_rosbags_messages():
    from dysl_ros.bags.topics import MSG_CHUNK, chunk_msg, chunk_to_array, deserialize, serialize
    msg = chunk_msg(CHUNK, NAMES, STAMP, 0.05)
    _check_chunk(msg, 50_000_000)
    names, positions = chunk_to_array(deserialize(serialize(msg, MSG_CHUNK), MSG_CHUNK))
    assert names == NAMES
    np.testing.assert_array_equal(positions, CHUNK)


def test_chunk_codec_on_rclpy_messages_is_the_policy_nodes():
    pytest.importorskip('trajectory_msgs.msg')
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from dysl_ros.nodes.policy_node import _CHUNK_TYPES
    from dysl_ros.runtime.messages import chunk_to_msg
    msg = chunk_to_msg(CHUNK, NAMES, STAMP, 0.05, _CHUNK_TYPES)
    _check_chunk(msg, 50_000_000)
    by_hand = JointTrajectory(joint_names=NAMES)  # as the policy node built it before
    by_hand.header.stamp.sec, by_hand.header.stamp.nanosec = divmod(STAMP, 1_000_000_000)
    for i, action in enumerate(CHUNK):
        by_hand.points.append(JointTrajectoryPoint(
            positions=action.tolist(), time_from_start=Duration(nanosec=i * 50_000_000)))
    assert msg == by_hand


def test_step_stats_round_trip_keeps_keys_and_order():
    live = StepStats(seq=3, episode=1, stamp_ns=STAMP, layers_run=5, layers_total=24,
                     layer_ids=[0, 1], skipped_at=[2], verified=True, allow_points=[4],
                     policy_ms=9.5, camera_to_chunk_ms=20.0, latency_ms={'a': 1.0},
                     stages_ms={'step': 9.5})
    d = json.loads(live.to_json())
    assert list(d) == ['seq', 'episode', 'stamp', 'stamp_ns', 'layers_run', 'layers_total',
                       'layer_ids', 'skipped_at', 'verified', 'allow_points', 'policy_ms',
                       'camera_to_chunk_ms', 'stages_ms', 'latency_ms']
    assert d['stamp'] == STAMP * 1e-9
    assert StepStats.from_json(live.to_json()) == live
    bag = StepStats(**{**live.__dict__, 'stages_ms': None,
                       'extra': {'continuity': 0.5, 'continuity_change': None,
                                 'guidance': None}})
    d = json.loads(bag.to_json())
    assert 'stages_ms' not in d and list(d)[-4:] == ['latency_ms', 'continuity',
                                                     'continuity_change', 'guidance']
    assert StepStats.from_json(bag.to_json()) == bag
    with pytest.raises(KeyError):
        StepStats.from_json('{"seq": 1}')


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_image_codec_reads_rclpy_and_rosbags_images_alike(encoding):
    pytest.importorskip('sensor_msgs.msg')
    from dysl_ros.bags.topics import MSG_IMAGE, image_to_rgb, typestore
    from dysl_ros.nodes.image_conversion import msg_to_rgb, rgb_to_image
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    live = rgb_to_image(rgb, encoding=encoding, row_padding=3)
    types = typestore().types
    bag = types[MSG_IMAGE](
        header=types['std_msgs/msg/Header'](stamp=types['builtin_interfaces/msg/Time'](
            sec=0, nanosec=0), frame_id=''), height=live.height, width=live.width,
        encoding=live.encoding, is_bigendian=0, step=live.step,
        data=np.frombuffer(bytes(live.data), np.uint8))
    np.testing.assert_array_equal(image_to_rgb(bag, MSG_IMAGE),
                                  msg_to_rgb(live, use_cv_bridge=False))



def _types(rclpy_module: str, rclpy_name: str, rosbags_name: str) -> dict:
    """A codec's message types on rclpy (as the node binds them) and on rosbags (as the bag
    tools do), by name."""
    import importlib

    import dysl_ros.bags.topics as topics
    pytest.importorskip('sensor_msgs.msg')
    rclpy_types = getattr(importlib.import_module(rclpy_module), rclpy_name)
    return {'rclpy': rclpy_types, 'rosbags': getattr(topics, rosbags_name)()}


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_image_builder_makes_one_image_on_rclpy_and_rosbags(encoding):
    from dysl_ros.bags.topics import MSG_IMAGE, deserialize, serialize
    from dysl_ros.runtime.messages import image_to_rgb, rgb_to_image_msg
    types = _types('dysl_ros.nodes.image_conversion', '_IMAGE_TYPES', '_image_types')
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    live, bag = (rgb_to_image_msg(rgb, STAMP, 'cam', t, encoding, row_padding=3)
                 for t in types.values())
    bag = deserialize(serialize(bag, MSG_IMAGE), MSG_IMAGE)
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}[encoding]
    for msg in (live, bag):
        assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (6, 5, encoding, 0)
        assert msg.step == 5 * channels + 3
        assert time_to_ns(msg.header.stamp) == STAMP and msg.header.frame_id == 'cam'
    assert bytes(live.data) == bytes(bag.data)
    expected = rgb
    if encoding == 'mono8':
        expected = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    np.testing.assert_array_equal(image_to_rgb(live), expected)
    np.testing.assert_array_equal(image_to_rgb(bag), expected)


@pytest.mark.parametrize('hold', [False, True])
def test_command_codec_on_rclpy_and_rosbags_messages(hold):
    from dysl_ros.bags.topics import MSG_COMMAND, deserialize, serialize
    from dysl_ros.runtime.messages import command_from_msg, command_to_msg
    types = _types('dysl_ros.nodes.controller_node', '_COMMAND_TYPES', '_command_types')
    action = np.arange(7, dtype=np.float64) / 3  # (D=7,)
    live, bag = (command_to_msg(action, hold, t) for t in types.values())
    bag = deserialize(serialize(bag, MSG_COMMAND), MSG_COMMAND)
    label = 'hold' if hold else 'action'
    for msg in (live, bag):
        decoded, got = command_from_msg(msg)
        np.testing.assert_array_equal(decoded, action)
        assert got == label
        dim = msg.layout.dim[0]
        assert (len(msg.layout.dim), dim.size, dim.stride, msg.layout.data_offset) == (1, 7, 7, 0)
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension
    by_hand = Float64MultiArray(data=action.tolist())  # as the controller node built it before
    by_hand.layout.dim = [MultiArrayDimension(label=label, size=7, stride=7)]
    assert live == by_hand
    assert command_from_msg(Float64MultiArray(data=[1.0]))[1] is None  # no layout: no label


def test_episode_status_round_trip_on_rclpy_and_rosbags_strings():
    from dysl_ros.bags.topics import MSG_STRING, deserialize, serialize, string_msg
    from dysl_ros.runtime.messages import EpisodeStatus
    std_msgs = pytest.importorskip('std_msgs.msg')
    sim = EpisodeStatus(episode=2, seed=7, task='pick_red', instruction='pick up the red block',
                        step=12, done=True, success=True, timeout=False, holds=3, error=None)
    recorded = EpisodeStatus(**{**sim.__dict__, 'extra': {'source': 'expert', 'phase': 'lift'}})
    for status in (sim, recorded):
        live = std_msgs.String(data=status.to_json())
        bag = deserialize(serialize(string_msg(status.to_json()), MSG_STRING), MSG_STRING)
        assert EpisodeStatus.from_json(live.data) == EpisodeStatus.from_json(bag.data) == status
    keys = ['episode', 'seed', 'task', 'instruction', 'step', 'done', 'success', 'timeout',
            'holds', 'error']
    assert list(json.loads(sim.to_json())) == keys  # the sim node's keys, in its order
    assert list(json.loads(recorded.to_json())) == keys + ['source', 'phase']
    partial = EpisodeStatus.from_json('{"success": false, "phase": "reach"}')  # a robot's
    assert partial.success is False and partial.task is None
    assert partial.extra == {'phase': 'reach'}
    with pytest.raises(TypeError):
        EpisodeStatus.from_json('[1]')
    with pytest.raises(ValueError):
        EpisodeStatus.from_json('not json')
