"""sensor_msgs Image / CompressedImage <-> HxWx3 uint8 RGB arrays.

cv_bridge is used where it imports (the robot); otherwise (PyPI ROS, where no working
cv_bridge exists) the numpy conversion of dysl_ros.runtime.messages (shared with the bag
tools) handles rgb8, bgr8, rgba8, bgra8, mono8 and mono16, honouring `step` (row padding)
and `is_bigendian` (16-bit data). CompressedImage (PNG or
JPEG, what compressed_image_transport sends) goes through OpenCV once its header says the
image fits MAX_SIDE: a few hundred kilobytes of PNG can decode to gigabytes. Every failure is
an ImageConversionError whose `kind` a node counts in diagnostics.
"""
from __future__ import annotations

import array
from typing import Any, Optional

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from ..runtime.messages import (ImageConversionError, compressed_to_rgb, image_rows,  # noqa: F401
                                image_to_rgb)

try:  # the ROS 2 cv_bridge (robot); the PyPI 'cv-bridge' is ROS 1's and fails here
    from cv_bridge import CvBridge
    _BRIDGE: Optional[Any] = CvBridge()
except Exception:  # ImportError, or a broken build (numpy ABI mismatch)
    _BRIDGE = None


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


def _bridge_to_rgb(msg: Image) -> np.ndarray:
    image_rows(msg, 1)  # our own header checks first: cv_bridge trusts the header
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
