"""Static depth: keep the k layers with the lowest s_l, fine-tune them and a head with the
task loss + output distillation from the full model; k = round(DySL's mean layers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...model.baselines import StaticDepth, save_baseline
from ...model.vla import VLA
from ...validation import require
from ..calibrate import CALIBRATION_JSON, layer_similarity, read_calibration
from ..distill import hidden_mse
from ..optim import check_reiterable
from .common import (Batch, BaselineTrainConfig, Job, curve_ends, evaluate, full_depth,
                     split_batch, train_loop)


def keep_layers(similarity: np.ndarray, k: int) -> list[int]:
    """The k layers with the lowest s_l (ties to the earlier layer), in execution order."""
    s = np.asarray(similarity, dtype=np.float64)
    require(1 <= k <= s.size, 'k', k, f'1..{s.size}')
    return sorted(np.argsort(s, kind='stable')[:k].tolist())


def train_static_depth(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig, k: int,
                       similarity: Optional[np.ndarray] = None
                       ) -> tuple[StaticDepth, dict[str, Any]]:
    """Keep the k lowest-s_l layers; fine-tune their copies and a head copy with
    L1(chunk, target) + distill_weight * (MSE(h, h_teacher) + L1(chunk, chunk_teacher))."""
    check_reiterable(inputs)
    device = vla.action_mean.device
    if similarity is None:
        similarity = layer_similarity(vla.blocks, [split_batch(b, device)[0] for b in inputs],
                                      progress=cfg.progress)
    kept = keep_layers(similarity, k)
    sd = StaticDepth.from_vla(vla, kept).to(device)
    params = sd.trainable_parameters()

    def step(x: torch.Tensor, y: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            h_t = full_depth(vla, x)  # (B, T, C)
            a_t = vla.head(h_t)  # (B, H, D)
        h = sd(x)
        chunk = sd.head(h).float()
        task = F.l1_loss(chunk, (a_t if y is None else y).float())
        kd = hidden_mse(h, h_t, cfg.relative_mse) + F.l1_loss(chunk, a_t.float())
        return {'loss': task + cfg.distill_weight * kd, 'task': task, 'distill': kd}

    hist = train_loop(vla, inputs, cfg, params, [sd], 'static depth', step)
    sd.eval()
    ev = evaluate(vla, inputs, cfg.eval_samples, sd.infer, sd.head)
    return sd, {'steps': cfg.steps, 'kept': kept,
                'similarity': [float(v) for v in similarity], **curve_ends(hist), 'eval': ev,
                'trainable_parameters': sd.num_trainable()}


def make(job: Job, name: str, out_dir: Path) -> dict[str, Any]:
    """k = round(target layers); fine-tune the kept layers and save."""
    k = int(min(job.vla.cfg.n_layers, max(1, round(job.target_layers))))
    module, info = train_static_depth(job.vla, job.pairs, job.cfg, k,
                                      stored_similarity(job.model_dir))
    save_baseline(module, out_dir, {'train': info, 'config': job.cfg.to_dict(),
                                    'target_layers': job.target_layers})
    return info


def stored_similarity(model_dir: Path) -> Optional[np.ndarray]:
    """s_l from calibrate's calibration.json when it is there (saves a pass over the demos)."""
    if not (Path(model_dir) / CALIBRATION_JSON).is_file():
        return None
    return np.asarray(read_calibration(model_dir)['similarity'], dtype=np.float64)
