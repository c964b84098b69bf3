"""When the policy infers (no ROS): the inference schedule of a policy server.

Times are integer nanoseconds on the clock that stamps the frames (a node's ROS clock); E is
executed_actions, dt the control period, p95 the 95th percentile of the camera-to-chunk
latency (observation stamp to publish) over the last `window` chunks.

- 'frame': no due time; the caller steps on every new frame (or at its own rate).
- 'sync': the robot waits for each chunk (LeRobot's synchronous client). After a chunk is
  published at t_pub, the next step is due at t_pub + E * dt, on a frame stamped at or after
  that time: the robot has run its E actions by then.
- 'async': the next step runs while the current chunk executes, due at
  stamp + E * dt - p95 - margin (stamp: the current chunk's observation), on the newest frame
  there is then, so that its chunk lands `margin` before the current one's first E actions
  run out. Before any chunk (no p95) it is due at once.

The first step of an episode is due at once in every mode (reset()). `executed_window` is
(start, stop), the actions of an async chunk expected to run: the controller drops the first
floor(p95 / dt) as already past (latency compensation), and the next chunk, due so that it
lands `margin` before action E, takes over at action ceil((E * dt - margin) / dt).

Thread-safe.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any, Optional

import numpy as np

MODES = ('frame', 'sync', 'async')
QUANTILE = 95.0  # the latency percentile the async due time allows for


class InferenceSchedule:
    """When the next policy step is due; see the module docstring.

    Args:
        mode: one of MODES.
        executed_actions: E, actions of each chunk the robot executes; >= 1 for sync / async.
        dt: the control period in seconds, > 0.
        margin: seconds an async chunk should land before the current one's E actions run
            out, >= 0 (absorbs latency jitter beyond the p95).
        window: chunks over which the latency p95 is computed, >= 1.
    """

    def __init__(self, mode: str, executed_actions: int, dt: float, margin: float = 0.05,
                 window: int = 100):
        if mode not in MODES:
            raise ValueError(f'schedule={mode!r} is invalid: expected one of {list(MODES)}')
        if mode != 'frame' and executed_actions < 1:
            raise ValueError(f'executed_actions={executed_actions!r} is invalid for '
                             f'schedule={mode!r}: expected >= 1 (the actions run per chunk '
                             'time the next step)')
        if not dt > 0 or not margin >= 0 or window < 1:
            raise ValueError(f'dt={dt!r}, margin={margin!r}, window={window!r} are invalid: '
                             'expected dt > 0, margin >= 0, window >= 1')
        self.mode = mode
        self.executed_actions = int(executed_actions)
        self.dt_ns = round(dt * 1e9)
        self.margin_ns = round(margin * 1e9)
        self._lock = threading.Lock()
        self._latencies: deque = deque(maxlen=window)  # ns, stamp -> publish
        self._due: Optional[int] = None  # None: at once
        self._min_stamp: Optional[int] = None  # sync: the frame must be stamped at or after

    def reset(self) -> None:
        """A new episode: the next step is due at once (the latency window stays)."""
        with self._lock:
            self._due = self._min_stamp = None

    @property
    def due_ns(self) -> Optional[int]:
        """When the next step is due (None: at once)."""
        with self._lock:
            return self._due

    def wait_s(self, now_ns: int) -> float:
        """Seconds until the next step is due; 0 when it is."""
        due = self.due_ns
        return 0.0 if due is None else max(due - now_ns, 0) * 1e-9

    def accepts(self, stamp_ns: int) -> bool:
        """Whether a frame stamped stamp_ns may be stepped on (sync: not before the due
        time; the others: any)."""
        with self._lock:
            return self._min_stamp is None or stamp_ns >= self._min_stamp

    def published(self, stamp_ns: int, publish_ns: int) -> None:
        """Count a chunk of the observation stamped stamp_ns, published at publish_ns: its
        latency, and the next step's due time."""
        with self._lock:
            self._latencies.append(publish_ns - stamp_ns)
            horizon = self.executed_actions * self.dt_ns
            if self.mode == 'sync':
                self._due = self._min_stamp = publish_ns + horizon
            elif self.mode == 'async':
                self._due = stamp_ns + horizon - self._p95_ns() - self.margin_ns

    @property
    def latency_p95_ms(self) -> Optional[float]:
        """The camera-to-chunk p95 over the window (None before the first chunk)."""
        with self._lock:
            return self._p95_ns() * 1e-6 if self._latencies else None

    @property
    def executed_window(self) -> tuple[int, int]:
        """(start, stop): the actions of a chunk expected to execute, start = floor(p95 / dt),
        stop = ceil((E * dt - margin) / dt), at least one action; (0, E) before the first
        chunk."""
        with self._lock:
            if not self._latencies:
                return 0, self.executed_actions
            start = math.floor(self._p95_ns() / self.dt_ns)
            stop = -((self.margin_ns - self.executed_actions * self.dt_ns) // self.dt_ns)
            return start, max(stop, start + 1)

    def falls_behind(self, chunk_size: int) -> bool:
        """async: whether one model thread cannot land chunks back to back. A chunk covers
        chunk_size * dt from its stamp and lands p95 after it; the next one is stamped no
        earlier than that landing (the thread was busy), so it lands in time only while
        2 * p95 <= chunk_size * dt. Past that the robot pauses between chunks."""
        with self._lock:
            return self.mode == 'async' and bool(self._latencies) and \
                2 * self._p95_ns() > chunk_size * self.dt_ns

    def report(self) -> dict[str, Any]:
        """The figures for /diagnostics."""
        return {'schedule': self.mode, 'schedule_latency_p95_ms': self.latency_p95_ms,
                'schedule_margin_ms': self.margin_ns * 1e-6}

    def _p95_ns(self) -> int:
        return round(float(np.percentile(self._latencies, QUANTILE)))
