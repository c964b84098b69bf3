"""DeeR: an adapter per early exit (DySL's rank) trained under the VLA's frozen head;
thresholds eta_i solved on demonstration observations so that a target share of steps exits
at each stage (shares decay geometrically, as in DeeR, and average to DySL's mean executed
layers)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...model.baselines import DeeR, DeeRConfig, chunk_distance, save_baseline
from ...model.vla import VLA
from ..optim import check_reiterable
from .common import Batch, BaselineTrainConfig, Job, curve_ends, evaluate, split_batch, train_loop


def deer_shares(stage_layers: Sequence[int], target_layers: float) -> np.ndarray:
    """Share of steps exiting at each stage, q_s ~ lam^s (DeeR's geometric budget), with
    lam solved so that sum_s q_s * stage_layers[s] = target_layers (clamped to the range)."""
    layers = np.asarray(stage_layers, dtype=np.float64)  # (S,)
    if layers.ndim != 1 or layers.size == 0 or np.any(np.diff(layers) <= 0):
        raise ValueError(f'stage_layers={list(stage_layers)} is invalid: expected increasing')
    out = np.zeros_like(layers)
    if target_layers <= layers[0] or layers.size == 1:
        out[0] = 1.0
        return out
    if target_layers >= layers[-1]:
        out[-1] = 1.0
        return out
    s = np.arange(layers.size, dtype=np.float64)

    def shares(log_lam: float) -> np.ndarray:
        z = s * log_lam
        w = np.exp(z - z.max())
        return w / w.sum()

    lo, hi = -60.0, 60.0  # expected layers rise with lam
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(shares(mid) @ layers) < target_layers:
            lo = mid
        else:
            hi = mid
    return shares(0.5 * (lo + hi))


def solve_deer_thresholds(diffs: np.ndarray, shares: Sequence[float]) -> list[float]:
    """eta per decision exit so that, walking the exits in order, a share[s] of all samples
    exits at decision s (diffs (N, S-1): distance of each exit's chunk to the previous one;
    shares (S,): the last stage takes whatever remains)."""
    d = np.asarray(diffs, dtype=np.float64)
    q = np.asarray(shares, dtype=np.float64)
    if d.ndim != 2 or q.shape != (d.shape[1] + 1,):
        raise ValueError(f'diffs {d.shape} and shares {q.shape} do not fit: expected (N, S-1) '
                         'and (S,)')
    if np.any(q < 0) or not math.isclose(float(q.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f'shares={q.tolist()} is invalid: expected non-negative, summing to 1')
    n = d.shape[0]
    remaining = np.arange(n)
    cum = np.cumsum(q)
    thresholds = []
    for s in range(d.shape[1]):
        want = int(round(cum[s] * n)) - (n - remaining.size)  # exits at this stage
        col = d[remaining, s]
        if want <= 0 or col.size == 0:
            eta = 0.0
        elif want >= col.size:
            eta = float(col.max()) * 2.0 + 1e-6
        else:
            srt = np.sort(col)
            eta = float(0.5 * (srt[want - 1] + srt[want]))
        thresholds.append(eta)
        remaining = remaining[~(col < eta)]
    return thresholds


@torch.no_grad()
def exit_differences(deer: DeeR, inputs: Iterable[Batch]) -> np.ndarray:
    """(N, decisions) chunk_distance between consecutive exits, over every input sample."""
    rows = []
    device = next(deer.head.parameters()).device
    for batch in inputs:
        x, _ = split_batch(batch, device)
        chunks = [deer.exit_chunk(i, h) for i, h in enumerate(deer.exit_hiddens(x))]
        d = [chunk_distance(chunks[i], chunks[i - 1]) for i in range(1, len(chunks) - 1)]
        rows.append(torch.stack(d, dim=1) if d else x.new_zeros(x.shape[0], 0))
    return torch.cat(rows).double().cpu().numpy()


def train_deer(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig,
               target_layers: float, model_cfg: DeeRConfig = DeeRConfig()
               ) -> tuple[DeeR, dict[str, Any]]:
    """Train the exit adapters (mean L1 over the early exits), then solve eta_i on the
    inputs."""
    check_reiterable(inputs)
    deer = DeeR.from_vla(vla, model_cfg).to(vla.action_mean.device)
    params = deer.trainable_parameters()

    def step(x: torch.Tensor, y: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            hs = deer.exit_hiddens(x)  # exits x (B, T, C)
            target = y if y is not None else vla.head(hs[-1])
        return {'loss': torch.stack([F.l1_loss(deer.exit_chunk(i, h).float(), target.float())
                                     for i, h in enumerate(hs[:-1])]).mean()}

    hist = train_loop(vla, inputs, cfg, params, [deer.adapters], 'deer exits', step)
    deer.eval()
    diffs = exit_differences(deer, inputs)
    shares = deer_shares(deer.exits[1:], target_layers)
    deer.set_thresholds(solve_deer_thresholds(diffs, shares))
    ev = evaluate(vla, inputs, cfg.eval_samples, deer.infer, None)
    return deer, {'steps': cfg.steps, **curve_ends(hist), 'target_layers': float(target_layers),
                  'shares': shares.tolist(), 'eval': ev,
                  'trainable_parameters': deer.num_trainable()}


def make(job: Job, name: str, out_dir: Path) -> dict[str, Any]:
    """Train the exit adapters at DySL's adapter rank, solve the thresholds for the target
    layers, save."""
    module, info = train_deer(job.vla, job.pairs, job.cfg, job.target_layers,
                              DeeRConfig(adapter_rank=job.dysl_cfg.adapter_rank))
    save_baseline(module, out_dir, {'train': info, 'config': job.cfg.to_dict()})
    return info
