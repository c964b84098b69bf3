"""FlexiDepth: routers + adapters on the frozen backbone, L_task + alpha * (sum_l g_l)^2,
then the routers' threshold solved so that the mean layers run match DySL's."""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F

from ...model.baselines import FlexiDepth, FlexiDepthConfig, save_baseline
from ...model.vla import VLA
from ..optim import check_reiterable
from .common import (Batch, BaselineTrainConfig, Job, curve_ends, evaluate, split_batch,
                     task_target, train_loop)

BUDGET_BATCHES = 8  # batches the threshold is solved on


def train_flexidepth(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig,
                     model_cfg: FlexiDepthConfig = FlexiDepthConfig(),
                     target_layers: Optional[float] = None
                     ) -> tuple[FlexiDepth, dict[str, Any]]:
    """Routers + adapters on every layer: L = L1(chunk, target) + alpha * (sum_l g_l)^2.
    With target_layers, the routers' threshold is then set to run that many layers."""
    check_reiterable(inputs)
    fd = FlexiDepth(vla.blocks, vla.cfg.d_model, model_cfg).to(vla.action_mean.device)
    params = fd.trainable_parameters()

    def step(x: torch.Tensor, y: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        target = task_target(vla, x, y)
        h, g = fd.forward_train(x, cfg.flexi_hard)  # (B, T, C), (B, L)
        task = F.l1_loss(vla.head(h).float(), target.float())
        loss = task + cfg.flexi_alpha * g.sum(dim=1).pow(2).mean()
        return {'loss': loss, 'task': task, 'mean_gates': g.sum(dim=1).mean()}

    hist = train_loop(vla, inputs, cfg, params, [fd.routers, fd.adapters], 'flexidepth', step,
                      show=('mean_gates', 'g'))
    fd.eval()
    budget = {}
    if target_layers is not None:
        budget = {'target_layers': float(target_layers),
                  'threshold': solve_threshold(fd, inputs, target_layers)}
    ev = evaluate(vla, inputs, cfg.eval_samples, fd.infer, vla.head)
    return fd, {'steps': cfg.steps, **curve_ends(hist), **budget, 'eval': ev,
                'trainable_parameters': fd.num_trainable()}


@torch.no_grad()
def mean_layers_at(fd: FlexiDepth, xs: list[torch.Tensor], threshold: float) -> float:
    """Mean layers run per sample over the batches xs with the routers' threshold set to
    `threshold` (the hard training pass takes inference's decisions)."""
    fd.cfg = dataclasses.replace(fd.cfg, threshold=threshold)
    runs = [(fd.forward_train(x, hard=True)[1] > threshold).sum(dim=1).float() for x in xs]
    return float(torch.cat(runs).mean())


def solve_threshold(fd: FlexiDepth, inputs: Iterable[Batch], target_layers: float) -> float:
    """Set (and return) the router threshold in (0, 1) whose mean layers run on the first
    batches of inputs is closest to target_layers (layers fall as the threshold rises)."""
    device = next(fd.routers.parameters()).device
    xs = [split_batch(b, device)[0] for b in itertools.islice(inputs, BUDGET_BATCHES)]
    lo, hi = 1e-4, 1.0 - 1e-4
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if mean_layers_at(fd, xs, mid) > target_layers:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda t: abs(mean_layers_at(fd, xs, t) - target_layers))
    mean_layers_at(fd, xs, best)  # leaves fd.cfg at the chosen threshold
    return best


def make(job: Job, name: str, out_dir: Path) -> dict[str, Any]:
    """Train FlexiDepth with DySL's adapter rank and controller width on the demo pairs, set
    its threshold to DySL's mean layers, save."""
    parts = FlexiDepthConfig(router_width=job.dysl_cfg.controller_width,
                             adapter_rank=job.dysl_cfg.adapter_rank)
    module, info = train_flexidepth(job.vla, job.pairs, job.cfg, parts, job.target_layers)
    save_baseline(module, out_dir, {'train': info, 'config': job.cfg.to_dict()})
    return info
