"""sensor_msgs Image / CompressedImage <-> HxWx3 uint8 RGB arrays.

cv_bridge is used where it imports (the robot); otherwise (PyPI ROS, where no working
cv_bridge exists) a numpy conversion handles rgb8, bgr8, rgba8, bgra8, mono8 and mono16,
honouring `step` (row padding) and `is_bigendian` (16-bit data). CompressedImage (PNG or
JPEG, what compressed_image_transport sends) goes through OpenCV once its header says the
image fits MAX_SIDE: a few hundred kilobytes of PNG can decode to gigabytes. Every failure is
an ImageConversionError whose `kind` a node counts in diagnostics.
"""
from __future__ import annotations

import array
import struct
from typing import Any, Optional

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

try:  # the ROS 2 cv_bridge (robot); the PyPI 'cv-bridge' is ROS 1's and fails here
    from cv_bridge import CvBridge
    _BRIDGE: Optional[Any] = CvBridge()
except Exception:  # ImportError, or a broken build (numpy ABI mismatch)
    _BRIDGE = None

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


def have_cv_bridge() -> bool:
    """Whether conversions go through cv_bridge."""
    return _BRIDGE is not None


def msg_to_rgb(msg: Any, use_cv_bridge: bool = True) -> np.ndarray:
    """Image or CompressedImage -> (H, W, 3) uint8 RGB (a new, contiguous array)."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg)
    if use_cv_bridge and _BRIDGE is not None:
        return _bridge_to_rgb(msg)
    return image_to_rgb(msg)


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB with numpy only."""
    encoding = msg.encoding.lower()
    if encoding not in _LAYOUT:
        raise ImageConversionError(
            'encoding', f'unsupported encoding {msg.encoding!r}: expected one of '
            f'{SUPPORTED_ENCODINGS} (cv_bridge, where installed, converts more)')
    channels, width_bytes = _LAYOUT[encoding]
    h, w = int(msg.height), int(msg.width)
    rows = _rows(msg, channels * width_bytes)
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


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
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


def rgb_to_image(rgb: np.ndarray, stamp: Any = None, frame_id: str = '',
                 encoding: str = 'rgb8', row_padding: int = 0) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in rgb8, bgr8, rgba8, bgra8 or mono8,
    with `row_padding` extra bytes per row (step = width * channels + padding)."""
    rgb = _check_rgb(rgb)
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
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * c + row_padding)
    msg.data = array.array('B', rows.tobytes())  # array.array: the fast path in Humble too
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def rgb_to_compressed(rgb: np.ndarray, fmt: str = 'png', stamp: Any = None,
                      frame_id: str = '') -> CompressedImage:
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage ('png' or 'jpeg')."""
    ok, buf = cv2.imencode('.png' if fmt == 'png' else '.jpg',
                           np.ascontiguousarray(_check_rgb(rgb)[..., ::-1]))
    if not ok:
        raise ValueError(f'OpenCV could not encode the image as {fmt!r}')
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', buf.tobytes())
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def _rows(msg: Image, pixel_bytes: int) -> np.ndarray:
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


def _bridge_to_rgb(msg: Image) -> np.ndarray:
    _rows(msg, 1)  # our own header checks first: cv_bridge trusts the header
    try:
        rgb = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding='rgb8')
    except Exception as e:  # CvBridgeError or a conversion it does not support
        raise ImageConversionError('encoding', f'cv_bridge cannot convert encoding '
                                   f'{msg.encoding!r} to rgb8 ({e})') from None
    return np.ascontiguousarray(rgb)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}')
    return rgb
