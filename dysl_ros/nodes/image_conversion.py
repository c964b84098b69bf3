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
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..runtime.messages import (ImageConversionError, ImageTypes, check_rgb, compressed_to_rgb,
                                image_rows, image_to_rgb, rgb_to_image_msg, time_to_ns)

try:  # the ROS 2 cv_bridge (robot); the PyPI 'cv-bridge' is ROS 1's and fails here
    from cv_bridge import CvBridge
    _BRIDGE: Optional[Any] = CvBridge()
except Exception:  # ImportError, or a broken build (numpy ABI mismatch)
    _BRIDGE = None

# array.array: the fast path of a uint8[] field in Humble too
_IMAGE_TYPES = ImageTypes(Image, Header, Time, lambda b: array.array('B', b.tobytes()))


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
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image (rgb_to_image_msg on rclpy's types)."""
    return rgb_to_image_msg(rgb, 0 if stamp is None else time_to_ns(stamp), frame_id,
                            _IMAGE_TYPES, encoding, row_padding)


def rgb_to_compressed(rgb: np.ndarray, fmt: str = 'png', stamp: Any = None,
                      frame_id: str = '') -> CompressedImage:
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage ('png' or 'jpeg')."""
    ok, buf = cv2.imencode('.png' if fmt == 'png' else '.jpg',
                           np.ascontiguousarray(check_rgb(rgb)[..., ::-1]))
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

