"""A latency budget (no ROS): when steps run over it, the controllers skip more.

The budget shifts the controllers' threshold down (threshold - shift, 0 <= shift <=
max_shift), never on a step the guidance protects (Guidance.protecting: a continuity drop
holds allow points deep; that step runs at the model's threshold). The shift tracks the 95th
percentile by stochastic approximation: each step moves it up by step * 0.95 when its latency
is over the budget and down by step * 0.05 when under, so it settles where 5% of the steps
are over (p95 = budget), or at 0 when the model meets the budget unshifted. Protected steps
count too: the steps after a drop pay for its latency. Up fast, down 19 times slower: the
hysteresis that keeps one fast step from releasing what a slow spell needed. The p95
reported is over the last `window` steps; when it is over the budget with the shift at its
bound, the budget cannot be met (`unmet`).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Optional

import numpy as np

QUANTILE = 95.0  # the latency percentile the budget holds


class LatencyBudget:
    """The threshold shift that holds the step latency's p95 at budget_ms; see the module
    docstring.

    Args:
        budget_ms: the p95 step latency to hold, > 0.
        window: steps over which the reported p95 is computed, >= 1.
        max_shift: the most the threshold comes down, > 0.
        step: the shift's gain per step, in (0, max_shift].
    """

    def __init__(self, budget_ms: float, window: int = 100, max_shift: float = 0.3,
                 step: float = 0.02):
        if not budget_ms > 0:
            raise ValueError(f'budget_ms={budget_ms!r} is invalid: expected > 0 ms')
        if window < 1:
            raise ValueError(f'window={window!r} is invalid: expected >= 1 steps')
        if not 0 < step <= max_shift:
            raise ValueError(f'max_shift={max_shift!r}, step={step!r} are invalid: expected '
                             '0 < step <= max_shift')
        self.budget_ms = float(budget_ms)
        self.max_shift = float(max_shift)
        self.step = float(step)
        self.shift = 0.0  # applied as threshold - shift outside protected steps
        self.p95_ms: Optional[float] = None  # over the window; None before the first step
        self._latencies: deque = deque(maxlen=window)

    def shift_for(self, protecting: bool) -> float:
        """The threshold shift of the next step: 0 while the guidance protects a drop."""
        return 0.0 if protecting else self.shift

    def observe(self, latency_ms: float) -> None:
        """Count a step's latency: it moves the p95 and the shift."""
        self._latencies.append(float(latency_ms))
        self.p95_ms = float(np.percentile(self._latencies, QUANTILE))
        over = float(latency_ms > self.budget_ms)
        self.shift = min(max(self.shift + self.step * (over - (1 - QUANTILE / 100)), 0.0),
                         self.max_shift)

    @property
    def unmet(self) -> bool:
        """The p95 is over the budget with the shift at (within a step of) its bound."""
        return (self.p95_ms is not None and self.p95_ms > self.budget_ms
                and self.shift >= self.max_shift - self.step)

    def report(self) -> dict[str, Any]:
        """The figures for ~/step_stats and /diagnostics."""
        return {'latency_budget_ms': self.budget_ms, 'latency_p95_ms': self.p95_ms,
                'threshold_shift': self.shift, 'max_threshold_shift': self.max_shift,
                'latency_budget_unmet': self.unmet}
