"""The one skip logic of DySL, shared by every backend and by the exported graphs.

`segment_pass` runs one segment: its static layer, then each dynamic layer j, where from the
segment's allow point on the controller g_j decides: p > threshold jumps through adapter A_j
to the next static layer (at most one skip per segment), else layer j runs. It is written
once over two sets of operations:

- HOST: Python control flow; a controller is asked only from the allow point on, and the
  skip position is an int. The per-unit runners (torch, ONNX Runtime and TensorRT units)
  walk segments this way, one launch per unit and one host read per asked controller.
- graph operations (`model.segment.GRAPH`): the same function traced into one graph per
  segment, each decision an in-graph conditional (torch.cond -> ONNX `If` -> TensorRT
  `IIfConditional`), the skip position an int64 tensor: one launch per segment, no host read.

A runner of segments (`SegmentRunner`) runs `segment(k, x, allow_from, threshold)`; a runner
of units gets one through `UnitSegments`. `walk_segments` chains the segments of a step and
reads their skip positions once at the end; a verification resumes from the first segment
that skipped, with allow points at the segment ends (full depth).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, TypeVar

from .layout import Layout, Segment

X = TypeVar('X')
NO_SKIP = -1  # skip position of a segment that ran to its end


class Units(Protocol):
    """Runs one unit of a DySL backbone on its own hidden-state type."""

    def layer(self, i: int, x: Any) -> Any:
        """Backbone layer i."""

    def adapter(self, j: int, x: Any) -> Any:
        """Adapter of dynamic layer j: jumps to the next static layer's input."""

    def controller(self, j: int, x: Any) -> Any:
        """Skip probability of dynamic layer j (a float on the host; a tensor in a graph)."""


class Ops(Protocol):
    """How segment_pass tests and branches: on the host, or inside a graph."""

    def left(self, skipped: Any) -> bool:
        """Has the pass left the segment? (the host stops there; a graph never can)"""

    def asks(self, j: int, allow_from: Any, skipped: Any) -> Any:
        """Is controller j asked? (inside the segment, at or past the allow point)"""

    def exceeds(self, prob: Any, threshold: Any) -> Any:
        """Does the controller's probability say skip?"""

    def no(self) -> Any:
        """The decision of a controller not asked."""

    def stays(self, skipped: Any, skip: Any) -> Any:
        """Does layer j run? (still inside the segment, and not skipping here)"""

    def branch(self, pred: Any, then: Callable, otherwise: Callable, operands: tuple) -> Any:
        """then(*operands) if pred else otherwise(*operands)."""

    def index(self, j: int) -> Any:
        """A skip position as this mode returns it."""

    def copy(self, x: Any) -> Any:
        """x unchanged (a graph branch may not return its input itself)."""


class _HostOps:
    def left(self, skipped: int) -> bool:
        return skipped != NO_SKIP

    def asks(self, j: int, allow_from: int, skipped: int) -> bool:
        return j >= allow_from

    def exceeds(self, prob: Any, threshold: float) -> bool:
        return float(prob) > threshold

    def no(self) -> bool:
        return False

    def stays(self, skipped: int, skip: bool) -> bool:
        return not skip  # the host never steps past a skip

    def branch(self, pred: bool, then: Callable, otherwise: Callable, operands: tuple) -> Any:
        return then(*operands) if pred else otherwise(*operands)

    def index(self, j: int) -> int:
        return j

    def copy(self, x: Any) -> Any:
        return x


HOST = _HostOps()


def segment_pass(seg: Segment, x: X, allow_from: Any, threshold: Any, units: Units,
                 ops: Ops = HOST) -> tuple[X, Any]:
    """One segment: (output, skip position: the dynamic layer skipped at, or NO_SKIP).

    Per dynamic layer j, inside the segment: before the allow point run the layer; from it
    on ask controller g_j: skip through the adapter (and leave), or run the layer.
    allow_from >= seg.end runs the segment at full depth, asking no controller.

    On the host a skip leaves the segment at once. A graph cannot leave its sequence of
    conditionals, so there each step after a skip passes its input through. Each unit
    appears once (a graph holds each weight once) and the conditionals stay flat, nested at
    most two deep: tracing is linear in the segment's length (nesting the rest of the
    segment in each decision made it exponential), and ONNX Runtime's CPU executor, which
    spends ~10-20 us per conditional and more per nesting level, runs a layer through two
    (decide, stay) and a step after a skip through three (decide, stay, leave).
    """
    def keep(x: X, s: Any) -> tuple[X, Any]:
        return ops.copy(x), ops.copy(s)

    x, skipped = units.layer(seg.static, x), ops.index(NO_SKIP)
    for j in seg.dynamic:
        if ops.left(skipped):
            break

        def decide(x: X, j: int = j) -> Any:
            return ops.exceeds(units.controller(j, x), threshold)

        def run(x: X, s: Any, j: int = j) -> tuple[X, Any]:
            return units.layer(j, x), ops.copy(s)

        def adapt(x: X, s: Any, j: int = j) -> tuple[X, Any]:
            return units.adapter(j, x), ops.index(j)

        skip = ops.branch(ops.asks(j, allow_from, skipped), decide, lambda x: ops.no(), (x,))

        def leave(x: X, s: Any, skip: Any = skip) -> tuple[X, Any]:
            return ops.branch(skip, adapt, keep, (x, s))  # skip here, or skipped before

        x, skipped = ops.branch(ops.stays(skipped, skip), run, leave, (x, skipped))
    return x, skipped


class SegmentRunner(Protocol):
    """Runs whole segments; skip positions stay on the runner's side until `read_skips`."""

    def segment(self, k: int, x: Any, allow_from: int, threshold: float) -> tuple[Any, Any]:
        """Segment k -> (output, skip record)."""

    def read_skips(self, records: Sequence[Any]) -> list[int]:
        """Skip records -> skip positions (NO_SKIP: none): the one read of a step."""


class UnitSegments:
    """Segments walked on the host over a runner of units (one launch per unit), recording
    every probability a controller was asked for (make one per pass)."""

    def __init__(self, units: Units, layout: Layout):
        self.units = units
        self.layout = layout
        self.probs: dict[int, float] = {}

    def segment(self, k: int, x: Any, allow_from: int, threshold: float) -> tuple[Any, int]:
        return segment_pass(self.layout.segments[k], x, allow_from, threshold, self)

    def read_skips(self, records: Sequence[int]) -> list[int]:
        return [int(r) for r in records]

    # Units, passed through: the controller's answers are kept for the trace.
    def layer(self, i: int, x: Any) -> Any:
        return self.units.layer(i, x)

    def adapter(self, j: int, x: Any) -> Any:
        return self.units.adapter(j, x)

    def controller(self, j: int, x: Any) -> float:
        p = float(self.units.controller(j, x))
        self.probs[j] = p
        return p


def as_segments(runner: Any, layout: Layout) -> SegmentRunner:
    """The runner itself when it runs segments (`runs_segments`), else its units walked on
    the host (a new UnitSegments: call once per pass)."""
    if getattr(runner, 'runs_segments', False):
        return runner
    return UnitSegments(runner, layout)


@dataclass
class SkipTrace:
    """What one backbone pass did."""

    layers_run: list[int] = field(default_factory=list)
    skipped_at: list[Optional[int]] = field(default_factory=list)  # per segment
    probs: dict[int, float] = field(default_factory=dict)  # controllers asked (unit walks)
    # (segment, its input) of the first segment that skipped: everything before it is what a
    # full-depth pass computes too, so a verification resumes there (resume_full_depth)
    resume: Optional[tuple[int, Any]] = None

    @property
    def skipped(self) -> bool:
        return any(j is not None for j in self.skipped_at)


def walk_segments(x: X, layout: Layout, segments: SegmentRunner,
                  allow_points: Optional[Sequence[int]] = None,
                  threshold: float = 0.5) -> tuple[X, SkipTrace]:
    """Run the backbone segment by segment; read the skip positions once, at the end.

    allow_points=None means every P_k at its segment's end: full depth, no controller asked.
    """
    segs = layout.segments
    if allow_points is not None and len(allow_points) != len(segs):
        raise ValueError(f'allow_points has {len(allow_points)} entries for '
                         f'{len(segs)} segments')
    inputs, records = [], []
    for k, seg in enumerate(segs):
        allow = seg.end if allow_points is None else int(allow_points[k])
        inputs.append(x)
        x, record = segments.segment(k, x, allow, threshold)
        records.append(record)
    trace = SkipTrace()
    for k, (seg, j) in enumerate(zip(segs, segments.read_skips(records))):
        skipped = None if j == NO_SKIP else int(j)
        trace.skipped_at.append(skipped)
        trace.layers_run.extend(range(seg.static, seg.end if skipped is None else skipped))
        if skipped is not None and trace.resume is None:
            trace.resume = (k, inputs[k])
    trace.probs = dict(getattr(segments, 'probs', {}))
    return x, trace


def resume_full_depth(trace: SkipTrace, layout: Layout, segments: SegmentRunner
                      ) -> tuple[X, int]:
    """The full-depth result of a pass that skipped, computed from the input of its first
    skipping segment (the segments before are shared with full depth, so none is run
    twice). Returns the final hidden state and the number of layers run."""
    if trace.resume is None:
        raise ValueError('the pass skipped nothing: its output already is full depth')
    start, x = trace.resume
    segs = layout.segments[start:]
    for k, seg in enumerate(segs, start):
        x, _ = segments.segment(k, x, seg.end, 1.0)
    return x, layout.num_layers - segs[0].static
