"""The main job: run a policy on the embedded default model and print what every step did.

Until the simulation and the ROS demo land, this is a smoke run of the core: it builds a
small VLA with random weights, calibrates its static layers, wraps it in DySL and steps the
guided policy on synthetic camera frames.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..guidance import GuidanceConfig
from ..model import DySL, VLA, VLAConfig
from ..runtime.policy import GuidedPolicy, ModelSpec
from ..runtime.torch_runner import TorchRunner
from ..train.calibrate import layer_similarity, select_static


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--steps', type=int, default=12, help='policy steps to run (default 12)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--json', metavar='PATH', help='also write per-step statistics as JSON')


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    cfg = VLAConfig()
    vla = VLA(cfg).eval()
    rng = np.random.default_rng(args.seed)
    with torch.inference_mode():
        calib = [vla.embed(torch.rand(4, len(cfg.cameras), 3, cfg.image_size, cfg.image_size)
                           * 2 - 1, torch.randint(0, 20, (4, cfg.max_instruction_tokens)))]
        layout = select_static(layer_similarity(vla.blocks, calib), ratio=0.2)
    dysl = DySL(vla.blocks, cfg.d_model, layout).eval()
    policy = GuidedPolicy(TorchRunner(vla, dysl), ModelSpec.from_model(vla, layout),
                          GuidanceConfig(tau=0.5))
    print(f'default VLA: {cfg.n_layers} blocks, d={cfg.d_model}, {cfg.num_tokens} tokens; '
          f'static layers {list(layout.static)} (random weights: a smoke run of the core)')
    print(f'{"step":>4} {"layers":>7} {"skipped at":<24} {"verified":>8} {"ms":>7}  gripper')
    rows = []
    for step in range(args.steps):
        images = {c: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), np.uint8)
                  for c in cfg.cameras}
        chunk, stats = policy.step(images, 'pick up the red block')
        skipped = [j for j in stats.skipped_at if j is not None]
        print(f'{step:>4} {stats.layers_run:>3}/{stats.layers_total:<3} {str(skipped):<24} '
              f'{str(stats.verified):>8} {stats.latency_ms["total"]:>7.1f}  {chunk[0, -1]:+.3f}')
        rows.append({'step': step, 'layers_run': stats.layers_run, 'skipped_at': skipped,
                     'verified': stats.verified, 'latency_ms': stats.latency_ms})
    mean = np.mean([r['layers_run'] for r in rows])
    print(f'mean layers run {mean:.1f}/{cfg.n_layers} ({mean / cfg.n_layers:.0%} of full depth)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'layout': layout.to_dict(), 'steps': rows}, f, indent=2)
    return 0
