"""Behaviour cloning of the default VLA from expert demonstrations (full depth).

AdamW + warm-up/cosine, CPU or CUDA picked automatically, resumable: every
`checkpoint_every` steps (and when a time limit stops a run) `<out>/checkpoint/` holds the
model (safetensors + json), the optimiser state (safetensors + json) and the step, the
sampling RNG and the history (json). Rerunning the same command continues exactly where
the last one stopped. The finished model is written to `<out>` with save_vla.

    python -m dysl_ros train-bc --demos data/demos --out models/default --time-limit 540
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..datasets import read_index
from ..model.config import VLAConfig, from_dict
from ..model.io import VLA_JSON, load_vla, read_json, read_tensors, save_vla, write_json
from ..model.vla import VLA
from ..validation import require
from .dataset import (ACTION_MIN_STD, DemoDataset, augment_images, demo_cameras,
                      demo_folders, demo_instructions, demo_tokenizer, load_demos)
from .optim import check_optimiser_fields, cosine_factor, pick_device

CHECKPOINT = 'checkpoint'
OPTIM_WEIGHTS, OPTIM_JSON, STATE_WEIGHTS, STATE_JSON = (
    'optim.safetensors', 'optim.json', 'state.safetensors', 'state.json')
BC_JSON = 'bc.json'
LOSSES = ('l1', 'mse')
# Fields that may change between a run and its resumption.
RESUMABLE_CHANGES = ('steps', 'checkpoint_every', 'eval_every', 'progress')


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning of the full-depth VLA.

    Args:
        steps: total optimiser steps.
        batch_size: samples per step, drawn uniformly over every step of every episode.
        lr: peak AdamW learning rate.
        warmup_steps: linear warm-up steps before the cosine decay.
        min_lr_ratio: the cosine decays to lr * min_lr_ratio.
        weight_decay: AdamW weight decay on matrices and embeddings (not biases or norms).
        grad_clip: maximum global gradient norm; 0 disables clipping.
        loss: 'l1' (ACT-style) or 'mse' on normalised actions.
        mask_padded: leave chunk steps past the episode end out of the loss (LeRobot style);
            False trains them to repeat the last action.
        augment: light image augmentation (random shift, brightness, contrast).
        shift_pixels: maximum random shift in pixels.
        brightness: brightness jitter, +- this in [0, 1] pixel units.
        contrast: contrast jitter, x (1 +- this).
        val_fraction: share of episodes held out for the validation loss (0: none).
        val_samples: at most this many held-out samples per validation pass.
        eval_every: steps between validation passes (and history entries).
        checkpoint_every: steps between checkpoints.
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        model_action_stats: normalise actions with the statistics the model already holds
            (fine-tuning a trained model) instead of the first demo folder's.
        seed: seeds initialisation-independent randomness: split, sampling, augmentation.
        progress: show tqdm progress bars.
    """

    steps: int = 20000
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    loss: str = 'l1'
    mask_padded: bool = True
    augment: bool = True
    shift_pixels: int = 3
    brightness: float = 0.1
    contrast: float = 0.1
    val_fraction: float = 0.05
    val_samples: int = 512
    eval_every: int = 500
    checkpoint_every: int = 1000
    amp: bool = True
    model_action_stats: bool = False
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.steps >= 1, 'steps', self.steps, '>= 1')
        require(self.batch_size >= 1, 'batch_size', self.batch_size, '>= 1')
        check_optimiser_fields(self)
        require(self.loss in LOSSES, 'loss', self.loss, f'one of {LOSSES}')
        require(self.shift_pixels >= 0, 'shift_pixels', self.shift_pixels, '>= 0')
        require(0 <= self.brightness < 1, 'brightness', self.brightness, 'in [0, 1)')
        require(0 <= self.contrast < 1, 'contrast', self.contrast, 'in [0, 1)')
        require(0.0 <= self.val_fraction < 1.0, 'val_fraction', self.val_fraction,
                'in [0, 1)')
        require(self.val_samples >= 1, 'val_samples', self.val_samples, '>= 1')
        require(self.eval_every >= 1, 'eval_every', self.eval_every, '>= 1')
        require(self.checkpoint_every >= 1, 'checkpoint_every', self.checkpoint_every, '>= 1')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def split_episodes(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) episode indices; at least one of each when n >= 2 and
    val_fraction > 0."""
    n_val = 0 if n < 2 or val_fraction <= 0 else min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def chunk_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str,
               use_mask: bool) -> torch.Tensor:
    """Mean L1 / squared error over the (masked) chunk steps: (B, H, D), (B, H, D), (B, H)."""
    err = (pred.float() - target).abs() if kind == 'l1' else (pred.float() - target).pow(2)
    if not use_mask:
        return err.mean()
    w = mask.to(err.dtype).unsqueeze(-1)  # (B, H, 1)
    return (err * w).sum() / (w.sum() * err.shape[-1]).clamp_min(1.0)


def train_bc(vla: VLA, demos_dir: str | os.PathLike | Sequence[str | os.PathLike],
             out_dir: str | os.PathLike,
             cfg: BCConfig = BCConfig(), device: str = 'auto', resume: bool = True,
             time_limit_s: Optional[float] = None, stop_after: Optional[int] = None,
             init_from: Optional[str | os.PathLike] = None,
             half_weights: bool = False) -> dict[str, Any]:
    """Train `vla` on the demonstrations; returns the history (also written to bc.json).

    A run stops early, with a checkpoint, after time_limit_s seconds or stop_after steps
    of this call; with resume, a later call continues from `<out>/checkpoint`. init_from
    names the saved model a fine-tuning run started from, for the history; half_weights
    writes the finished model's parameters in float16 (save_vla).
    """
    out_dir = Path(out_dir)
    dev = pick_device(device)
    episodes, stats = load_demos(demos_dir)
    if cfg.model_action_stats:
        stats = {'mean': vla.action_mean.cpu().numpy(), 'std': vla.action_std.cpu().numpy()}
    train_ids, val_ids = split_episodes(len(episodes), cfg.val_fraction, cfg.seed)
    train_ds = DemoDataset.for_model([episodes[i] for i in train_ids], stats, vla)
    val_ds = (DemoDataset.for_model([episodes[i] for i in val_ids], stats, vla)
              if val_ids else None)
    del episodes  # the datasets hold their own (resized) copy of the frames
    vla.set_action_stats(stats['mean'], stats['std'], min_std=ACTION_MIN_STD)
    vla.to(dev).train()

    decay = [p for p in vla.parameters() if p.dim() >= 2]
    no_decay = [p for p in vla.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg.weight_decay},
                             {'params': no_decay, 'weight_decay': 0.0}], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    state: dict[str, Any] = {'step': 0, 'loss': [], 'evals': []}
    ckpt = out_dir / CHECKPOINT
    if resume and (ckpt / STATE_JSON).is_file():
        state = _load_checkpoint(ckpt, vla, opt, gen, cfg)
        vla.to(dev).train()
    use_amp = cfg.amp and dev.type == 'cuda'
    start_step, t0 = state['step'], time.perf_counter()
    stopped = False
    bar = tqdm(total=cfg.steps, initial=start_step, desc='train-bc', disable=not cfg.progress)
    step = start_step
    while step < cfg.steps:
        if ((time_limit_s is not None and time.perf_counter() - t0 > time_limit_s)
                or (stop_after is not None and step - start_step >= stop_after)):
            stopped = True
            break
        for g in opt.param_groups:
            g['lr'] = cfg.lr * cosine_factor(step, cfg.steps, cfg.warmup_steps,
                                             cfg.min_lr_ratio)
        idx = torch.randint(len(train_ds), (cfg.batch_size,), generator=gen).numpy()
        b = {k: v.to(dev) for k, v in train_ds.batch(idx).items()}
        images = b['images']
        if cfg.augment:
            images = augment_images(images, gen, cfg.shift_pixels, cfg.brightness, cfg.contrast)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=use_amp):
            pred = vla(images, b['tokens'])  # (B, H, D)
        loss = chunk_loss(pred, b['actions'], b['mask'], cfg.loss, cfg.mask_padded)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'non-finite BC loss at step {step}: lower lr')
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(vla.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        state['loss'].append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f'{state["loss"][-1]:.4f}')
        if step % cfg.eval_every == 0 or step == cfg.steps:
            state['evals'].append(_evaluate(vla, val_ds, cfg, step, state['loss'], use_amp))
            if cfg.progress:
                tqdm.write(_eval_line(state['evals'][-1]))
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            state['step'] = step
            _save_checkpoint(ckpt, vla, opt, gen, cfg, state)
    bar.close()
    state['step'] = step
    complete = step >= cfg.steps
    _save_checkpoint(ckpt, vla, opt, gen, cfg, state)
    vla.eval()
    if complete:
        save_vla(vla, out_dir, half=half_weights)
    summary = {'complete': complete, 'step': step, 'steps': cfg.steps, 'stopped': stopped,
               'config': cfg.to_dict(), 'demos': demo_folders(demos_dir),
               'init_from': _provenance(init_from), 'device': str(dev),
               'train_episodes': len(train_ids), 'val_episodes': len(val_ids),
               'train_samples': len(train_ds), 'loss': state['loss'], 'evals': state['evals']}
    write_json(out_dir / BC_JSON, summary)
    return summary


def _provenance(init_from: Optional[str | os.PathLike]) -> Optional[dict[str, Any]]:
    """The starting model of a fine-tuning run and, from its bc.json, how it was trained."""
    if init_from is None:
        return None
    path = Path(init_from) / BC_JSON
    prior = read_json(path) if path.is_file() else {}
    return {'model': str(init_from), 'steps': prior.get('steps'), 'demos': prior.get('demos'),
            'init_from': prior.get('init_from')}


@torch.no_grad()
def _evaluate(vla: VLA, val_ds: Optional[DemoDataset], cfg: BCConfig, step: int,
              losses: list[float], use_amp: bool) -> dict[str, Any]:
    recent = losses[-cfg.eval_every:]
    row: dict[str, Any] = {'step': step, 'train_loss': float(np.mean(recent))}
    if val_ds is None:
        return row
    vla.eval()
    dev = vla.action_mean.device
    n = min(len(val_ds), cfg.val_samples)
    idx = np.linspace(0, len(val_ds) - 1, n).round().astype(np.int64)
    total, count = 0.0, 0
    for s in range(0, n, cfg.batch_size):
        b = {k: v.to(dev) for k, v in val_ds.batch(idx[s:s + cfg.batch_size]).items()}
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=use_amp):
            pred = vla(b['images'], b['tokens'])  # (B, H, D)
        total += chunk_loss(pred, b['actions'], b['mask'], cfg.loss, cfg.mask_padded).item() \
            * len(b['tokens'])
        count += len(b['tokens'])
    vla.train()
    row['val_loss'] = total / count
    return row


def _eval_line(row: dict[str, Any]) -> str:
    val = f', val {row["val_loss"]:.4f}' if 'val_loss' in row else ''
    return f'step {row["step"]}: train {row["train_loss"]:.4f}{val}'


# -- checkpoints (no pickle: safetensors + json) -------------------------------------------

def _save_checkpoint(ckpt: Path, vla: VLA, opt: torch.optim.Optimizer, gen: torch.Generator,
                     cfg: BCConfig, state: dict[str, Any]) -> None:
    """Write the checkpoint into a fresh folder, then swap it in (never half-written)."""
    tmp = ckpt.with_name(ckpt.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    save_vla(vla, tmp)
    sd = opt.state_dict()
    tensors = {f'{pid}.{k}': (v if torch.is_tensor(v) else torch.tensor(v)).detach()
               .contiguous().cpu() for pid, st in sd['state'].items() for k, v in st.items()}
    if tensors:
        save_file(tensors, str(tmp / OPTIM_WEIGHTS))
    write_json(tmp / OPTIM_JSON, {'param_groups': sd['param_groups'],
                                  'keys': sorted(tensors)})
    save_file({'rng': gen.get_state()}, str(tmp / STATE_WEIGHTS))
    write_json(tmp / STATE_JSON, {'config': cfg.to_dict(), **state})
    old = ckpt.with_name(ckpt.name + '.old')
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt: Path, vla: VLA, opt: torch.optim.Optimizer, gen: torch.Generator,
                     cfg: BCConfig) -> dict[str, Any]:
    state = read_json(ckpt / STATE_JSON)
    saved = dict(state.pop('config'))
    defaults = BCConfig().to_dict()  # a field newer than the checkpoint had its default
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v)
    if changed:
        raise ValueError(f'{ckpt}: cannot resume with changed settings '
                         f'{ {k: (saved.get(k), getattr(cfg, k)) for k in changed} }; '
                         'use the same settings or start a new --out (or --no-resume)')
    meta = read_json(ckpt / VLA_JSON)
    if from_dict(VLAConfig, meta['config']) != vla.cfg or list(meta['vocab']) != list(
            vla.tokenizer.vocab):
        raise ValueError(f'{ckpt}: the checkpoint is of a different model (config or '
                         'vocabulary); use the same model settings or a new --out')
    vla.load_state_dict(read_tensors(ckpt / 'vla.safetensors'), strict=True)
    om = read_json(ckpt / OPTIM_JSON)
    flat = read_tensors(ckpt / OPTIM_WEIGHTS) if om['keys'] else {}
    osd: dict[str, Any] = {'state': {}, 'param_groups': om['param_groups']}
    for key, v in flat.items():
        pid, name = key.split('.', 1)
        osd['state'].setdefault(int(pid), {})[name] = v
    opt.load_state_dict(osd)
    gen.set_state(read_tensors(ckpt / STATE_WEIGHTS)['rng'])
    return state


def fine_tune_start(model_dir: str | os.PathLike,
                    demos_dir: Sequence[str | os.PathLike]) -> VLA:
    """The saved VLA in `model_dir`, checked against the demonstrations it will be tuned on:
    the same cameras and no instruction word outside its vocabulary."""
    vla = load_vla(Path(model_dir))
    for d in demos_dir:
        cameras, _ = demo_cameras(d)
        if tuple(cameras) != tuple(vla.cfg.cameras):
            raise ValueError(f'{d}: demos recorded with cameras {list(cameras)}, but the model '
                             f'in {model_dir} takes {list(vla.cfg.cameras)}')
        unknown = sorted({w for text in demo_instructions(d)
                          for w in vla.tokenizer.unknown_words(text)})
        if unknown:
            raise ValueError(f'{d}: instruction words {unknown} are not in the vocabulary of '
                             f'{model_dir}; train a new model instead of fine-tuning')
    return vla.train()


# -- CLI -----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m dysl_ros train-bc`."""
    d, m = BCConfig(), VLAConfig()
    parser.add_argument('--demos', required=True, type=Path, nargs='+',
                        help='demo folders (gen-demos); the first one\'s action statistics '
                             'normalise, later ones (recovery demos) add episodes')
    parser.add_argument('--out', required=True, type=Path, help='model folder to write')
    parser.add_argument('--steps', type=int, default=d.steps)
    parser.add_argument('--batch-size', type=int, default=d.batch_size)
    parser.add_argument('--lr', type=float, default=d.lr)
    parser.add_argument('--warmup-steps', type=int, default=d.warmup_steps)
    parser.add_argument('--weight-decay', type=float, default=d.weight_decay)
    parser.add_argument('--loss', choices=LOSSES, default=d.loss)
    parser.add_argument('--no-augment', action='store_true', help='no image augmentation')
    parser.add_argument('--val-fraction', type=float, default=d.val_fraction)
    parser.add_argument('--eval-every', type=int, default=d.eval_every)
    parser.add_argument('--checkpoint-every', type=int, default=d.checkpoint_every)
    parser.add_argument('--seed', type=int, default=d.seed)
    parser.add_argument('--n-layers', type=int, default=m.n_layers)
    parser.add_argument('--d-model', type=int, default=m.d_model)
    parser.add_argument('--n-heads', type=int, default=m.n_heads)
    parser.add_argument('--chunk-size', type=int, default=None,
                        help=f'actions per pass (default {m.chunk_size}); with --init-from, '
                             'a new length grows or trims the model\'s action queries')
    parser.add_argument('--patch-size', type=int, default=m.patch_size)
    parser.add_argument('--image-size', type=int, default=None,
                        help='model resolution (default: the demos\' resolution)')
    parser.add_argument('--device', default='auto', help="'auto' (CUDA if present), cpu, cuda")
    parser.add_argument('--time-limit', type=float, default=None, metavar='SECONDS',
                        help='stop with a checkpoint after this long; rerun to resume')
    parser.add_argument('--no-resume', action='store_true',
                        help='start over even if <out>/checkpoint exists')
    parser.add_argument('--init-from', type=Path, default=None, metavar='MODEL',
                        help='fine-tune: start from this saved VLA (its weights, settings, '
                             'vocabulary and action statistics) with a fresh optimiser and '
                             'schedule; --n-layers, --d-model, --n-heads, --patch-size and '
                             '--image-size are then ignored')
    parser.add_argument('--half-weights', action='store_true',
                        help='write the finished model\'s parameters in float16: half the '
                             'file, for a model kept in git (loading converts to float32)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the VLA; returns 0 (also when a time limit stopped the run)."""
    cfg = BCConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                   loss=args.loss, augment=not args.no_augment, val_fraction=args.val_fraction,
                   eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                   model_action_stats=args.init_from is not None, seed=args.seed,
                   progress=not args.quiet)
    ckpt = Path(args.out) / CHECKPOINT
    if not args.no_resume and (ckpt / STATE_JSON).is_file():
        vla = load_vla(ckpt)
        print(f'resuming from {ckpt} (model settings come from the checkpoint)')
    elif args.init_from is not None:
        vla = fine_tune_start(args.init_from, args.demos)
        if args.chunk_size not in (None, vla.cfg.chunk_size):
            print(f'chunk size {vla.cfg.chunk_size} -> {args.chunk_size}')
            vla = vla.with_chunk_size(args.chunk_size)
        print(f'fine-tuning {args.init_from} (other model settings come from it)')
    else:
        cameras, size = demo_cameras(args.demos[0])
        vcfg = VLAConfig(image_size=args.image_size or size, cameras=cameras,
                         action_names=tuple(read_index(args.demos[0])['action_names']),
                         patch_size=args.patch_size, d_model=args.d_model,
                         n_layers=args.n_layers, n_heads=args.n_heads,
                         chunk_size=args.chunk_size or VLAConfig().chunk_size)
        torch.manual_seed(args.seed)
        instructions = [i for d in args.demos for i in demo_instructions(d)]
        vla = VLA(vcfg, demo_tokenizer(instructions, vcfg.max_instruction_tokens))
    out = train_bc(vla, args.demos, args.out, cfg, device=args.device,
                   resume=not args.no_resume, time_limit_s=args.time_limit,
                   init_from=args.init_from, half_weights=args.half_weights)
    last = out['evals'][-1] if out['evals'] else None
    if out['complete']:
        print(f'trained {out["steps"]} steps; wrote {args.out}'
              + (f' ({_eval_line(last)})' if last else ''))
    else:
        print(f'stopped at step {out["step"]}/{out["steps"]}; checkpoint in {ckpt}: rerun the '
              'same command to continue')
    return 0
