"""One static segment of a DySL model as one module, the unit of per-segment export.

    graph = SegmentGraph(blocks, dysl, layout.segments[k])
    x_next, skipped_at = graph(x, allow_from, threshold)   # (1, T, C), int64 (1,)

It runs `skipping.segment_pass`, the one skip logic, over its own layers, adapters and
controllers. With the GRAPH operations (the default) every decision is a `torch.cond`, which
the dynamo ONNX exporter writes as an ONNX `If`: the whole segment is one graph, one launch,
and no host read. With skipping.HOST the same module runs eagerly with Python control flow
(the torch runner: a data-dependent branch costs nothing on the CPU, while an eager
torch.cond costs ~0.2 ms).

allow_from (int64 (1,)): the segment's allow point; a value >= the segment's end runs it at
full depth. threshold (float32 (1,)): the controllers' threshold, an input so that a runtime
may move it without re-exporting. skipped_at: the dynamic layer skipped at, or NO_SKIP (-1).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..layout import Segment
from ..skipping import Ops, segment_pass


class _GraphOps:
    """Tests as bool (1,) tensors, branches as torch.cond (ONNX If)."""

    def left(self, skipped: torch.Tensor) -> bool:
        return False

    def asks(self, j: int, allow_from: torch.Tensor, skipped: torch.Tensor) -> torch.Tensor:
        return (skipped < 0) & (allow_from <= j)

    def exceeds(self, prob: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return prob.float() > threshold

    def stays(self, skipped: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return (skipped < 0) & ~skip

    def no(self) -> torch.Tensor:
        return torch.zeros((1,), dtype=torch.bool)

    def branch(self, pred: torch.Tensor, then: Callable, otherwise: Callable,
               operands: tuple) -> Any:
        return torch.cond(pred, then, otherwise, operands)

    def index(self, j: int) -> torch.Tensor:
        return torch.full((1,), j, dtype=torch.int64)

    def copy(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()  # torch.cond branches may not return their inputs


GRAPH = _GraphOps()


class SegmentGraph(nn.Module):
    """Static layer seg.static, the dynamic layers up to seg.end, their adapters and
    controllers (shared with the model they come from: no weight is copied)."""

    def __init__(self, blocks: Sequence[nn.Module], dysl: Optional[nn.Module], seg: Segment,
                 ops: Ops = GRAPH):
        super().__init__()
        if seg.dynamic and dysl is None:
            raise ValueError(f'segment {seg} has dynamic layers: it needs the DySL parts')
        self.seg = seg
        self.ops = ops
        self.blocks = nn.ModuleDict({str(i): blocks[i] for i in range(seg.static, seg.end)})
        self.adapters = nn.ModuleDict({str(j): dysl.adapters[str(j)] for j in seg.dynamic})
        self.controllers = nn.ModuleDict({str(j): dysl.controllers[str(j)]
                                          for j in seg.dynamic})

    def forward(self, x: torch.Tensor, allow_from: Any, threshold: Any
                ) -> tuple[torch.Tensor, Any]:
        return segment_pass(self.seg, x, allow_from, threshold, self, self.ops)

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[str(i)](x)

    def adapter(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self.adapters[str(j)](x)

    def controller(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self.controllers[str(j)](x)  # (1,)
