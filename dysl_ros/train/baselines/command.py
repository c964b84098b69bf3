"""`python -m dysl_ros train-baselines`: make every baseline / ablation of a model."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ...model.config import from_dict
from ...model.io import read_json
from ...runtime.methods import TRAINABLE
from ..dataset import load_demos
from ..distill import DISTILL_JSON, DistillConfig
from .common import BaselineTrainConfig
from .make import train_all_baselines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model-dir', required=True, type=Path,
                        help='holds vla.json (+ dysl.json); parts are written below it')
    parser.add_argument('--demos', required=True, type=Path, nargs='+',
                        help='demonstration folders (python -m dysl_ros gen-demos)')
    parser.add_argument('--methods', nargs='+', default=list(TRAINABLE), choices=TRAINABLE,
                        help='what to make (default: all)')
    parser.add_argument('--steps', type=int,
                        help="optimiser steps per baseline (default: DySL's distillation "
                             'steps, stage 1 + stage 2, from <model-dir>/distill.json)')
    parser.add_argument('--distill-steps', type=int, nargs=2, metavar=('STAGE1', 'STAGE2'),
                        help='stage steps of the DySL ablations (default: DistillConfig)')
    parser.add_argument('--lr', type=float, default=BaselineTrainConfig.lr)
    parser.add_argument('--alpha', type=float, default=BaselineTrainConfig.flexi_alpha,
                        help="FlexiDepth's layer-budget weight alpha: choose it on the "
                             "validation split so that FlexiDepth runs DySL's mean layers")
    parser.add_argument('--target-layers', type=float,
                        help="DySL's mean executed layers (default: measured on the demos)")
    parser.add_argument('--measure-episodes', type=int, default=20,
                        help='episodes replayed to measure the target (default 20)')
    parser.add_argument('--batch-size', type=int,
                        help="default: DySL's distillation batch size (32 without one)")
    parser.add_argument('--batches', type=int,
                        help="batches per pass over the demos (default: DySL's distillation's "
                             'batches per pass; one epoch without one)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Train / calibrate every requested method of --model-dir on the demos in --demos."""
    episodes, _ = load_demos(args.demos)
    budget = dysl_budget(args.model_dir)
    dcfg = main_distill_config(args.model_dir, args.seed)
    steps = args.steps if args.steps is not None else budget.get(
        'steps', BaselineTrainConfig.steps)
    cfg = BaselineTrainConfig(steps=steps, lr=args.lr, flexi_alpha=args.alpha)
    if args.distill_steps:
        dcfg = dataclasses.replace(dcfg, stage1_steps=args.distill_steps[0],
                                   stage2_steps=args.distill_steps[1])
    batch_size = args.batch_size or budget.get('batch_size', 32)
    batches = args.batches or budget.get('batches_per_pass')
    summary = train_all_baselines(args.model_dir, episodes, args.methods, cfg, dcfg,
                                  args.target_layers, args.device, batch_size,
                                  batches, args.measure_episodes, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def main_distill_config(model_dir: Path, seed: int = 0) -> DistillConfig:
    """The main DySL's distillation settings (lambda, lr, ...) from <model_dir>/distill.json,
    so an ablation differs from DySL in the one thing it ablates; the defaults without it."""
    path = Path(model_dir) / DISTILL_JSON
    if not path.is_file():
        return DistillConfig(seed=seed)
    try:
        cfg = from_dict(DistillConfig, read_json(path)['config'])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'{path}: no valid distillation config ({e}); rerun distill') from None
    return dataclasses.replace(cfg, seed=seed)


def dysl_budget(model_dir: Path) -> dict:
    """DySL's training budget from <model_dir>/distill.json: steps (stage 1 + stage 2),
    batch_size and batches_per_pass, where recorded (empty without a distill.json)."""
    path = Path(model_dir) / DISTILL_JSON
    if not path.is_file():
        return {}
    meta = read_json(path)
    config = meta.get('config', {})
    budget = {k: int(meta[k]) for k in ('batch_size', 'batches_per_pass') if k in meta}
    if 'stage1_steps' in config and 'stage2_steps' in config:
        budget['steps'] = int(config['stage1_steps']) + int(config['stage2_steps'])
    return budget
