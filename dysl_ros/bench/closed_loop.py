"""Closed-loop benchmark: success rate in the tabletop simulation, method by method.

`python -m dysl_ros bench closed-loop` runs N seeded episodes per task for each method in
worker processes and reports, per method: success per task and overall, mean backbone
layers run per step (and as a fraction of full depth), mean backbone latency and its speedup
over full depth measured in the same run, and the verification rate. Failed episodes are
broken down by how far they got: whether the gripper reached the task's object (came within
REACHED_MM of it) and whether it moved it (lifted / pushed / opened more than MOVED_MM).

Backbone latency is the guided pass plus any verification re-run. Workers run one torch
thread each; latencies are comparable between methods of one run, not across machines.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..paths import default_model_dir

DEFAULT_MODEL = default_model_dir()
REACHED_MM = 20.0  # a failed episode "reached" the object when the gripper came this close
MOVED_MM = 10.0    # ... and "moved" it when the task's progress passed this


@dataclass(frozen=True)
class Episode:
    """One closed-loop episode of one method."""

    method: str
    task: str
    seed: int
    success: bool
    steps: int
    inferences: int
    layers_run: float  # mean per inference
    layers_total: int
    backbone_ms: float  # mean per inference
    verified: int
    closest_mm: float  # closest approach of the gripper to the task's object
    progress_mm: float  # most lifted / pushed / opened during the episode


def run_episode(policy, env, instruction: str, seed: int, method: str,
                open_loop_steps: int) -> Episode:
    """Run one episode: infer a chunk, execute its first `open_loop_steps` actions, repeat."""
    obs = env.reset(seed=seed, instruction=instruction)
    policy.reset()
    layers, latency, verified, inferences = [], [], 0, 0
    closest = env.target_distance()
    done = False
    while not done:
        chunk, stats = policy.step(obs.images, obs.instruction)
        inferences += 1
        layers.append(stats.layers_run)
        latency.append(stats.latency_ms.get('backbone', 0.0)
                       + stats.latency_ms.get('verify', 0.0))
        verified += int(stats.verified)
        for action in chunk[:open_loop_steps]:
            obs, done, _ = env.step(action)
            closest = min(closest, env.target_distance())
            if done:
                break
    return Episode(method, env.task.name, seed, bool(env.success), env.step_count, inferences,
                   float(np.mean(layers)), stats.layers_total, float(np.mean(latency)),
                   verified, closest * 1e3, env.max_progress * 1e3)


def _worker(job: tuple) -> list[Episode]:
    """One method x task x seed block in a fresh process (its own env and policy)."""
    model_dir, method, instruction, seeds, open_loop_steps, image_size, guidance = job
    import torch
    torch.set_num_threads(1)
    from ..runtime.loading import PolicyOptions, open_policy
    from ..sim import SimConfig, TabletopEnv
    # only the actions that run before the next inference enter the continuity history
    policy = open_policy(model_dir, 'torch', method, PolicyOptions(
        guidance={'executed_actions': open_loop_steps, **guidance},
        profile=True))  # backbone_ms is read from the stage timings
    env = TabletopEnv(SimConfig(image_size=image_size))
    try:
        return [run_episode(policy, env, instruction, s, method, open_loop_steps)
                for s in seeds]
    finally:
        env.close()


def summarise(episodes: Sequence[Episode], methods: Sequence[str], tasks: Sequence[str]
              ) -> dict:
    """Per-method figures; speedup is relative to the 'full' method when it ran."""
    out = {}
    for m in methods:
        eps = [e for e in episodes if e.method == m]
        if not eps:
            continue
        inf = np.array([e.inferences for e in eps], dtype=float)
        out[m] = {
            'success': {t: float(np.mean([e.success for e in eps if e.task == t]))
                        for t in tasks},
            'success_mean': float(np.mean([e.success for e in eps])),
            'layers_run': float(np.average([e.layers_run for e in eps], weights=inf)),
            'layers_total': eps[0].layers_total,
            'backbone_ms': float(np.average([e.backbone_ms for e in eps], weights=inf)),
            'verification_rate': float(sum(e.verified for e in eps) / inf.sum()),
            'episodes': len(eps),
            'failures': {t: _failures([e for e in eps if e.task == t and not e.success])
                         for t in tasks},
        }
        out[m]['layer_fraction'] = out[m]['layers_run'] / out[m]['layers_total']
    if 'full' in out:
        for m in out:
            out[m]['speedup'] = out['full']['backbone_ms'] / out[m]['backbone_ms']
    return out


def _failures(failed: Sequence[Episode]) -> dict:
    """How far the failed episodes of one task got."""
    reached = [e for e in failed if e.closest_mm < REACHED_MM]
    return {'count': len(failed), 'reached': len(reached),
            'moved': sum(e.progress_mm > MOVED_MM for e in reached)}


def format_table(summary: dict, tasks: Sequence[str]) -> str:
    short = [t.split('_')[0][:10] for t in tasks]
    head = (f'{"method":<16}' + ''.join(f'{s:>11}' for s in short)
            + f'{"mean":>7}{"layers":>8}{"frac":>6}{"ms":>7}{"speedup":>8}{"verif":>7}')
    lines = [head, '-' * len(head)]
    for m, r in summary.items():
        lines.append(
            f'{m:<16}' + ''.join(f'{r["success"][t]:>11.0%}' for t in tasks)
            + f'{r["success_mean"]:>7.0%}{r["layers_run"]:>8.1f}{r["layer_fraction"]:>6.0%}'
            + f'{r["backbone_ms"]:>7.1f}{r.get("speedup", float("nan")):>7.2f}x'
            + f'{r["verification_rate"]:>7.1%}')
    return '\n'.join(lines)


def format_failures(summary: dict, tasks: Sequence[str]) -> str:
    """Failed episodes per task as failed / reached the object / moved it."""
    short = [t.split('_')[0][:10] for t in tasks]
    head = f'{"failed/reached/moved":<22}' + ''.join(f'{s:>11}' for s in short)
    lines = [head, '-' * len(head)]
    for m, r in summary.items():
        cells = [r['failures'][t] for t in tasks]
        lines.append(f'{m:<22}' + ''.join(
            f'{c["count"]:>5}/{c["reached"]:>2}/{c["moved"]:>2}' for c in cells))
    return '\n'.join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..runtime.methods import METHODS
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL,
                        help='model directory (default: the embedded models/default)')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS),
                        metavar='METHOD',
                        help=f'methods to compare (default all: {", ".join(METHODS)})')
    parser.add_argument('--episodes', type=int, default=20, help='episodes per task (default 20)')
    parser.add_argument('--tasks', nargs='+', default=None,
                        help='task names (default: every task)')
    parser.add_argument('--open-loop-steps', type=int, default=4,
                        help='actions of each chunk executed before the next inference '
                             '(default 4)')
    parser.add_argument('--seed', type=int, default=1000, help='first episode seed')
    parser.add_argument('--workers', type=int, default=max(1, os.cpu_count() or 1),
                        help='worker processes (default: CPU count)')
    parser.add_argument('--guidance', nargs='+', default=[], metavar='KEY=VALUE',
                        help='guidance settings of the DySL methods replacing the stored '
                             'ones, e.g. tau=0.3 release_margin=0.5 (executed_actions '
                             'defaults to --open-loop-steps)')
    parser.add_argument('--json', metavar='PATH', help='write the results as JSON')


def run(args: argparse.Namespace) -> int:
    from ..guidance import GuidanceConfig, parse_overrides
    from ..model.io import load_vla
    from ..sim import TASKS
    if args.episodes < 1 or args.open_loop_steps < 1:
        raise SystemExit('--episodes and --open-loop-steps must be >= 1')
    tasks = [t for t in TASKS if args.tasks is None or t.name in args.tasks]
    if not tasks:
        raise SystemExit(f'no task matches {args.tasks}; tasks: {[t.name for t in TASKS]}')
    guidance = parse_overrides(args.guidance)
    GuidanceConfig(**guidance)  # range errors now, not in a worker
    vla = load_vla(args.model)
    if args.open_loop_steps > vla.cfg.chunk_size:
        raise SystemExit(f'--open-loop-steps={args.open_loop_steps} exceeds the chunk size '
                         f'{vla.cfg.chunk_size}')
    seeds = list(range(args.seed, args.seed + args.episodes))
    blocks = max(1, min(len(seeds), 4))  # seeds per job: a few, so jobs balance
    jobs = [(str(args.model), m, t.instruction, seeds[i::blocks], args.open_loop_steps,
             vla.cfg.image_size, guidance)
            for m in args.methods for t in tasks for i in range(blocks)]
    episodes: list[Episode] = []
    with mp.get_context('spawn').Pool(args.workers) as pool:
        bar = tqdm(total=len(args.methods) * len(tasks) * len(seeds), desc='episodes', unit='ep')
        for result in pool.imap_unordered(_worker, jobs):
            episodes.extend(result)
            bar.update(len(result))
        bar.close()
    names = [t.name for t in tasks]
    summary = summarise(episodes, args.methods, names)
    print(format_table(summary, names))
    print(f'\nfailed episodes: how many reached the object (within {REACHED_MM:.0f} mm) and, '
          f'of those, moved it (more than {MOVED_MM:.0f} mm)')
    print(format_failures(summary, names))
    print(f'{args.episodes} episodes per task, {args.open_loop_steps} actions per chunk executed '
          f'open-loop, {args.workers} workers on {os.cpu_count()} CPUs')
    if args.json:
        Path(args.json).write_text(json.dumps(
            {'config': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                        if not k.startswith('_')},
             'summary': summary, 'episodes': [asdict(e) for e in episodes]}, indent=2))
    return 0

