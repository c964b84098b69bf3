"""Every message that crosses the ROS boundary, as one codec each, without ROS.

Nothing here imports rclpy or a message package: the decoders read any object with the
fields of the ROS message (rclpy messages and rosbags messages alike), and the encoders take
the message classes to build (`ChunkTypes`, `CommandTypes`, `ImageTypes`), so the nodes
(rclpy) and the bag tools (rosbags) share one conversion each:

    chunk (H, D) <-> trajectory_msgs/JointTrajectory   chunk_to_msg, chunk_positions
    action (D,) <-> std_msgs/Float64MultiArray          command_to_msg, command_from_msg
    builtin_interfaces/Time, Duration -> ns             time_to_ns
    policy step statistics <-> std_msgs/String JSON     StepStats (the policy node's
                                                        ~/step_stats, and the bags' copy)
    episode status <-> std_msgs/String JSON             EpisodeStatus (the sim node's
                                                        episode_status, and the bags' copy)
    RGB -> sensor_msgs Image                            rgb_to_image_msg
    sensor_msgs Image, CompressedImage -> RGB           image_to_rgb, compressed_to_rgb

and the nodes' default image topic of a camera (camera_topic).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np


def camera_topic(camera: str) -> str:
    """The nodes' default image topic (relative) of a camera: 'image' for 'front', else
    '<camera>/image' ('wrist/image', 'corner/image', 'gripperPOV/image')."""
    return 'image' if camera == 'front' else f'{camera}/image'


def time_to_ns(t: Any) -> int:
    """builtin_interfaces/Time (or Duration) -> nanoseconds; negative stamps stay negative."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def split_ns(ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) of a builtin_interfaces Time or Duration."""
    return divmod(int(ns), 1_000_000_000)


# ---- action chunk <-> trajectory_msgs/JointTrajectory ---------------------------------------
@dataclass(frozen=True)
class ChunkTypes:
    """The classes a JointTrajectory is built from (rclpy's or a rosbags typestore's), and
    how a (D,) float64 row becomes a float64[] field (a list for rclpy, an array for rosbags).
    """

    trajectory: Callable[..., Any]  # trajectory_msgs/msg/JointTrajectory
    point: Callable[..., Any]  # trajectory_msgs/msg/JointTrajectoryPoint
    header: Callable[..., Any]  # std_msgs/msg/Header
    time: Callable[..., Any]  # builtin_interfaces/msg/Time
    duration: Callable[..., Any]  # builtin_interfaces/msg/Duration
    floats: Callable[[np.ndarray], Any]  # (D,) float64 -> the float64[] field value


def chunk_to_msg(chunk: np.ndarray, names: Sequence[str], stamp_ns: int, dt: float,
                 types: ChunkTypes) -> Any:
    """(H, D) actions -> JointTrajectory as the policy node publishes it: header.stamp = the
    image's stamp, joint_names = action names, point i = action i at time_from_start i * dt
    (positions only)."""
    dt_ns = int(round(dt * 1e9))
    empty = types.floats(np.zeros(0, np.float64))
    points = []
    for i, action in enumerate(np.asarray(chunk, dtype=np.float64)):  # (H, D)
        sec, nanosec = split_ns(i * dt_ns)
        points.append(types.point(positions=types.floats(action), velocities=empty,
                                  accelerations=empty, effort=empty,
                                  time_from_start=types.duration(sec=sec, nanosec=nanosec)))
    sec, nanosec = split_ns(stamp_ns)
    return types.trajectory(header=types.header(stamp=types.time(sec=sec, nanosec=nanosec),
                                                frame_id=''),
                            joint_names=list(names), points=points)


def chunk_positions(points: Sequence[Any], width: int) -> Optional[np.ndarray]:
    """JointTrajectory points -> (H, width) float64 positions; None when a point does not
    have `width` positions."""
    rows = [np.asarray(p.positions, dtype=np.float64) for p in points]
    if any(r.shape != (width,) for r in rows):
        return None
    return np.stack(rows) if rows else np.zeros((0, width))


# ---- one action <-> std_msgs/Float64MultiArray ----------------------------------------------
ACTION_LABEL = 'action'  # layout.dim[0].label of a command from a chunk
HOLD_LABEL = 'hold'  # ... and of a hold (no valid chunk)


@dataclass(frozen=True)
class CommandTypes:
    """The classes a Float64MultiArray is built from (rclpy's or a rosbags typestore's), and
    how a (D,) float64 action becomes its float64[] field."""

    array: Callable[..., Any]  # std_msgs/msg/Float64MultiArray
    layout: Callable[..., Any]  # std_msgs/msg/MultiArrayLayout
    dimension: Callable[..., Any]  # std_msgs/msg/MultiArrayDimension
    floats: Callable[[np.ndarray], Any]  # (D,) float64 -> the float64[] field value


def command_to_msg(action: np.ndarray, hold: bool, types: CommandTypes) -> Any:
    """One action (D,) -> Float64MultiArray as the controller node publishes it: one layout
    dimension of size D labelled HOLD_LABEL for a hold, else ACTION_LABEL."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)  # (D,)
    dim = types.dimension(label=HOLD_LABEL if hold else ACTION_LABEL, size=a.size,
                          stride=a.size)
    return types.array(layout=types.layout(dim=[dim], data_offset=0), data=types.floats(a))


def command_from_msg(msg: Any) -> tuple[np.ndarray, Optional[str]]:
    """Float64MultiArray -> ((D,) float64 action, label of layout.dim[0] or None); the
    values are not checked (length, finiteness): that is the receiver's to decide."""
    label = str(msg.layout.dim[0].label) if len(msg.layout.dim) else None
    return np.asarray(msg.data, dtype=np.float64).copy(), label


# ---- step statistics <-> JSON ---------------------------------------------------------------
@dataclass
class StepStats:
    """One chunk's step statistics, as the policy node publishes them on ~/step_stats (one
    JSON object per chunk; 'stamp' is stamp_ns in seconds). `stages_ms` (where camera -> chunk
    went) is the live node's; `extra` holds further keys (the bag recorder's continuity and
    guidance state), written after the others and kept when parsing."""

    seq: int
    episode: int
    stamp_ns: int
    layers_run: int
    layers_total: int
    layer_ids: list
    skipped_at: list
    verified: bool
    allow_points: list
    policy_ms: float
    camera_to_chunk_ms: float
    latency_ms: dict
    stages_ms: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    _KEYS = ('seq', 'episode', 'stamp_ns', 'layers_run', 'layers_total', 'layer_ids',
             'skipped_at', 'verified', 'allow_points', 'policy_ms', 'camera_to_chunk_ms',
             'latency_ms', 'stages_ms')

    def to_dict(self) -> dict:
        d = {'seq': self.seq, 'episode': self.episode, 'stamp': self.stamp_ns * 1e-9,
             'stamp_ns': self.stamp_ns, 'layers_run': self.layers_run,
             'layers_total': self.layers_total, 'layer_ids': list(self.layer_ids),
             'skipped_at': list(self.skipped_at), 'verified': bool(self.verified),
             'allow_points': list(self.allow_points), 'policy_ms': self.policy_ms,
             'camera_to_chunk_ms': self.camera_to_chunk_ms}
        if self.stages_ms is not None:
            d['stages_ms'] = dict(self.stages_ms)
        d['latency_ms'] = dict(self.latency_ms)
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> 'StepStats':
        """The inverse of to_dict; KeyError names a missing key."""
        values = {k: d[k] for k in cls._KEYS if k != 'stages_ms'}
        return cls(**values, stages_ms=d.get('stages_ms'),
                   extra={k: v for k, v in d.items() if k not in cls._KEYS and k != 'stamp'})

    @classmethod
    def from_json(cls, text: str) -> 'StepStats':
        """A ~/step_stats message's data -> StepStats (ValueError: not JSON; KeyError: a key
        missing; TypeError: not a JSON object)."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise TypeError(f'step statistics are a JSON {type(d).__name__}, not an object')
        return cls.from_dict(d)


# ---- episode status <-> JSON ----------------------------------------------------------------
@dataclass
class EpisodeStatus:
    """The sim node's status of its episode, one JSON object per reset and per step on
    episode_status. It writes every key; a key missing from a parsed status is None (a
    robot's bag may carry some only). `extra` holds further keys (the bag recorder's 'source'
    and 'phase'), written after the others and kept when parsing."""

    episode: Optional[int] = None
    seed: Optional[int] = None
    task: Optional[str] = None
    instruction: Optional[str] = None
    step: Optional[int] = None
    done: Optional[bool] = None
    success: Optional[bool] = None
    timeout: Optional[bool] = None
    holds: Optional[int] = None  # steps that held (no command, or a hold command)
    error: Optional[str] = None  # why an instruction was not started
    extra: dict = field(default_factory=dict)

    _KEYS = ('episode', 'seed', 'task', 'instruction', 'step', 'done', 'success', 'timeout',
             'holds', 'error')

    def to_json(self) -> str:
        return json.dumps({**{k: getattr(self, k) for k in self._KEYS}, **self.extra})

    @classmethod
    def from_json(cls, text: str) -> 'EpisodeStatus':
        """An episode_status message's data -> EpisodeStatus (ValueError: not JSON;
        TypeError: not a JSON object)."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise TypeError(f'episode status is a JSON {type(d).__name__}, not an object')
        return cls(**{k: d.get(k) for k in cls._KEYS},
                   extra={k: v for k, v in d.items() if k not in cls._KEYS})


# ---- (H, W, 3) uint8 RGB -> sensor_msgs/Image ------------------------------------------------
@dataclass(frozen=True)
class ImageTypes:
    """The classes an Image is built from (rclpy's or a rosbags typestore's), and how its
    bytes become the uint8[] data field."""

    image: Callable[..., Any]  # sensor_msgs/msg/Image
    header: Callable[..., Any]  # std_msgs/msg/Header
    time: Callable[..., Any]  # builtin_interfaces/msg/Time
    data: Callable[[np.ndarray], Any]  # (N,) uint8 -> the uint8[] field value


def rgb_to_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, types: ImageTypes,
                     encoding: str = 'rgb8', row_padding: int = 0) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in rgb8, bgr8, rgba8, bgra8 or mono8, with
    `row_padding` extra bytes per row (step = width * channels + padding)."""
    rgb = check_rgb(rgb)
    if encoding == 'rgb8':
        pixels = rgb
    elif encoding == 'bgr8':
        pixels = rgb[..., ::-1]
    elif encoding in ('rgba8', 'bgra8'):
        color = rgb if encoding == 'rgba8' else rgb[..., ::-1]
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        pixels = np.concatenate([color, alpha], axis=2)
    elif encoding == 'mono8':
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)[..., None]
    else:
        raise ValueError(f'encoding={encoding!r} is invalid: expected rgb8, bgr8, rgba8, '
                         'bgra8 or mono8')
    h, w, c = pixels.shape
    if row_padding < 0:
        raise ValueError(f'row_padding={row_padding} is invalid: expected >= 0')
    rows = np.zeros((h, w * c + row_padding), np.uint8)
    rows[:, :w * c] = pixels.reshape(h, w * c)
    sec, nanosec = split_ns(stamp_ns)
    return types.image(header=types.header(stamp=types.time(sec=sec, nanosec=nanosec),
                                           frame_id=frame_id),
                       height=h, width=w, encoding=encoding, is_bigendian=0,
                       step=w * c + row_padding, data=types.data(rows.reshape(-1)))


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """`rgb` itself if it is an (H, W, 3) uint8 array; ValueError otherwise."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}')
    return rgb


# ---- sensor_msgs Image / CompressedImage -> (H, W, 3) uint8 RGB ------------------------------
# encoding -> (channels, bytes per channel)
_LAYOUT = {'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'bgra8': (4, 1), 'mono8': (1, 1),
           'mono16': (1, 2)}
SUPPORTED_ENCODINGS = tuple(_LAYOUT)
MAX_SIDE = 8192  # pixels; anything larger is a corrupt header, not a camera


class ImageConversionError(ValueError):
    """An image message that cannot become an RGB array; kind is 'encoding', 'size' or
    'decode' (what a node counts)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB with numpy only."""
    encoding = msg.encoding.lower()
    if encoding not in _LAYOUT:
        raise ImageConversionError(
            'encoding', f'unsupported encoding {msg.encoding!r}: expected one of '
            f'{SUPPORTED_ENCODINGS} (cv_bridge, where installed, converts more)')
    channels, width_bytes = _LAYOUT[encoding]
    h, w = int(msg.height), int(msg.width)
    rows = image_rows(msg, channels * width_bytes)
    if width_bytes == 2:
        pixels = rows.view('>u2' if msg.is_bigendian else '<u2')  # (H, W)
        pixels = (pixels >> 8).astype(np.uint8)  # keep the 8 most significant bits
    else:
        pixels = rows.reshape(h, w, channels)
    if encoding == 'rgb8':
        out = pixels
    elif encoding == 'bgr8':
        out = pixels[..., ::-1]
    elif encoding == 'rgba8':
        out = pixels[..., :3]
    elif encoding == 'bgra8':
        out = pixels[..., 2::-1]
    else:  # mono
        out = np.repeat(pixels.reshape(h, w, 1), 3, axis=2)
    return np.ascontiguousarray(out)


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB via OpenCV."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError('decode', f'empty CompressedImage (format {msg.format!r})')
    w, h = encoded_size(data.tobytes())
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ImageConversionError('size', f'compressed image of {w}x{h} refused before '
                                   f'decoding: expected 1 to {MAX_SIDE} pixels a side')
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageConversionError('decode', f'OpenCV cannot decode {data.size} bytes of '
                                   f'format {msg.format!r}')
    return np.ascontiguousarray(bgr[..., ::-1])


def encoded_size(head: bytes) -> tuple[int, int]:
    """(width, height) from the header of PNG or JPEG bytes, without decoding them."""
    if head[:8] == b'\x89PNG\r\n\x1a\n':
        if len(head) < 24 or head[12:16] != b'IHDR':
            raise ImageConversionError('decode', 'PNG without an IHDR header')
        return struct.unpack('>II', head[16:24])
    if head[:2] == b'\xff\xd8':
        i = 2
        while i + 9 <= len(head):  # segments: FF marker, 2-byte length, payload
            if head[i] != 0xFF:
                break
            marker, length = head[i + 1], struct.unpack('>H', head[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                h, w = struct.unpack('>HH', head[i + 5:i + 9])
                return w, h
            i += 2 + length
        raise ImageConversionError('decode', 'JPEG without a frame header in its first '
                                   f'{len(head)} bytes')
    raise ImageConversionError('decode', 'compressed data is neither PNG nor JPEG (the '
                               'formats compressed_image_transport sends)')


def image_rows(msg: Any, pixel_bytes: int) -> np.ndarray:
    """The (H, W * pixel_bytes) bytes of an image, without the row padding of `step`."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ImageConversionError('size', f'image size {w}x{h} is invalid: expected 1 to '
                                   f'{MAX_SIDE} pixels a side')
    row = w * pixel_bytes
    if step < row:
        raise ImageConversionError('size', f'step={step} is smaller than width * bytes per '
                                   f'pixel = {row} ({msg.encoding})')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * h:
        raise ImageConversionError('size', f'{data.size} data bytes, expected step * height '
                                   f'= {step} * {h} = {step * h}')
    return data.reshape(h, step)[:, :row]
