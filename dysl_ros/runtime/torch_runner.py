"""PyTorch runner (CPU or CUDA) over a VLA and its DySL parts."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..model.dysl import DySL
from ..model.vla import VLA


class TorchRunner:
    """Runs units straight from the torch modules; hidden states stay torch tensors."""

    name = 'torch'

    def __init__(self, vla: VLA, dysl: Optional[DySL] = None):
        self.vla = vla.eval()
        self.dysl = dysl.eval() if dysl is not None else None
        self.device = vla.action_mean.device

    @torch.inference_mode()
    def embed(self, images: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
        return self.vla.embed(torch.from_numpy(images).to(self.device),
                              torch.from_numpy(tokens).to(self.device))

    @torch.inference_mode()
    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.vla.blocks[i](x)

    @torch.inference_mode()
    def adapter(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self._dysl().adapt(j, x)

    @torch.inference_mode()
    def controller(self, j: int, x: torch.Tensor) -> float:
        return self._dysl().skip_prob(j, x)

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
