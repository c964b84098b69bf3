"""What the policy node counts, as plain Python (no ROS): the source of its /diagnostics."""
from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# Error kinds the policy node counts (each also logged, throttled): a frame refused for its
# encoding, size, compressed data, stamp (negative or in the future), order or age; an
# instruction refused; a camera publisher whose QoS cannot match (qos) or frames DDS reports
# lost (lost); a model output with NaN / inf; a failing step.
ERROR_KINDS = ('encoding', 'size', 'decode', 'stamp', 'out_of_order', 'stale', 'instruction',
               'qos', 'lost', 'non_finite', 'inference')
EPISODE_STEPS = 10_000  # steps of the current episode kept for its summary (the latest)


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile of values, or None when there are none."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


@dataclass(frozen=True)
class StepRecord:
    """One published chunk: what the policy did and how long it took."""

    episode: int
    layers_run: int
    layers_guided: int  # layers of the first (guided) pass
    layers_total: int
    verified: bool
    policy_ms: float  # policy.step wall time
    camera_to_chunk_ms: float  # image stamp -> chunk published


class PolicyStats:
    """Thread-safe counters plus a window of recent steps and the current episode's steps."""

    def __init__(self, window: int = 100):
        if window < 1:
            raise ValueError(f'window={window} is invalid: expected >= 1')
        self._lock = threading.Lock()
        self._recent: deque = deque(maxlen=window)
        self._episode: deque = deque(maxlen=EPISODE_STEPS)  # bounded: an episode may not end
        self.errors: Counter = Counter()
        self.frames_received = 0
        self.frames_dropped = 0  # overwritten by a newer frame before inference used them
        self.steps = 0
        self.verifications = 0

    def frame(self, dropped_previous: bool) -> None:
        with self._lock:
            self.frames_received += 1
            self.frames_dropped += int(dropped_previous)

    def error(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.errors[kind] += count

    def step(self, record: StepRecord) -> None:
        with self._lock:
            self.steps += 1
            self.verifications += int(record.verified)
            self._recent.append(record)
            if self._episode and self._episode[-1].episode != record.episode:
                self._episode.clear()
            self._episode.append(record)

    def new_episode(self) -> None:
        with self._lock:
            self._episode.clear()

    @property
    def error_total(self) -> int:
        with self._lock:
            return sum(self.errors.values())

    def summary(self) -> dict[str, float]:
        """Counters and windowed figures (latency percentiles in ms; None when no steps)."""
        with self._lock:
            recent = list(self._recent)
            out = {'steps': self.steps, 'verifications': self.verifications,
                   'frames_received': self.frames_received,
                   'frames_dropped': self.frames_dropped,
                   'errors': sum(self.errors.values())}
            out.update({f'errors_{k}': self.errors[k] for k in ERROR_KINDS})
        out.update(_window(recent))
        return out

    def episode_summary(self) -> dict[str, float]:
        """The same windowed figures over the current episode's steps."""
        with self._lock:
            steps = list(self._episode)
        return {'steps': len(steps), 'verifications': sum(r.verified for r in steps),
                **_window(steps)}


def _window(records: list[StepRecord]) -> dict:
    if not records:
        return {'layers_run_mean': None, 'skip_rate': None, 'policy_ms_p50': None,
                'policy_ms_p90': None, 'camera_to_chunk_ms_p50': None,
                'camera_to_chunk_ms_p90': None}
    policy = [r.policy_ms for r in records]
    c2c = [r.camera_to_chunk_ms for r in records]
    return {
        'layers_run_mean': float(np.mean([r.layers_run for r in records])),
        'layers_total': records[-1].layers_total,
        # share of backbone layers the guided pass did not run
        'skip_rate': float(np.mean([1.0 - r.layers_guided / r.layers_total for r in records])),
        'policy_ms_p50': percentile(policy, 50), 'policy_ms_p90': percentile(policy, 90),
        'camera_to_chunk_ms_p50': percentile(c2c, 50),
        'camera_to_chunk_ms_p90': percentile(c2c, 90),
    }
