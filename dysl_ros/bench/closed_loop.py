"""Closed-loop benchmark: success rate in a simulation suite, method by method.

`python -m dysl_ros bench closed-loop` runs N seeded episodes per task in worker processes
and reports per method: success per task and over all episodes, each with its 95% Wilson
interval; backbone layers run per inference (mean, p90, fraction of full depth); backbone
milliseconds per inference (median, p90); the speedup over full depth from the medians and
from the means, and the fraction of ideal; the share of inferences verified; trainable
parameters and training time, as recorded when the parts were made. Failed episodes
are broken down by how far they got: whether the gripper reached the task's object (came
within REACHED_MM of it) and whether it moved it (lifted / pushed / opened more than
MOVED_MM). For methods that walk segments with dynamic layers, each such segment gets
the share of inferences that skipped in it and a histogram of the layers skipped at, and
its allow point's movement: the mean and max of (allow point - first dynamic layer) and
the mean |change| of the allow point between consecutive inferences of an episode.

The suite (--suite, sim/suites.py) is the tabletop by default, or metaworld-mt10; the
model's action names must be the suite's. Seeds come from a named split (sim.splits):
`validation` (the default) for every choice, `test` only to report. --guidance overrides
are choices, so they are refused on `test`.

--latency-budget-ms gives every skipping method the policy node's latency budget
(runtime.budget.LatencyBudget: the controllers' threshold comes down while the step p95 is
over it); the compute table's step p95 (the whole policy step, over a method's inferences)
shows whether it held, and a run without it on the same seeds shows the success it cost.

Timing: a worker job is one task and a block of seeds; it runs every method on each seed in
turn, the order rotating with the seed, so every method is timed under the same
contention. Backbone latency is the guided pass plus any verification re-run (its head
included), and layers run count the re-run's layers too:

    speedup (median)   = full depth's median ms / the method's median ms (a typical step;
                         blind to re-runs while fewer than half the steps are verified)
    speedup (mean)     = full depth's mean ms / the method's mean ms (every re-run paid for)
    ideal ms           = full depth's mean ms x the method's mean layers / full depth's
    fraction of ideal  = ideal ms / the method's mean ms

Workers run one torch thread each; latencies compare methods of one run, not machines.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..runtime.stats import percentile

if TYPE_CHECKING:
    from ..layout import Segment
    from ..runtime.policy import Policy

REACHED_MM = 20.0  # a failed episode "reached" the object when the gripper came this close
MOVED_MM = 10.0    # ... and "moved" it when the task's progress passed this
Z95 = 1.959963984540054  # standard normal quantile of 0.975: two-sided 95%


@dataclass(frozen=True)
class SegmentSkips:
    """One segment's skips and allow points over one episode's inferences."""

    static: int
    end: int
    inferences: int
    skipped_at: dict[int, int]  # dynamic layer -> inferences that skipped at it
    offset_sum: int  # allow point - first dynamic layer (static + 1), summed
    offset_max: int
    change_sum: int  # |allow point change| between consecutive inferences, summed


def count_skips(segments: Sequence[Segment], skipped_at: Sequence[Sequence[Optional[int]]],
                allow_points: Sequence[Sequence[int]]) -> list[SegmentSkips]:
    """Per segment with dynamic layers, from one episode's per-inference StepStats.skipped_at
    and .allow_points (rows: inferences; columns: segments). Methods without segments
    report empty rows: no segment."""
    out = []
    for seg, at, points in zip(segments, zip(*skipped_at), zip(*allow_points)):
        if seg.dynamic:
            offsets = np.asarray(points) - (seg.static + 1)
            out.append(SegmentSkips(seg.static, seg.end, len(at),
                                    dict(Counter(j for j in at if j is not None)),
                                    int(offsets.sum()), int(offsets.max()),
                                    int(np.abs(np.diff(points)).sum())))
    return out


@dataclass(frozen=True)
class Episode:
    """One closed-loop episode of one method."""

    method: str
    task: str
    seed: int
    success: bool
    steps: int
    layers_total: int
    layers_run: list[int]  # per inference, verification re-run included
    backbone_ms: list[float]  # per inference: guided pass + verification re-run
    verified: int  # inferences re-run at full depth
    closest_mm: float  # closest approach of the gripper to the task's object
    progress_mm: float  # most lifted / pushed / opened during the episode
    skips: list[SegmentSkips]  # per segment with dynamic layers (none for baselines)
    step_ms: list[float] = field(default_factory=list)  # per inference: the whole policy step


def run_episode(policy: Policy, env, instruction: str, seed: int, method: str,
                open_loop_steps: int) -> Episode:
    """Run one episode: infer a chunk, execute its first `open_loop_steps` actions, repeat."""
    obs = env.reset(seed=seed, instruction=instruction)
    policy.reset()
    layers, latency, step_ms, verified, skipped_at, allow_points = [], [], [], 0, [], []
    closest = env.target_distance()
    done = False
    while not done:
        chunk, stats = policy.step(obs.images, obs.instruction)
        layers.append(stats.layers_run)
        latency.append(stats.latency_ms.get('backbone', 0.0)
                       + stats.latency_ms.get('verify', 0.0))
        step_ms.append(stats.latency_ms['total'])
        verified += int(stats.verified)
        skipped_at.append(stats.skipped_at)
        allow_points.append(stats.allow_points)
        for action in chunk[:open_loop_steps]:
            obs, done, _ = env.step(action)
            closest = min(closest, env.target_distance())
            if done:
                break
    return Episode(method, env.task.name, seed, bool(env.success), env.step_count,
                   stats.layers_total, layers, latency, verified, closest * 1e3,
                   env.max_progress * 1e3,
                   count_skips(policy.spec.layout.segments, skipped_at, allow_points), step_ms)


def run_job(policies: Mapping[str, Policy], env, instruction: str, seeds: Sequence[int],
            open_loop_steps: int) -> list[Episode]:
    """Every method (name -> policy) on each seed in turn, the order rotating with the
    seed: the methods share the machine's conditions, and none always runs first."""
    names = list(policies)
    out = []
    for seed in seeds:
        r = seed % len(names)
        for m in names[r:] + names[:r]:
            out.append(run_episode(policies[m], env, instruction, seed, m, open_loop_steps))
    return out


def _worker(job: tuple) -> list[Episode]:
    """One task x seed block in a fresh process: one env, every method's policy."""
    model_dir, methods, instruction, seeds, open_loop_steps, suite, guidance, budget_ms = job
    import torch
    torch.set_num_threads(1)
    from ..model.io import load_vla
    from ..runtime.methods import make_policy
    from ..sim.suites import get_suite
    vla = load_vla(Path(model_dir))  # one copy of the weights, shared by the methods
    # only the actions that run before the next inference enter the continuity history;
    # profile: backbone_ms is read from the stage timings
    policies = {m: make_policy(m, Path(model_dir), vla=vla, profile=True, guidance={
        'executed_actions': open_loop_steps, **guidance}) for m in methods}
    if budget_ms:
        from ..runtime.budget import LatencyBudget
        for policy in policies.values():
            if getattr(policy, 'skipping', False):
                policy.budget = LatencyBudget(budget_ms)
    sim = get_suite(suite)
    env = sim.make_env(sim.config(image_size=vla.cfg.image_size, cameras=vla.cfg.cameras))
    try:
        return run_job(policies, env, instruction, seeds, open_loop_steps)
    finally:
        env.close()


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% with the default z)."""
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def success_rate(outcomes: Sequence[bool]) -> dict:
    """Share of successes with its 95% Wilson interval, and the counts."""
    k, n = int(sum(outcomes)), len(outcomes)
    low, high = wilson(k, n)
    return {'rate': k / n, 'low': low, 'high': high, 'successes': k, 'episodes': n}


def summarise(episodes: Sequence[Episode], methods: Sequence[str], tasks: Sequence[str]
              ) -> dict:
    """Per-method figures (module docstring); the overall success interval pools every
    episode, which is conservative when the tasks' rates differ. Speedup and fraction of
    ideal are relative to the 'full' method when it ran. 'skips' (methods with segments that
    have dynamic layers only): one entry per such segment, see _skips."""
    out = {}
    for m in methods:
        eps = [e for e in episodes if e.method == m]
        if not eps:
            continue
        layers = np.concatenate([e.layers_run for e in eps]).astype(float)  # per inference
        ms = np.concatenate([e.backbone_ms for e in eps])  # per inference
        out[m] = {
            'success': {t: success_rate([e.success for e in eps if e.task == t]) for t in tasks},
            'success_mean': success_rate([e.success for e in eps]),
            'layers_run': {'mean': float(layers.mean()),
                           'p90': float(np.percentile(layers, 90))},
            'layers_total': eps[0].layers_total,
            'layer_fraction': float(layers.mean()) / eps[0].layers_total,
            'backbone_ms': {'median': float(np.median(ms)), 'p90': float(np.percentile(ms, 90)),
                            'mean': float(ms.mean())},
            'step_ms_p95': percentile(np.concatenate([e.step_ms for e in eps]), 95),
            'verified_fraction': sum(e.verified for e in eps) / len(layers),
            'episodes': len(eps),
            'inferences': len(layers),
            'failures': {t: _failures([e for e in eps if e.task == t and not e.success])
                         for t in tasks},
        }
        skips = [_skips(per_episode) for per_episode in zip(*(e.skips for e in eps))]
        if skips:
            out[m]['skips'] = skips
    if 'full' in out:
        f = out['full']
        for r in out.values():
            r['speedup'] = {s: f['backbone_ms'][s] / r['backbone_ms'][s]
                            for s in ('median', 'mean')}
            ideal = f['backbone_ms']['mean'] * r['layers_run']['mean'] / f['layers_run']['mean']
            r['fraction_of_ideal'] = ideal / r['backbone_ms']['mean']
    return out


def _skips(counts: Sequence[SegmentSkips]) -> dict:
    """One segment over episodes: counts, and the means of the allow point's offset from the
    first dynamic layer and of its |change| between consecutive inferences of an episode."""
    n = sum(c.inferences for c in counts)
    at = sum((Counter(c.skipped_at) for c in counts), Counter())
    offset, change = sum(c.offset_sum for c in counts), sum(c.change_sum for c in counts)
    pairs = n - len(counts)  # consecutive inferences within an episode
    return {'static': counts[0].static, 'end': counts[0].end, 'inferences': n,
            'skipped': sum(at.values()), 'skipped_at': {j: at[j] for j in sorted(at)},
            'allow_offset': {'sum': offset, 'mean': offset / n,
                             'max': max(c.offset_max for c in counts)},
            'allow_change': {'sum': change, 'pairs': pairs,
                             'mean': change / pairs if pairs else 0.0}}


def _failures(failed: Sequence[Episode]) -> dict:
    """How far the failed episodes of one task got."""
    reached = [e for e in failed if e.closest_mm < REACHED_MM]
    return {'count': len(failed), 'reached': len(reached),
            'moved': sum(e.progress_mm > MOVED_MM for e in reached)}


def format_rate(r: dict) -> str:
    """A success_rate as 'rate [low-high]'."""
    return f'{r["rate"]:.0%} [{r["low"]:.0%}-{r["high"]:.0%}]'


def _column(tasks: Sequence[str]) -> int:
    """Width of a task's column: its cell (18) or its name (MT10's are longer), one space."""
    return max([18] + [len(t) + 1 for t in tasks])


def format_success(summary: dict, tasks: Sequence[str]) -> str:
    """Success per task and over all episodes: rate [95% Wilson interval]."""
    w = _column(tasks)
    head = f'{"success [95% CI]":<22}' + ''.join(f'{t:>{w}}' for t in list(tasks) + ['all'])
    lines = [head, '-' * len(head)]
    for m, r in summary.items():
        cells = [r['success'][t] for t in tasks] + [r['success_mean']]
        lines.append(f'{m:<22}' + ''.join(f'{format_rate(c):>{w}}' for c in cells))
    return '\n'.join(lines)


def format_compute(summary: dict) -> str:
    """Layers run, backbone latency, speedup, fraction of ideal and verifications."""
    head = (f'{"compute per inference":<22}{"layers mean":>12}{"p90":>6}{"frac":>6}'
            f'{"ms median":>11}{"p90":>7}{"speedup med":>13}{"mean":>7}{"of ideal":>10}'
            f'{"verified":>10}{"step p95":>10}')
    lines = [head, '-' * len(head)]
    for m, r in summary.items():
        lay, ms = r['layers_run'], r['backbone_ms']
        # relative figures need full depth in the run
        rel = (f'{r["speedup"]["median"]:>12.2f}x{r["speedup"]["mean"]:>6.2f}x'
               f'{r["fraction_of_ideal"]:>10.2f}' if 'speedup' in r
               else f'{"-":>13}{"-":>7}{"-":>10}')
        lines.append(f'{m:<22}{lay["mean"]:>12.1f}{lay["p90"]:>6.1f}{r["layer_fraction"]:>6.0%}'
                     f'{ms["median"]:>11.2f}{ms["p90"]:>7.2f}{rel}{r["verified_fraction"]:>10.1%}'
                     f'{_ms(r.get("step_ms_p95")):>10}')
    return '\n'.join(lines)


def _ms(v: Optional[float]) -> str:
    return '-' if v is None else f'{v:.2f}'


def format_failures(summary: dict, tasks: Sequence[str]) -> str:
    """Failed episodes per task as failed / reached the object / moved it."""
    w = _column(tasks)
    head = f'{"failed/reached/moved":<22}' + ''.join(f'{t:>{w}}' for t in tasks)
    lines = [head, '-' * len(head)]
    for m, r in summary.items():
        cells = [r['failures'][t] for t in tasks]
        lines.append(f'{m:<22}' + ''.join(
            f'{c["count"]:>{w - 6}}/{c["reached"]:>2}/{c["moved"]:>2}' for c in cells))
    return '\n'.join(lines)


def format_skips(summary: dict) -> str:
    """Per method and segment with dynamic layers: share of inferences that skipped in it and
    at each layer; the allow point's offset from the first dynamic layer (mean, max) and its
    mean |change| between consecutive inferences. Empty when no method has such segments."""
    rows = [(m, s) for m, r in summary.items() for s in r.get('skips', ())]
    if not rows:
        return ''
    head = (f'{"skips per segment":<22}{"segment":>9}{"skipped":>9}{"allow +mean":>13}'
            f'{"max":>5}{"|change|":>10}  skipped at (share of inferences)')
    lines = [head, '-' * len(head)]
    for m, s in rows:
        n, seg = s['inferences'], f'[{s["static"]}-{s["end"]})'
        at = ' '.join(f'@{j} {c / n:.0%}' for j, c in s['skipped_at'].items())
        lines.append(f'{m:<22}{seg:>9}{s["skipped"] / n:>9.0%}{s["allow_offset"]["mean"]:>13.2f}'
                     f'{s["allow_offset"]["max"]:>5}{s["allow_change"]["mean"]:>10.2f}  {at}')
    return '\n'.join(lines)


def format_training(costs: Mapping[str, dict], backbone_parameters: int) -> str:
    """Per method: trainable parameters (and their share of the backbone blocks') and
    training time, as recorded when the parts were made ('-' where not recorded)."""
    head = f'{"training":<22}{"parameters":>12}{"of blocks":>11}{"minutes":>9}'
    lines = [head, '-' * len(head)]
    for m, c in costs.items():
        n, s = c.get('trainable_parameters'), c.get('train_seconds')
        params = (f'{n:>12,}{n / backbone_parameters:>11.2%}' if n is not None
                  else f'{"-":>12}{"-":>11}')
        lines.append(f'{m:<22}{params}' + (f'{s / 60:>9.1f}' if s is not None else f'{"-":>9}'))
    return '\n'.join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..runtime.methods import METHODS
    from ..sim.splits import SPLITS
    from ..sim.suites import DEFAULT_SUITE, SUITES
    parser.add_argument('--suite', choices=list(SUITES), default=DEFAULT_SUITE,
                        help=f'simulation suite (default {DEFAULT_SUITE})')
    parser.add_argument('--model', type=Path, default=None,
                        help="model directory (default: the suite's shipped model, "
                             'models/default or models/metaworld)')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS),
                        metavar='METHOD',
                        help=f'methods to compare (default all: {", ".join(METHODS)})')
    parser.add_argument('--episodes', type=int, default=20, help='episodes per task (default 20)')
    parser.add_argument('--tasks', nargs='+', default=None,
                        help='task names (default: every task)')
    parser.add_argument('--open-loop-steps', type=int, default=4,
                        help='actions of each chunk executed before the next inference '
                             '(default 4)')
    parser.add_argument('--split', choices=list(SPLITS), default='validation',
                        help='seed range (dysl_ros/sim/splits.py): validation (default) for '
                             'every choice, test only to report; episode i of every task '
                             'runs the split\'s i-th seed')
    parser.add_argument('--workers', type=int, default=max(1, os.cpu_count() or 1),
                        help='worker processes (default: CPU count)')
    parser.add_argument('--guidance', nargs='+', default=[], metavar='KEY=VALUE',
                        help='guidance settings of the DySL methods replacing the stored '
                             'ones, e.g. tau=0.3 release_margin=0.5 (executed_actions '
                             'defaults to --open-loop-steps); validation split only')
    parser.add_argument('--latency-budget-ms', type=float, default=0.0, metavar='MS',
                        help="the policy node's latency_budget_ms for every skipping method "
                             '(0: off, the default); the step p95 column shows if it held')
    parser.add_argument('--json', metavar='PATH', help='write the results as JSON')


def run(args: argparse.Namespace) -> int:
    from ..guidance import GuidanceConfig, parse_overrides
    from ..model.io import load_vla
    from ..model.parts import count_parameters
    from ..runtime.methods import training_cost
    from ..sim.splits import split_seeds
    from ..sim.suites import get_suite
    if args.episodes < 1 or args.open_loop_steps < 1 or args.latency_budget_ms < 0:
        raise SystemExit('--episodes and --open-loop-steps must be >= 1, '
                         '--latency-budget-ms >= 0')
    if args.split == 'test' and args.guidance:
        raise SystemExit('--guidance chooses settings, and choices are made on the validation '
                         'split: store the chosen ones in the model (calibrate --guidance) and '
                         'report on test without overrides')
    suite = get_suite(args.suite)
    tasks = [t for t in suite.tasks if args.tasks is None or t.name in args.tasks]
    if not tasks:
        raise SystemExit(f'no task matches {args.tasks}; tasks: {suite.task_names}')
    try:
        seeds = split_seeds(args.split, args.episodes)
    except ValueError as e:
        raise SystemExit(f'--episodes: {e}') from None
    guidance = parse_overrides(args.guidance)
    GuidanceConfig(**guidance)  # range errors now, not in a worker
    args.model = args.model or suite.default_model
    vla = load_vla(args.model)
    if args.open_loop_steps > vla.cfg.chunk_size:
        raise SystemExit(f'--open-loop-steps={args.open_loop_steps} exceeds the chunk size '
                         f'{vla.cfg.chunk_size}')
    if vla.cfg.action_names != suite.action_names:
        raise SystemExit(f'{args.model} acts in {vla.cfg.action_names}, the {suite.name} suite '
                         f'in {suite.action_names}: pick the suite the model was trained on')
    whole = suite.splits[args.split]
    protocol = {'suite': suite.name, 'split': args.split, 'seeds': [seeds[0], seeds[-1]],
                'split_range': [whole.start, whole.stop - 1],
                'latency_budget_ms': args.latency_budget_ms or None}
    print(f'closed-loop, {suite.name}, on the {args.split} split: seeds {seeds[0]}-{seeds[-1]} '
          f'per task (of {whole.start}-{whole.stop - 1}), {len(tasks)} tasks, methods '
          f'{" ".join(args.methods)} interleaved per seed')
    blocks = max(1, min(len(seeds), 4))  # seeds per job: a few, so jobs balance
    jobs = [(str(args.model), list(args.methods), t.instruction, list(seeds[i::blocks]),
             args.open_loop_steps, suite.name, guidance, args.latency_budget_ms)
            for t in tasks for i in range(blocks)]
    episodes: list[Episode] = []
    with mp.get_context('spawn').Pool(args.workers) as pool:
        bar = tqdm(total=len(args.methods) * len(tasks) * len(seeds), desc='episodes', unit='ep')
        for result in pool.imap_unordered(_worker, jobs):
            episodes.extend(result)
            bar.update(len(result))
        bar.close()
    names = [t.name for t in tasks]
    summary = summarise(episodes, args.methods, names)
    print(format_success(summary, names))
    print()
    print(format_compute(summary))
    print(f'\nfailed episodes: how many reached the object (within {REACHED_MM:.0f} mm) and, '
          f'of those, moved it (more than {MOVED_MM:.0f} mm)')
    print(format_failures(summary, names))
    costs = {m: training_cost(m, args.model) for m in args.methods}
    backbone = count_parameters(vla.blocks.parameters())
    print(f'\ntrainable parts and their training time (methods on DySL\'s parts show DySL\'s; '
          f'the VLA itself is not counted)\n{format_training(costs, backbone)}')
    skips = format_skips(summary)
    if skips:
        print(f'\nskips: allow point - first dynamic layer (mean, max); its mean |change| '
              f'between consecutive inferences\n{skips}')
    print(f'{args.episodes} episodes per task on the {args.split} split, {args.open_loop_steps} '
          f'actions per chunk executed open-loop, {args.workers} workers on {os.cpu_count()} '
          'CPUs; fraction of ideal from means' + (
              f'; latency budget {args.latency_budget_ms:g} ms on the skipping methods'
              if args.latency_budget_ms else ''))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {'protocol': protocol, 'training': costs, 'backbone_parameters': backbone,
             'config': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                        if not k.startswith('_')},
             'summary': summary, 'episodes': [asdict(e) for e in episodes]}, indent=2))
    return 0
