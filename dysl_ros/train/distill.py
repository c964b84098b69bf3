"""Skip-aware two-stage distillation of the DySL parts (dysl-method.md section 3).

The backbone is frozen and is its own teacher (full depth, no skipping).
- Stage 1 (eq. 4): adapters only. One teacher pass gives every layer's input x_j; adapter
  A_j learns to map x_j to the input of the next static layer (the final output for the
  last segment), all adapters in parallel.
- Stage 2 (eqs. 5-6): controllers + adapters. Per segment one dynamic layer j_k is drawn
  (harmonic decay), and the segment output is p * A_j(x_j) + (1 - p) * layers(x_j);
  L2 = L_KD + lambda * mean_k (1 - p_jk).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..layout import Layout
from ..model.config import DySLConfig
from ..model.dysl import DySL
from ..model.io import save_dysl
from ..paths import DISTILL_JSON
from ..validation import require
from .calibrate import module_device
from .optim import (check_optimiser_fields, check_reiterable, cycle, frozen, make_optimizer,
                    pick_device, update)

Head = Callable[[torch.Tensor], torch.Tensor]
DECAYS = ('harmonic', 'linear')


@dataclass(frozen=True)
class DistillConfig:
    """Two-stage distillation of adapters and controllers.

    Args:
        stage1_steps: optimiser steps of stage 1 (adapters only).
        stage2_steps: optimiser steps of stage 2 (controllers + adapters).
        lr: peak AdamW learning rate (RECON: 1e-4).
        warmup_steps: linear warm-up steps before the cosine decay (RECON: a short warm-up).
        min_lr_ratio: the cosine decays to lr * min_lr_ratio (RECON: 0).
        weight_decay: AdamW weight decay (RECON: 0.01).
        grad_clip: maximum global gradient norm; 0 disables clipping.
        lam: lambda, weight of the skip-encouraging term mean_k (1 - p_jk) in L2; sets the
            speed/accuracy trade (RECON form and default). Rule of thumb: with K segments, a
            controller learns to skip where that moves the action chunk by less than about
            lam / (K * action_weight) in mean |a| (normalised units).
        action_weight: weight of the L1 action-chunk term of L_KD when a head is given (RECON).
        relative_mse: divide every hidden-state MSE by the teacher target's mean square, so
            lam and the reported errors do not depend on the hidden-state scale (RECON).
        layer_decay: draw of j_k over positions m = 1..n_k of a segment: 'harmonic'
            P(m) ~ 1/m (FOUND) or 'linear' P(m) ~ n_k + 1 - m (FOUND: also works).
        eval_batches: the first batches of the inputs, measured before and after each stage.
        eval_samples: at most this many samples run the guided (batch 1) measurements.
        seed: seeds the draws of j_k.
        progress: show tqdm progress bars.
    """

    stage1_steps: int = 2000
    stage2_steps: int = 2000
    lr: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    lam: float = 0.1
    action_weight: float = 1.0
    relative_mse: bool = True
    layer_decay: str = 'harmonic'
    eval_batches: int = 4
    eval_samples: int = 32
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.stage1_steps >= 0, 'stage1_steps', self.stage1_steps, '>= 0')
        require(self.stage2_steps >= 0, 'stage2_steps', self.stage2_steps, '>= 0')
        check_optimiser_fields(self)
        require(self.lam >= 0, 'lam', self.lam, '>= 0')
        require(self.action_weight >= 0, 'action_weight', self.action_weight, '>= 0')
        require(self.layer_decay in DECAYS, 'layer_decay', self.layer_decay,
                 f'one of {DECAYS}')
        require(self.eval_batches >= 1, 'eval_batches', self.eval_batches, '>= 1')
        require(self.eval_samples >= 1, 'eval_samples', self.eval_samples, '>= 1')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def harmonic_probs(n: int, decay: str = 'harmonic') -> np.ndarray:
    """P(m) over positions m = 1..n of a segment's dynamic layers (early layers favoured)."""
    require(n >= 1, 'n', n, '>= 1')
    m = np.arange(1, n + 1, dtype=np.float64)
    if decay == 'harmonic':
        w = 1.0 / m
    elif decay == 'linear':
        w = n + 1.0 - m
    else:
        raise ValueError(f'decay={decay!r} is invalid: expected one of {DECAYS}')
    return w / w.sum()


def hidden_mse(pred: torch.Tensor, target: torch.Tensor, relative: bool) -> torch.Tensor:
    """MSE, optionally relative to the (stop-grad) target's mean square."""
    err = F.mse_loss(pred.float(), target.float())
    if relative:
        err = err / target.detach().float().pow(2).mean().clamp_min(1e-12)
    return err


# -- stage 1 -------------------------------------------------------------------------------

def _stage1_loss(dysl: DySL, x: torch.Tensor, relative: bool) -> tuple[torch.Tensor, dict]:
    """Mean over dynamic j of the adapter error, from one teacher pass; also per-layer."""
    with torch.no_grad():
        _, hs = dysl.forward_full(x, collect=True)  # num_layers + 1 tensors (B, T, C)
    errs = {}
    for j in dysl.layout.dynamic:
        target = hs[dysl.layout.segment_of(j).end]  # next static layer's input (stop-grad)
        errs[j] = hidden_mse(dysl.adapters[str(j)](hs[j]), target, relative)
    return torch.stack(list(errs.values())).mean(), errs


@torch.no_grad()
def adapter_error(dysl: DySL, batches: list[torch.Tensor], relative: bool = True
                  ) -> tuple[float, dict[int, float]]:
    """Mean stage-1 adapter error over batches, and per dynamic layer."""
    per = {j: 0.0 for j in dysl.layout.dynamic}
    for x in batches:
        _, errs = _stage1_loss(dysl, x, relative)
        for j, e in errs.items():
            per[j] += float(e) / len(batches)
    return float(np.mean(list(per.values()))), per


def stage1(dysl: DySL, inputs: Iterable[torch.Tensor], cfg: DistillConfig,
           steps: Optional[int] = None) -> dict[str, Any]:
    """Train the adapters only (eq. 4); returns losses and the adapter error start -> end."""
    steps = cfg.stage1_steps if steps is None else int(steps)
    _check(dysl, inputs)
    device = module_device([dysl])
    dysl.freeze_backbone()
    with frozen([dysl.blocks]):
        evals = _eval_batches(inputs, cfg, device)
        start, start_per = adapter_error(dysl, evals, cfg.relative_mse)
        opt, sched = make_optimizer(list(dysl.adapters.parameters()), cfg.lr,
                                    cfg.weight_decay, cfg.warmup_steps, steps, cfg.min_lr_ratio)
        dysl.adapters.train()
        losses = []
        bar = tqdm(range(steps), desc='distill stage 1', disable=not cfg.progress)
        for _, x in zip(bar, cycle(inputs, device)):
            loss, _ = _stage1_loss(dysl, x, cfg.relative_mse)
            update(opt, sched, loss, dysl.adapters.parameters(), cfg.grad_clip)
            losses.append(loss.item())
            bar.set_postfix(loss=f'{losses[-1]:.4g}')
        end, end_per = adapter_error(dysl, evals, cfg.relative_mse)
    return {'steps': steps, 'loss': losses, 'adapter_error_start': start,
            'adapter_error_end': end, 'factor': start / max(end, 1e-12),
            'per_layer_start': start_per, 'per_layer_end': end_per}


# -- stage 2 -------------------------------------------------------------------------------

def draw_picks(dysl: DySL, rng: np.random.Generator, decay: str) -> list[Optional[int]]:
    """One dynamic layer j_k per segment (None where a segment has none)."""
    picks: list[Optional[int]] = []
    for seg in dysl.layout.segments:
        n = len(seg.dynamic)
        if n == 0:
            picks.append(None)
        else:
            m = int(rng.choice(n, p=harmonic_probs(n, decay)))  # position m + 1 of 1..n
            picks.append(seg.static + 1 + m)
    return picks


@torch.no_grad()
def evaluate_skipping(dysl: DySL, batches: list[torch.Tensor], head: Optional[Head] = None,
                      max_samples: int = 32, relative: bool = True) -> dict[str, float]:
    """Guided inference (batch 1) with every allow point at S_k + 1, against the teacher.

    skip_rate: share of segments with dynamic layers that skipped; mean_prob: mean of the
    controller outputs asked; layer_fraction: layers run / L; kd_error: hidden-state MSE
    vs the teacher; action_error: mean |head - teacher head| (with a head); *_all_skip:
    the same errors when every segment skips at its first dynamic layer.
    """
    segs = dysl.layout.segments
    allow = [seg.static + 1 for seg in segs]
    n_dyn = sum(1 for seg in segs if len(seg.dynamic) > 0)
    rows: dict[str, list[float]] = {k: [] for k in (
        'skip_rate', 'mean_prob', 'layer_fraction', 'kd_error', 'action_error',
        'kd_error_all_skip', 'action_error_all_skip')}
    samples = [x[i:i + 1] for x in batches for i in range(x.shape[0])][:max_samples]
    for x in samples:
        teacher, _ = dysl.forward_full(x)
        y, trace = dysl.forward_guided(x, allow)
        y_all, _ = dysl.forward_guided(x, allow, force_skip=True)
        rows['skip_rate'].append(sum(j is not None for j in trace.skipped_at) / max(1, n_dyn))
        rows['mean_prob'].append(float(np.mean(list(trace.probs.values())))
                                 if trace.probs else 0.0)
        rows['layer_fraction'].append(len(trace.layers_run) / dysl.layout.num_layers)
        rows['kd_error'].append(float(hidden_mse(y, teacher, relative)))
        rows['kd_error_all_skip'].append(float(hidden_mse(y_all, teacher, relative)))
        if head is not None:
            a_t = head(teacher)
            rows['action_error'].append(float((head(y) - a_t).abs().mean()))
            rows['action_error_all_skip'].append(float((head(y_all) - a_t).abs().mean()))
    return {k: float(np.mean(v)) for k, v in rows.items() if v}


def stage2(dysl: DySL, inputs: Iterable[torch.Tensor], cfg: DistillConfig,
           steps: Optional[int] = None, head: Optional[Head] = None) -> dict[str, Any]:
    """Train controllers + adapters with the soft segment mix (eqs. 5-6); returns losses,
    mean p, and guided skipping measurements before and after."""
    steps = cfg.stage2_steps if steps is None else int(steps)
    _check(dysl, inputs)
    device = module_device([dysl])
    rng = np.random.default_rng(cfg.seed)
    dysl.freeze_backbone()
    head_guard = frozen([head], 'head') if isinstance(head, nn.Module) else _nullcontext()
    with frozen([dysl.blocks]), head_guard:
        evals = _eval_batches(inputs, cfg, device)
        before = evaluate_skipping(dysl, evals, head, cfg.eval_samples, cfg.relative_mse)
        params = dysl.trainable_parameters()
        opt, sched = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup_steps, steps,
                                    cfg.min_lr_ratio)
        dysl.adapters.train()
        dysl.controllers.train()
        hist: dict[str, list[float]] = {'loss': [], 'kd': [], 'action': [], 'mean_p': []}
        bar = tqdm(range(steps), desc='distill stage 2', disable=not cfg.progress)
        for _, x in zip(bar, cycle(inputs, device)):
            with torch.no_grad():
                teacher, _ = dysl.forward_full(x)  # (B, T, C)
                a_t = head(teacher) if head is not None else None
            y, p = dysl.forward_soft(x, draw_picks(dysl, rng, cfg.layer_decay))  # p (B, K)
            kd = hidden_mse(y, teacher, cfg.relative_mse)
            act = F.l1_loss(head(y).float(), a_t.float()) if a_t is not None else kd.new_zeros(())
            loss = kd + cfg.action_weight * act + cfg.lam * (1.0 - p).mean()
            update(opt, sched, loss, params, cfg.grad_clip)
            hist['loss'].append(loss.item())
            hist['kd'].append(kd.item())
            hist['action'].append(act.item())
            hist['mean_p'].append(p.mean().item())
            bar.set_postfix(loss=f'{loss.item():.4g}', p=f'{p.mean().item():.2f}')
        after = evaluate_skipping(dysl, evals, head, cfg.eval_samples, cfg.relative_mse)
    return {'steps': steps, **hist, 'before': before, 'after': after}


# -- both ----------------------------------------------------------------------------------

def distill(dysl: DySL, inputs: Iterable[torch.Tensor], cfg: DistillConfig,
            head: Optional[Head] = None, joint: bool = False,
            checkpoint_dir: Optional[Path] = None,
            guidance: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Stage 1 then stage 2. joint=True is the 'no stage 1' ablation: adapters and
    controllers trained together from the start for stage1 + stage2 steps, stage-2 loss
    only. With checkpoint_dir, the DySL parts are saved (save_dysl) after each stage."""
    out: dict[str, Any] = {'joint': joint, 'config': cfg.to_dict(), 'stage1': None}
    if not joint:
        out['stage1'] = stage1(dysl, inputs, cfg)
        _save(dysl, checkpoint_dir, guidance)
    steps = cfg.stage2_steps + (cfg.stage1_steps if joint else 0)
    out['stage2'] = stage2(dysl, inputs, cfg, steps, head)
    _save(dysl, checkpoint_dir, guidance)
    return out


# -- helpers -------------------------------------------------------------------------------

def _check(dysl: DySL, inputs: Iterable[torch.Tensor]) -> None:
    check_reiterable(inputs)
    if not dysl.layout.dynamic:
        raise ValueError(f'layout {dysl.layout.static} of {dysl.layout.num_layers} layers has '
                         'no dynamic layers: nothing to distill')


def _eval_batches(inputs: Iterable[torch.Tensor], cfg: DistillConfig,
                  device: torch.device) -> list[torch.Tensor]:
    out = []
    for x in inputs:
        out.append(x.to(device))
        if len(out) == cfg.eval_batches:
            break
    if not out:
        raise ValueError('inputs is empty: need at least one batch')
    return out


def _save(dysl: DySL, directory: Optional[Path], guidance: Optional[dict[str, Any]]) -> None:
    if directory is not None:
        save_dysl(dysl, Path(directory), dict(guidance or {}))


def _nullcontext() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


# -- CLI -----------------------------------------------------------------------------------



def summarise(hist: dict[str, Any]) -> str:
    """Stage-1 factor and stage-2 skipping before -> after, in a few lines."""
    lines = []
    s1 = hist.get('stage1')
    if s1:
        lines.append(f'stage 1: adapter error {s1["adapter_error_start"]:.4g} -> '
                     f'{s1["adapter_error_end"]:.4g} (factor {s1["factor"]:.2f})')
    s2 = hist['stage2']
    for when in ('before', 'after'):
        e = s2[when]
        act = f', action error {e["action_error"]:.4f}' if 'action_error' in e else ''
        lines.append(f'stage 2 {when:6s}: skip rate {e["skip_rate"]:.2f}, layers '
                     f'{e["layer_fraction"]:.2f}, mean p {e["mean_prob"]:.2f}, kd error '
                     f'{e["kd_error"]:.4g}{act}')
    return '\n'.join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m dysl_ros distill`."""
    d, m = DistillConfig(), DySLConfig()
    parser.add_argument('--model-dir', required=True, type=Path,
                        help='trained model folder (vla.json, calibration.json)')
    parser.add_argument('--demos', required=True, type=Path, nargs='+',
                        help='demo folders (gen-demos; the first sets the action statistics)')
    parser.add_argument('--out', type=Path, default=None,
                        help='where dysl.json / dysl.safetensors go (default: --model-dir)')
    parser.add_argument('--stage1-steps', type=int, default=d.stage1_steps)
    parser.add_argument('--stage2-steps', type=int, default=d.stage2_steps)
    parser.add_argument('--lr', type=float, default=d.lr)
    parser.add_argument('--lam', type=float, default=d.lam,
                        help='lambda: weight of the skip-encouraging term')
    parser.add_argument('--action-weight', type=float, default=d.action_weight)
    parser.add_argument('--layer-decay', choices=DECAYS, default=d.layer_decay)
    parser.add_argument('--adapter-rank', type=int, default=m.adapter_rank)
    parser.add_argument('--controller-width', type=int, default=m.controller_width)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--batches-per-pass', type=int, default=64,
                        help='embedded batches drawn per pass over the inputs')
    parser.add_argument('--joint', action='store_true',
                        help="ablation 'no stage 1': adapters and controllers together")
    parser.add_argument('--seed', type=int, default=d.seed)
    parser.add_argument('--device', default='auto', help="'auto' (CUDA if present), cpu, cuda")
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    """Distill the DySL parts of a trained, calibrated VLA; writes dysl.* and distill.json."""
    from ..model.io import load_vla, write_json
    from .calibrate import (CALIBRATION_JSON, calibrate_model, format_calibration,
                            read_calibration)
    from .dataset import DemoDataset, EmbeddedBatches, load_demos
    model_dir = Path(args.model_dir)
    out = Path(args.out) if args.out is not None else model_dir
    torch.manual_seed(args.seed)
    vla = load_vla(model_dir, map_location=str(pick_device(args.device)))
    episodes, stats = load_demos(args.demos)
    dataset = DemoDataset.for_model(episodes, stats, vla)
    del episodes
    if (model_dir / CALIBRATION_JSON).is_file():
        calib = read_calibration(model_dir)
    else:
        print(f'{model_dir / CALIBRATION_JSON} is missing: calibrating with the defaults')
        calib = calibrate_model(vla, dataset, seed=args.seed, progress=not args.quiet)
        write_json(model_dir / CALIBRATION_JSON, calib)
        print(format_calibration(calib))
    layout = Layout.from_dict(calib['layout'])
    dysl_cfg = DySLConfig(static_ratio=float(calib['ratio']),
                          first_layer_static=bool(calib['first_layer_static']),
                          adapter_rank=args.adapter_rank,
                          controller_width=args.controller_width)
    dysl = DySL(vla.blocks, vla.cfg.d_model, layout, dysl_cfg).to(vla.action_mean.device)
    cfg = DistillConfig(stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                        lr=args.lr, lam=args.lam, action_weight=args.action_weight,
                        layer_decay=args.layer_decay, seed=args.seed, progress=not args.quiet)
    inputs = EmbeddedBatches(vla, dataset, args.batch_size, args.batches_per_pass, args.seed)
    start = time.perf_counter()
    hist = distill(dysl, inputs, cfg, head=vla.head, joint=args.joint, checkpoint_dir=out,
                   guidance=calib['guidance'])
    # The budget the baselines get (train-baselines reads it) and the parts' size.
    budget = {'batch_size': args.batch_size, 'batches_per_pass': args.batches_per_pass,
              'train_seconds': time.perf_counter() - start,
              'trainable_parameters': dysl.num_trainable(),
              'parts_fraction': dysl.parts_fraction()}
    write_json(out / DISTILL_JSON, {**hist, **budget, 'model_dir': str(model_dir),
                                    'demos': [str(d) for d in args.demos], 'layout': layout.to_dict(),
                                    'dysl_config': dysl_cfg.to_dict()})
    print(summarise(hist))
    print(f'DySL parts: {budget["trainable_parameters"]:,} parameters, '
          f'{100 * budget["parts_fraction"]:.2f}% of the backbone blocks; '
          f'{budget["train_seconds"] / 60:.1f} min')
    print(f'wrote {out}')
    return 0
