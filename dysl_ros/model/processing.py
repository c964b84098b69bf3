"""Observation preprocessing (numpy): camera images -> the embedder's input layout."""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np


def preprocess_images(images: Mapping[str, np.ndarray], cameras: Sequence[str],
                      size: int) -> np.ndarray:
    """HxWx3 uint8 RGB per camera -> (N, 3, size, size) float32 in [-1, 1], N = len(cameras)."""
    out = np.empty((len(cameras), 3, size, size), dtype=np.float32)
    for n, name in enumerate(cameras):
        if name not in images:
            raise ValueError(f'missing camera {name!r}; got {sorted(images)}')
        img = images[name]
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f'camera {name!r}: expected HxWx3 uint8, got {img.shape} {img.dtype}')
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out[n] = img.transpose(2, 0, 1) * (2.0 / 255.0) - 1.0
    return out
