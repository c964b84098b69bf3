"""A full-depth shadow check (no ROS): how far the skipping chunks drift from full depth.

Every `every_n`-th guided step the same observation also runs at full depth, off the
critical path (GuidedPolicy.shadow_pass, which the policy node calls after publishing the
chunk), and the chunk drift is measured: the normalised L1 distance, mean |a - b| / std over
the chunk's H x D actions with the model's action std (chunk_drift), i.e. the mean absolute
difference in the model's normalised units. A drift above `drift_threshold` makes the policy
run at full depth (skipping off) for the next `fallback_steps` steps; fallback steps are not
shadowed (they are full depth) and do not count towards the next check. A later drift above
the threshold restarts the fallback from fallback_steps.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def chunk_drift(guided: np.ndarray, full: np.ndarray, std: Any = 1.0) -> float:
    """Normalised L1: mean |guided - full| / std over all actions of two (H, D) chunks (std:
    per action dimension, (D,); 1 for chunks already in the model's normalised units)."""
    guided, full = np.asarray(guided, np.float64), np.asarray(full, np.float64)
    if guided.shape != full.shape:
        raise ValueError(f'chunks of shapes {guided.shape} and {full.shape} cannot be compared')
    return float(np.mean(np.abs(guided - full) / np.asarray(std, np.float64)))


class ShadowCheck:
    """When the shadow pass runs, and when the policy falls back to full depth; see the module
    docstring.

    Args:
        every_n: shadow every n-th guided step, >= 1 (1: every step).
        drift_threshold: the normalised L1 drift above which the policy falls back, >= 0.
        fallback_steps: full-depth steps after a drift above the threshold, >= 1.
    """

    def __init__(self, every_n: int, drift_threshold: float, fallback_steps: int):
        if every_n < 1:
            raise ValueError(f'every_n={every_n!r} is invalid: expected >= 1 steps')
        if not drift_threshold >= 0:
            raise ValueError(f'drift_threshold={drift_threshold!r} is invalid: expected >= 0')
        if fallback_steps < 1:
            raise ValueError(f'fallback_steps={fallback_steps!r} is invalid: expected >= 1 '
                             'steps')
        self.every_n = int(every_n)
        self.drift_threshold = float(drift_threshold)
        self.fallback_steps = int(fallback_steps)
        self.fallback_left = 0  # full-depth steps still to run
        self.last_drift: Optional[float] = None
        self.max_drift: Optional[float] = None
        self.runs = 0  # shadow checks measured
        self.fallbacks = 0  # drifts above the threshold
        self._since = 0  # guided steps since the last check

    def begin_step(self) -> tuple[bool, bool]:
        """(full_depth, shadow) for the step about to run: a fallback step runs full depth and
        is not shadowed; every every_n-th other step is shadowed."""
        if self.fallback_left > 0:
            self.fallback_left -= 1
            return True, False
        self._since += 1
        if self._since >= self.every_n:
            self._since = 0
            return False, True
        return False, False

    def observe(self, drift: float) -> bool:
        """Count a shadow check's drift; returns whether it starts a fallback."""
        drift = float(drift)
        self.runs += 1
        self.last_drift = drift
        self.max_drift = drift if self.max_drift is None else max(self.max_drift, drift)
        if drift > self.drift_threshold:
            self.fallback_left = self.fallback_steps
            self.fallbacks += 1
            return True
        return False

    @property
    def falling_back(self) -> bool:
        """Whether full-depth fallback steps remain."""
        return self.fallback_left > 0

    def report(self) -> dict[str, Any]:
        """The figures for ~/step_stats and /diagnostics."""
        return {'shadow_every': self.every_n, 'shadow_drift_threshold': self.drift_threshold,
                'shadow_last_drift': self.last_drift, 'shadow_max_drift': self.max_drift,
                'shadow_runs': self.runs, 'shadow_fallbacks': self.fallbacks,
                'shadow_fallback_steps_left': self.fallback_left}
