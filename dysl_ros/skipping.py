"""The one segment walk of DySL, shared by every backend.

A backend supplies three callables over its own hidden-state type (a torch tensor, a numpy
array, a device buffer): run a layer, ask a controller for its skip probability (a float,
the one host synchronisation per active controller), and run an adapter. The walk decides
which of them to call, and does no other work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, TypeVar

from .layout import Layout

X = TypeVar('X')


@dataclass
class SkipTrace:
    """What one backbone pass did."""

    layers_run: list[int] = field(default_factory=list)
    skipped_at: list[Optional[int]] = field(default_factory=list)  # per segment
    probs: dict[int, float] = field(default_factory=dict)  # controller outputs asked for
    # (layer, its input) where the pass first left full depth: everything before it is what
    # a full-depth pass computes too, so a verification resumes there (resume_full_depth)
    resume: Optional[tuple[int, Any]] = None

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
                    if trace.resume is None:
                        trace.resume = (j, x)
                    x = adapt(j, x)
                    skipped = j
                    break
            x = run_layer(j, x)
            trace.layers_run.append(j)
        trace.skipped_at.append(skipped)
    return x, trace


def resume_full_depth(trace: SkipTrace, num_layers: int,
                      run_layer: Callable[[int, X], X]) -> tuple[X, int]:
    """The full-depth result of a pass that skipped, computed from where it first skipped
    (the layers before are shared with full depth, so none is run twice). Returns the
    final hidden state and the number of layers run."""
    if trace.resume is None:
        raise ValueError('the pass skipped nothing: its output already is full depth')
    start, x = trace.resume
    for i in range(start, num_layers):
        x = run_layer(i, x)
    return x, num_layers - start
