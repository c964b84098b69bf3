"""The ROS-free codecs (dysl_ros.runtime.messages) on rclpy and rosbags messages alike."""
from __future__ import annotations

import json

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
