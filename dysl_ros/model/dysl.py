"""DySL over any stack of transformer blocks: adapters, controllers, and the three modes.

The wrapper knows only `blocks`, a sequence of `x -> x` modules over hidden states
(B, T, C). The VLA's blocks qualify as they are; other backbones (a Hugging Face Llama
decoder, say) are wrapped into that shape once (see `model/llama.py`).

Modes:
- full depth (the teacher): every layer runs; optionally returns every layer's input.
- guided: the segment walk of `dysl_ros.skipping` under allow points (batch 1).
- soft (stage 2): per segment, one drawn dynamic layer mixes adapter and layers by p.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import Layout
from ..skipping import SkipTrace, UnitSegments, walk_segments
from .config import DySLConfig
from .parts import TrainableParts, count_parameters


class RMSNorm(nn.Module):
    """x / rms(x) * w, written out so every exporter sees plain ops."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Adapter(nn.Module):
    """A_j(x) = x + W_u GELU(W_d RMSNorm(x)), W_u zero-initialised (RECON): starts as identity."""

    def __init__(self, d_model: int, rank: int):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.down = nn.Linear(d_model, rank)
        self.up = nn.Linear(rank, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(self.norm(x))))  # (B, T, C)


class Controller(nn.Module):
    """g_j(x) = sigmoid(Linear(tanh(Linear(mean_T RMSNorm(x))))) -> skip probability (B,)."""

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.fc = nn.Linear(d_model, width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).mean(dim=1)  # (B, C): one decision per pass, not per token (RECON)
        return torch.sigmoid(self.out(torch.tanh(self.fc(h)))).squeeze(-1)  # (B,)


class DySL(TrainableParts):
    """Adapters and controllers for the dynamic layers of a frozen block stack (checkpoints
    hold only those: trainable_state_dict)."""

    def __init__(self, blocks: Sequence[nn.Module], d_model: int, layout: Layout,
                 cfg: DySLConfig = DySLConfig()):
        super().__init__()
        if layout.num_layers != len(blocks):
            raise ValueError(f'layout has {layout.num_layers} layers, backbone has {len(blocks)}')
        self.cfg = cfg
        self.layout = layout
        self.blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        self.adapters = nn.ModuleDict({str(j): Adapter(d_model, cfg.adapter_rank)
                                       for j in layout.dynamic})
        self.controllers = nn.ModuleDict({str(j): Controller(d_model, cfg.controller_width)
                                          for j in layout.dynamic})

    # -- the three modes -------------------------------------------------------------------

    def forward_full(self, x: torch.Tensor, collect: bool = False
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher pass. With collect, returns the input of every layer and the final output
        (num_layers + 1 tensors)."""
        hiddens = []
        for block in self.blocks:
            if collect:
                hiddens.append(x)
            x = block(x)
        if collect:
            hiddens.append(x)
        return x, hiddens

    def forward_guided(self, x: torch.Tensor, allow_points: Optional[Sequence[int]] = None,
                       force_skip: bool = False) -> tuple[torch.Tensor, SkipTrace]:
        """Guided inference (batch 1): the shared segment walk with this module's parts.

        allow_points=None runs full depth; force_skip makes every active controller skip.
        """
        if x.shape[0] != 1:
            raise ValueError(f'guided inference takes batch 1, got batch {x.shape[0]}')
        threshold = -1.0 if force_skip else self.cfg.skip_threshold  # -1: every p skips
        return walk_segments(x, self.layout, UnitSegments(self, self.layout), allow_points,
                             threshold)

    def forward_soft(self, x: torch.Tensor, picks: Sequence[Optional[int]]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-2 pass: in segment k, layers before picks[k] run, then
        x_end = p * A_j(x_j) + (1 - p) * F_{end-1..j}(x_j). One pick per segment for the
        whole batch (RECON). Returns the output and p (B, n_picks)."""
        probs = []
        for seg, j in zip(self.layout.segments, picks):
            if j is not None and j not in seg.dynamic:
                raise ValueError(f'pick {j} is not a dynamic layer of segment {seg}')
            for i in range(seg.static, seg.end):
                if i == j:
                    p = self.controllers[str(j)](x)  # (B,)
                    skipped = self.adapters[str(j)](x)
                    for r in range(j, seg.end):
                        x = self.blocks[r](x)
                    w = p.view(-1, 1, 1)
                    x = w * skipped + (1 - w) * x  # (B, T, C)
                    probs.append(p)
                    break
                x = self.blocks[i](x)
        p_all = torch.stack(probs, dim=1) if probs else x.new_zeros(x.shape[0], 0)
        return x, p_all

    # -- units, as every backend has them --------------------------------------------------

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i](x)

    def adapter(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self.adapters[str(j)](x)

    def skip_prob(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Controller g_j's skip probability, (B,), left on x's device."""
        return self.controllers[str(j)](x)

    def controller(self, j: int, x: torch.Tensor) -> float:
        return float(self.skip_prob(j, x)[0])

    # -- parameters ------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters()) + list(self.controllers.parameters())

    def parts_fraction(self) -> float:
        """Adapters and controllers as a share of the backbone blocks' parameters."""
        return self.num_trainable() / count_parameters(self.blocks.parameters())

    def freeze_backbone(self) -> None:
        for p in self.blocks.parameters():
            p.requires_grad_(False)
