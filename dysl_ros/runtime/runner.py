"""The runner protocol: how a backend runs one unit, or one whole segment. Nothing else is
backend-specific; the skip logic is `dysl_ros.skipping`'s."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    """Runs the units of one exported / loaded DySL model on one backend.

    Hidden states are opaque to callers (a torch tensor, a device buffer, ...); only the
    runner creates and consumes them. Outputs of `head` are owned by the caller.

    A runner with `runs_segments = True` (absent means False) also is a skipping.SegmentRunner (`segment`,
    `read_skips`): the policy then launches whole segments; otherwise it walks the units.
    A per-segment export has no unit graphs: its runner's layer/adapter/controller raise.
    """

    name: str
    runs_segments: bool

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> Any:
        """(1, N, 3, S, S) float32, (1, L) int64 -> hidden state."""

    def layer(self, i: int, x: Any) -> Any:
        """Backbone layer i."""

    def adapter(self, j: int, x: Any) -> Any:
        """Adapter of dynamic layer j: jumps to the next static layer's input."""

    def controller(self, j: int, x: Any) -> float:
        """Skip probability of dynamic layer j (one host synchronisation)."""

    def head(self, x: Any) -> np.ndarray:
        """Hidden state -> normalised chunk (H, D) float32."""

    def synchronize(self) -> None:
        """Wait for queued device work (for honest per-stage timing); no-op on the CPU."""


class RunnerWrapper:
    """A runner passed through: every unit goes to `inner`; a subclass overrides the units it
    changes or watches (counting calls, random coins, ...). It walks units, so that its
    overrides apply: `inner` must run units."""

    runs_segments = False

    def __init__(self, inner: Runner, name: str = ''):
        self.inner = inner
        self.name = name or inner.name

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> Any:
        return self.inner.embed(images, tokens)

    def layer(self, i: int, x: Any) -> Any:
        return self.inner.layer(i, x)

    def adapter(self, j: int, x: Any) -> Any:
        return self.inner.adapter(j, x)

    def controller(self, j: int, x: Any) -> float:
        return self.inner.controller(j, x)

    def head(self, x: Any) -> np.ndarray:
        return self.inner.head(x)

    def synchronize(self) -> None:
        self.inner.synchronize()
