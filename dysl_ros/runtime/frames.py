"""Which camera frames a policy steps on (no ROS): stamp sanity, ordering, staleness.

Times are integer nanoseconds on the clock that stamps the frames (a node's ROS clock).

- A frame is refused when its stamp is negative, more than `max_future` ahead of the clock
  (a camera with a wrong clock must not make every later, true frame look out of order), or
  not newer than the last frame accepted from its camera.
- A step takes the newest frame of every camera once the primary camera (the first) has one
  that no step used. Cameras of one rig are published one after the other, so a step waits
  up to `max_skew` after the primary frame arrived for the others' frames of the same moment
  (stamped no more than `max_skew` before it), then steps on the newest it has: a lagging
  or slower camera delays a step by at most `max_skew`, never stops it.
- A step is refused as stale when any of its frames is older than `max_age`.
- `clear()` forgets frames and stamps: a new episode, a reset, a lifecycle transition.

Not thread-safe: the caller serialises calls (runtime.session.PolicySession holds its lock).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


class Rejected(ValueError):
    """A frame or step refused; `kind` is the error counter it goes to."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Frame:
    rgb: np.ndarray
    stamp_ns: int
    arrival_ns: int  # when its message reached the node
    ready_ns: int  # when it was converted and stored
    used: bool = False


class FrameGate:
    """The newest acceptable frame per camera and the decision to step on them."""

    def __init__(self, cameras: Sequence[str], max_age_s: float, max_future_s: float,
                 max_skew_s: float = 0.0):
        if not cameras:
            raise ValueError('cameras=[] is invalid: expected at least one camera')
        self.cameras = tuple(cameras)
        self.max_age_ns = int(max_age_s * 1e9)
        self.max_future_ns = int(max_future_s * 1e9)
        self.max_skew_ns = int(max_skew_s * 1e9)
        self._frames: dict[str, Frame] = {}
        self._last: dict[str, int] = {}

    @property
    def primary(self) -> str:
        return self.cameras[0]

    def check(self, camera: str, stamp_ns: int, now_ns: int) -> None:
        """Raise Rejected ('stamp' or 'out_of_order') for a frame not worth converting."""
        if stamp_ns < 0:
            raise Rejected('stamp', f'camera {camera!r}: frame dropped: negative stamp '
                           f'{_s(stamp_ns)}')
        if stamp_ns > now_ns + self.max_future_ns:
            raise Rejected('stamp', f'camera {camera!r}: frame dropped: stamped '
                           f'{_s(stamp_ns - now_ns)} ahead of this node\'s clock (more than '
                           f'max_future_stamp={_s(self.max_future_ns)}: the camera\'s clock '
                           'is wrong)')
        last = self._last.get(camera)
        if last is not None and stamp_ns <= last:
            raise Rejected('out_of_order', f'camera {camera!r}: frame stamped {_s(stamp_ns)} '
                           f'is not newer than the last one ({_s(last)}): dropped')

    def put(self, camera: str, rgb: np.ndarray, stamp_ns: int, arrival_ns: int,
            now_ns: int) -> bool:
        """Store a checked frame; returns whether it replaced one no step used."""
        old = self._frames.get(camera)
        self._frames[camera] = Frame(rgb, stamp_ns, arrival_ns, now_ns)
        self._last[camera] = stamp_ns
        return old is not None and not old.used

    def take(self, now_ns: int) -> Optional[dict[str, Frame]]:
        """The frames to step on (marked used), or None while the primary camera has no new
        frame, another camera has none yet (`missing()` says which) or a step waits for a
        lagging camera (`deadline_ns()` says until when). Raises Rejected ('stale') when a
        frame is older than max_age; those frames count as used."""
        first = self._frames.get(self.primary)
        if first is None or first.used or self.missing():
            return None
        deadline = self.deadline_ns()
        if deadline is not None and now_ns < deadline:
            return None
        frames = dict(self._frames)
        for f in frames.values():
            f.used = True
        ages = {c: now_ns - f.stamp_ns for c, f in frames.items()}
        stale = {c: round(a * 1e-9, 3) for c, a in ages.items() if a > self.max_age_ns}
        if stale:
            raise Rejected('stale', f'stale frames (age s) {stale} > max_image_age='
                           f'{_s(self.max_age_ns)}: no chunk')
        return frames

    def deadline_ns(self) -> Optional[int]:
        """While a camera's newest frame is older than the pending primary frame by more than
        max_skew: when the step goes ahead without its frame of that moment; else None."""
        first = self._frames.get(self.primary)
        if first is None or first.used:
            return None
        oldest = min(f.stamp_ns for f in self._frames.values())
        if oldest >= first.stamp_ns - self.max_skew_ns:
            return None
        return first.arrival_ns + self.max_skew_ns

    def missing(self) -> list[str]:
        return [c for c in self.cameras if c not in self._frames]

    def clear(self) -> None:
        self._frames.clear()
        self._last.clear()


def _s(ns: int) -> str:
    return f'{ns * 1e-9:.3f} s'
