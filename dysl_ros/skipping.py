"""The one segment walk of DySL, shared by every backend.

A backend supplies three callables over its own hidden-state type (a torch tensor, a numpy
array, a device buffer): run a layer, ask a controller for its skip probability (a float,
the one host synchronisation per active controller), and run an adapter. The walk decides
which of them to call, and does no other work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TypeVar

from .model.layout import Layout

X = TypeVar('X')


@dataclass
class SkipTrace:
    """What one backbone pass did."""

    layers_run: list[int] = field(default_factory=list)
    skipped_at: list[Optional[int]] = field(default_factory=list)  # per segment
    probs: dict[int, float] = field(default_factory=dict)  # controller outputs asked for

    @property
    def skipped(self) -> bool:
        return any(j is not None for j in self.skipped_at)


def walk_segments(
    x: X,
    layout: Layout,
    run_layer: Callable[[int, X], X],
    skip_prob: Callable[[int, X], float],
    adapt: Callable[[int, X], X],
    allow_points: Optional[Sequence[int]] = None,
    threshold: float = 0.5,
) -> tuple[X, SkipTrace]:
    """Run the backbone segment by segment.

    Static layers always run. A dynamic layer before its segment's allow point P_k runs
    with its controller off; from P_k on its controller decides: p > threshold jumps
    through the adapter to the next static layer (at most one skip per segment).
    allow_points=None means every P_k at its segment's end: full depth, no controller asked.
    """
    segments = layout.segments
    if allow_points is not None and len(allow_points) != len(segments):
        raise ValueError(f'allow_points has {len(allow_points)} entries for '
                         f'{len(segments)} segments')
    trace = SkipTrace()
    for k, seg in enumerate(segments):
        allow = seg.end if allow_points is None else int(allow_points[k])
        x = run_layer(seg.static, x)
        trace.layers_run.append(seg.static)
        skipped = None
        for j in seg.dynamic:
            if j >= allow:
                p = float(skip_prob(j, x))
                trace.probs[j] = p
                if p > threshold:
                    x = adapt(j, x)
                    skipped = j
                    break
            x = run_layer(j, x)
            trace.layers_run.append(j)
        trace.skipped_at.append(skipped)
    return x, trace
