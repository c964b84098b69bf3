"""Topic names, message types and message <-> numpy conversions of the bags (rosbags only;
the conversions themselves are dysl_ros.runtime.messages, shared with the nodes).

Default topic names are those of the nodes (dysl_ros.nodes) in the root namespace, so a bag
recorded here replays into a policy node as it is, and `ros2 bag record` of the demo graph
gives a bag every command here reads:

    /image, /wrist/image       sensor_msgs/msg/Image (or CompressedImage), one per camera
    /instruction               std_msgs/msg/String
    /action_chunk              trajectory_msgs/msg/JointTrajectory (stamp = the image's stamp)
    /command                   std_msgs/msg/Float64MultiArray (one action per control tick)
    /episode_status            std_msgs/msg/String, JSON (as the sim node; + 'phase')
    /policy_node/step_stats    std_msgs/msg/String, JSON (as the policy node; + 'guidance')

Bags from a robot have other names: every command takes them as arguments (--camera
NAME=TOPIC, --instruction-topic, ...). A bag made by `record` lists its cameras and topics
(another suite's: MT10's /corner/image, /gripperPOV/image), and `replay` reads them from it.
"""
from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..runtime.messages import (ChunkTypes, CommandTypes, ImageTypes, chunk_positions,
                                chunk_to_msg, command_to_msg, compressed_to_rgb, rgb_to_image_msg,
                                split_ns)
from ..runtime.messages import image_to_rgb as decode_image
from ..validation import require

MSG_IMAGE = 'sensor_msgs/msg/Image'
MSG_COMPRESSED = 'sensor_msgs/msg/CompressedImage'
MSG_STRING = 'std_msgs/msg/String'
MSG_CHUNK = 'trajectory_msgs/msg/JointTrajectory'
MSG_COMMAND = 'std_msgs/msg/Float64MultiArray'
IMAGE_TYPES = (MSG_IMAGE, MSG_COMPRESSED)

DEFAULT_CAMERAS = (('front', '/image'), ('wrist', '/wrist/image'))

@dataclass(frozen=True)
class TopicMap:
    """Where each stream lives in a bag (absolute topic names).

    Args:
        cameras: (camera name, topic) pairs in the model's camera order; the first is the
            primary camera whose frames are the observations (as in the policy node).
        instruction: std_msgs/String; every message starts a new episode.
        chunk: trajectory_msgs/JointTrajectory action chunks.
        command: std_msgs/Float64MultiArray executed actions.
        status: std_msgs/String JSON episode status (optional everywhere).
        stats: std_msgs/String JSON per-chunk step statistics (optional everywhere).
    """

    cameras: tuple[tuple[str, str], ...] = DEFAULT_CAMERAS
    instruction: str = '/instruction'
    chunk: str = '/action_chunk'
    command: str = '/command'
    status: str = '/episode_status'
    stats: str = '/policy_node/step_stats'

    def __post_init__(self) -> None:
        object.__setattr__(self, 'cameras', tuple((str(c), str(t)) for c, t in self.cameras))
        names = [c for c, _ in self.cameras]
        require(len(names) >= 1 and len(set(names)) == len(names) and all(names), 'cameras',
                self.cameras, 'one or more (distinct camera name, topic) pairs')
        for name in ('instruction', 'chunk', 'command', 'status', 'stats'):
            topic = getattr(self, name)
            require(isinstance(topic, str) and topic.startswith('/') and len(topic) > 1,
                    f'{name} topic', topic, 'an absolute topic name such as /instruction')
        for c, t in self.cameras:
            require(t.startswith('/') and len(t) > 1, f'camera {c!r} topic', t,
                    'an absolute topic name such as /image')

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.cameras)

    @property
    def primary(self) -> str:
        return self.cameras[0][0]


def add_topic_arguments(parser: argparse.ArgumentParser) -> None:
    """--camera NAME=TOPIC (repeat, primary first) and one option per other stream."""
    d = TopicMap()
    g = parser.add_argument_group('topics (defaults: the nodes\' topic names)')
    g.add_argument('--camera', action='append', metavar='NAME=TOPIC', dest='camera_topics',
                   help='a camera and its topic, primary first; repeat per camera (default: '
                   + ' '.join(f'{c}={t}' for c, t in d.cameras) + ')')
    for name, help_text in (('instruction', 'std_msgs/String instructions'),
                            ('chunk', 'JointTrajectory action chunks'),
                            ('command', 'Float64MultiArray commands'),
                            ('status', 'String (JSON) episode status'),
                            ('stats', 'String (JSON) step statistics of the policy node')):
        g.add_argument(f'--{name}-topic', default=None, metavar='TOPIC',
                       help=f'{help_text} (default {getattr(d, name)})')


def topics_from_args(args: argparse.Namespace, recorded: Optional[dict] = None
                     ) -> tuple[TopicMap, set[str]]:
    """The TopicMap of the parsed arguments, and the roles the user named explicitly (a
    named topic must be in the bag; a default one may be absent where it is optional).
    Without --camera the cameras are those a bag's `record` info lists (`recorded`: its
    custom data, e.g. an MT10 bag's corner and gripperPOV), else the defaults."""
    d = TopicMap()
    given = set()
    cameras = d.cameras
    if recorded and recorded.get('cameras'):
        cameras = tuple((str(c), str(t)) for c, t in recorded['cameras'])
    if getattr(args, 'camera_topics', None):
        cameras = tuple(_camera_pair(s) for s in args.camera_topics)
        given.add('cameras')
    values = {}
    for name in ('instruction', 'chunk', 'command', 'status', 'stats'):
        value = getattr(args, f'{name}_topic', None)
        if value is not None:
            given.add(name)
            values[name] = value
    return TopicMap(cameras=cameras, **values), given


def _camera_pair(text: str) -> tuple[str, str]:
    name, sep, topic = text.partition('=')
    if not sep or not name or not topic:
        raise ValueError(f'--camera {text!r} is invalid: expected NAME=TOPIC, e.g. '
                         'front=/camera/color/image_raw')
    return name, topic


# ---- rosbags types ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def typestore() -> Any:
    """The ROS 2 Humble typestore of rosbags (the robot's distribution)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


def _t(name: str) -> Any:
    return typestore().types[name]


def ns_to_time(ns: int) -> Any:
    """Nanoseconds -> builtin_interfaces/Time."""
    sec, nanosec = split_ns(ns)
    return _t('builtin_interfaces/msg/Time')(sec=sec, nanosec=nanosec)


def header(stamp_ns: int, frame_id: str = '') -> Any:
    """std_msgs/Header with this stamp."""
    return _t('std_msgs/msg/Header')(stamp=ns_to_time(stamp_ns), frame_id=frame_id)


def serialize(msg: Any, msgtype: str) -> bytes:
    """A rosbags message -> CDR bytes (what rosbag2 stores and DDS sends)."""
    return bytes(typestore().serialize_cdr(msg, msgtype))


def deserialize(raw: bytes, msgtype: str) -> Any:
    """CDR bytes -> a rosbags message of `msgtype`."""
    return typestore().deserialize_cdr(raw, msgtype)


# ---- builders ---------------------------------------------------------------------------------
def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = '') -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    return rgb_to_image_msg(rgb, stamp_ns, frame_id, _image_types())


@functools.lru_cache(maxsize=1)
def _image_types() -> ImageTypes:
    return ImageTypes(_t(MSG_IMAGE), _t('std_msgs/msg/Header'), _t('builtin_interfaces/msg/Time'),
                      lambda b: b)


def string_msg(text: str) -> Any:
    return _t(MSG_STRING)(data=str(text))


def chunk_msg(chunk: np.ndarray, names: Sequence[str], stamp_ns: int, dt: float) -> Any:
    """(H, D) actions -> JointTrajectory as the policy node publishes it: stamp = the image's
    stamp, joint_names = action names, point i = action i at time_from_start i * dt."""
    chunk = np.asarray(chunk, dtype=np.float64)  # (H, D)
    if chunk.ndim != 2 or chunk.shape[1] != len(names):
        raise ValueError(f'chunk of shape {chunk.shape} does not fit {len(names)} action names')
    return chunk_to_msg(chunk, names, stamp_ns, dt, _chunk_types())


@functools.lru_cache(maxsize=1)
def _chunk_types() -> ChunkTypes:
    return ChunkTypes(_t(MSG_CHUNK), _t('trajectory_msgs/msg/JointTrajectoryPoint'),
                      _t('std_msgs/msg/Header'), _t('builtin_interfaces/msg/Time'),
                      _t('builtin_interfaces/msg/Duration'), lambda a: a.copy())


def command_msg(action: np.ndarray, hold: bool = False) -> Any:
    """One action (D,) -> Float64MultiArray as the controller node publishes it."""
    return command_to_msg(action, hold, _command_types())


@functools.lru_cache(maxsize=1)
def _command_types() -> CommandTypes:
    return CommandTypes(_t(MSG_COMMAND), _t('std_msgs/msg/MultiArrayLayout'),
                        _t('std_msgs/msg/MultiArrayDimension'), lambda a: a.copy())


# ---- decoders ---------------------------------------------------------------------------------
def image_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """sensor_msgs Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or CompressedImage ->
    (H, W, 3) uint8 RGB; ValueError saying what is wrong otherwise (as the policy node)."""
    return compressed_to_rgb(msg) if msgtype == MSG_COMPRESSED else decode_image(msg)


def chunk_to_array(msg: Any) -> tuple[list[str], np.ndarray]:
    """JointTrajectory -> (joint names, (H, D) float64 positions)."""
    names = list(msg.joint_names)
    positions = chunk_positions(msg.points, len(names))
    if positions is None:
        raise ValueError(f'a chunk point does not have one position per joint {names}')
    return names, positions

