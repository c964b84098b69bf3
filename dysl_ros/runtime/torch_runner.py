"""PyTorch runner (CPU or CUDA) over a VLA and its DySL parts."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..layout import Layout
from ..model.dysl import DySL
from ..model.segment import SegmentGraph
from ..model.vla import VLA
from ..skipping import HOST


class TorchRunner:
    """Runs straight from the torch modules; hidden states stay torch tensors.

    segments=True (the default) runs each segment as one SegmentGraph call with host
    decisions (skipping.HOST: one inference-mode entry per segment); segments=False leaves
    the policy to walk the units, one call each (the per-unit path, and what wrappers that
    replace units need).
    """

    name = 'torch'

    def __init__(self, vla: VLA, dysl: Optional[DySL] = None, segments: bool = True):
        self.vla = vla.eval()
        self.dysl = dysl.eval() if dysl is not None else None
        self.device = vla.action_mean.device
        self.runs_segments = segments
        self.layout = dysl.layout if dysl is not None else Layout.full(len(vla.blocks))
        self.graphs = [SegmentGraph(vla.blocks, self.dysl, seg, HOST)
                       for seg in self.layout.segments]

    @torch.inference_mode()
    def embed(self, images: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
        return self.vla.embed(torch.from_numpy(images).to(self.device),
                              torch.from_numpy(tokens).to(self.device))

    @torch.inference_mode()
    def segment(self, k: int, x: torch.Tensor, allow_from: int, threshold: float
                ) -> tuple[torch.Tensor, int]:
        return self.graphs[k](x, allow_from, threshold)

    def read_skips(self, records: Sequence[int]) -> list[int]:
        return [int(r) for r in records]

    @torch.inference_mode()
    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.vla.blocks[i](x)

    @torch.inference_mode()
    def adapter(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self._dysl().adapter(j, x)

    @torch.inference_mode()
    def controller(self, j: int, x: torch.Tensor) -> float:
        return self._dysl().controller(j, x)

    @torch.inference_mode()
    def head(self, x: torch.Tensor) -> np.ndarray:
        return self.vla.head(x)[0].float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _dysl(self) -> DySL:
        if self.dysl is None:
            raise RuntimeError('this runner has no DySL parts: load a model with adapters')
        return self.dysl
