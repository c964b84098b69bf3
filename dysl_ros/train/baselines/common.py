"""What every baseline trainer shares: the config, batches, the training loop, evaluation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from ...layout import Layout
from ...model.config import DySLConfig
from ...model.vla import VLA
from ...validation import require
from ..distill import DistillConfig
from ..optim import check_optimiser_fields, cycle, frozen, make_optimizer, update

Batch = Union[torch.Tensor, tuple]


@dataclass(frozen=True)
class BaselineTrainConfig:
    """Optimisation of the trainable baselines (FlexiDepth, DeeR head, static depth).

    Args:
        steps: optimiser steps per method.
        lr: peak AdamW learning rate (RECON: 1e-4, as for DySL).
        warmup_steps: linear warm-up before the cosine decay (RECON).
        min_lr_ratio: the cosine decays to lr * min_lr_ratio.
        weight_decay: AdamW weight decay (RECON: 0.01, as for DySL).
        grad_clip: maximum global gradient norm; 0 disables clipping.
        flexi_alpha: alpha of FlexiDepth's (sum_l g_l)^2 layer-budget term (RECON: 1e-3).
        flexi_hard: train FlexiDepth with the inference decisions in the forward pass and
            straight-through gradients to the gates (RECON: True; False trains on the soft
            mix, whose states hard inference never sees).
        distill_weight: weight of static depth's output-distillation term (hidden-state MSE
            + L1 to the teacher's chunk) next to the task loss (RECON: 1.0).
        relative_mse: hidden-state MSEs relative to the target's mean square (as in distill).
        eval_samples: batch-1 samples measured after training (layers run, action error).
        progress: show tqdm progress bars.
    """

    steps: int = 2000
    lr: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    flexi_alpha: float = 1e-3
    flexi_hard: bool = True
    distill_weight: float = 1.0
    relative_mse: bool = True
    eval_samples: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.steps >= 0, 'steps', self.steps, '>= 0')
        check_optimiser_fields(self)
        require(self.flexi_alpha >= 0, 'flexi_alpha', self.flexi_alpha, '>= 0')
        require(self.distill_weight >= 0, 'distill_weight', self.distill_weight, '>= 0')
        require(self.eval_samples >= 1, 'eval_samples', self.eval_samples, '>= 1')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Job:
    """Everything a method's maker may need (train_all_baselines fills it once)."""

    model_dir: Path
    vla: VLA
    pairs: Iterable[Batch]  # (x, actions) batches
    hidden: Iterable[torch.Tensor]  # x batches
    cfg: BaselineTrainConfig
    distill_cfg: DistillConfig
    target_layers: Optional[float]  # DySL's mean executed layers
    layout: Layout  # the main DySL's
    dysl_cfg: DySLConfig
    guidance: dict[str, Any]
    seed: int


def split_batch(batch: Batch, device: Optional[torch.device]
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(x, actions or None) of a batch, on device (None: where they are)."""
    x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
    if x.dim() != 3:
        raise ValueError(f'inputs must be hidden states (B, T, C), got {tuple(x.shape)}')
    if device is not None:
        x = x.to(device)
        y = None if y is None else y.to(device)
    return x, y


def full_depth(vla: VLA, x: torch.Tensor) -> torch.Tensor:
    for block in vla.blocks:
        x = block(x)
    return x  # (B, T, C)


def task_target(vla: VLA, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """Demonstration chunk, or the full-depth teacher's chunk without one."""
    if y is not None:
        return y
    with torch.no_grad():
        return vla.head(full_depth(vla, x))  # (B, H, D)


def train_loop(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig, params: list,
               modules: Iterable[torch.nn.Module], desc: str,
               step: Callable[[torch.Tensor, Optional[torch.Tensor]], dict[str, torch.Tensor]],
               show: Optional[tuple[str, str]] = None) -> dict[str, list[float]]:
    """cfg.steps AdamW updates of params on the frozen VLA (blocks and head bit-identical
    afterwards); modules are put in training mode. step(x, y) returns the loss terms of one
    batch, 'loss' (optimised) first; returns each term's curve. show: (term, label) shown
    next to the loss in the progress bar."""
    device = vla.action_mean.device
    hist: dict[str, list[float]] = {}
    with frozen([vla.blocks, vla.head]):
        opt, sched = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                    cfg.steps, cfg.min_lr_ratio)
        for module in modules:
            module.train()
        bar = tqdm(range(cfg.steps), desc=desc, disable=not cfg.progress)
        for _, (x, y) in zip(bar, cycle(inputs, device, split_batch)):
            terms = step(x, y)
            update(opt, sched, terms['loss'], params, cfg.grad_clip)
            for name, value in terms.items():
                hist.setdefault(name, []).append(float(value.detach()))
            extra = {} if show is None else {show[1]: f'{hist[show[0]][-1]:.1f}'}
            bar.set_postfix(loss=f'{hist["loss"][-1]:.4g}', **extra)
    return hist


@torch.no_grad()
def evaluate(vla: VLA, inputs: Iterable[Batch], max_samples: int, infer: Any,
             head: Any) -> dict[str, float]:
    """Batch-1 inference on the first samples: mean layers run and L1 to the teacher chunk."""
    layers, errors = [], []
    device = vla.action_mean.device
    for batch in inputs:
        x, _ = split_batch(batch, device)
        for i in range(x.shape[0]):
            if len(layers) >= max_samples:
                break
            out = infer(x[i:i + 1])
            chunk = out.chunk if out.chunk is not None else head(out.hidden)
            teacher = vla.head(full_depth(vla, x[i:i + 1]))
            layers.append(len(out.layer_ids))
            errors.append(float((chunk.float() - teacher.float()).abs().mean()))
        if len(layers) >= max_samples:
            break
    return {'mean_layers': float(np.mean(layers)), 'action_error': float(np.mean(errors)),
            'samples': len(layers)}


def curve_ends(hist: dict[str, list[float]]) -> dict[str, Any]:
    """First and last values of each training curve (the JSON stays small)."""
    return {f'{k}_{w}': (v[0] if w == 'first' else v[-1]) for k, v in hist.items() if v
            for w in ('first', 'last')}
