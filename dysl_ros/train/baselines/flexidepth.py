"""FlexiDepth: routers + adapters on the frozen backbone, L_task + alpha * (sum_l g_l)^2.

Its layer budget is set by alpha (`train-baselines --alpha`, chosen on the validation split
so that its mean layers match DySL's), not by moving the router threshold after training:
trained with hard decisions at 0.5, the routers' outputs crowd near it, and a threshold
moved to 0.57 to run 10 of 24 layers on demo observations failed every closed-loop episode
(RECON)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F

from ...model.baselines import FlexiDepth, FlexiDepthConfig, save_baseline
from ...model.vla import VLA
from ..optim import check_reiterable
from .common import Batch, BaselineTrainConfig, Job, curve_ends, evaluate, task_target, train_loop


def train_flexidepth(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig,
                     model_cfg: FlexiDepthConfig = FlexiDepthConfig()
                     ) -> tuple[FlexiDepth, dict[str, Any]]:
    """Routers + adapters on every layer: L = L1(chunk, target) + alpha * (sum_l g_l)^2."""
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
    ev = evaluate(vla, inputs, cfg.eval_samples, fd.infer, vla.head)
    return fd, {'steps': cfg.steps, 'alpha': cfg.flexi_alpha, **curve_ends(hist), 'eval': ev,
                'trainable_parameters': fd.num_trainable()}


def make(job: Job, name: str, out_dir: Path) -> dict[str, Any]:
    """Train FlexiDepth with DySL's adapter rank and controller width on the demo pairs and
    save it (alpha, from the config, sets its layer budget)."""
    parts = FlexiDepthConfig(router_width=job.dysl_cfg.controller_width,
                             adapter_rank=job.dysl_cfg.adapter_rank)
    module, info = train_flexidepth(job.vla, job.pairs, job.cfg, parts)
    save_baseline(module, out_dir, {'train': info, 'config': job.cfg.to_dict()})
    return info
