"""Expert demonstrations: parallel generation in the simulation (`gen-demos`).

One compressed .npz per successful expert episode, `<out>/<task>_s<seed>.npz`, with index.json
and stats.json beside them: the format of dysl_ros.datasets, which also reads them. Failed
expert episodes are not kept (success is always True here).

`--suite` picks the simulation (sim/suites.py): the tabletop (default) or metaworld-mt10,
each with its own tasks, cameras, experts and action names (written to index.json). Episode
seeds lie in the demos range of sim/splits.py (below 10**9), clear of validation and test.

Recovery demos (`--recover-from MODEL`, see sim/recovery.py; either suite) are the expert's
corrections from states the model itself reaches, with `takeover_step` set; train on them next
to the plain demos (train-bc --demos A B).

    python -m dysl_ros gen-demos --out data/demos --episodes-per-task 100 --workers 2
    python -m dysl_ros gen-demos --suite metaworld-mt10 --out data/mt10 --episodes-per-task 100
    python -m dysl_ros gen-demos --out data/recovery --recover-from models/default --seed 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import multiprocessing.util
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dysl_ros.datasets import FORMAT, action_stats, prepare_dataset_dir, save_episode
from dysl_ros.sim.expert import run_episode
from dysl_ros.sim.recovery import OPEN_LOOP_STEPS, run_recovery_episode
from dysl_ros.sim.suites import DEFAULT_SUITE, SUITES, Suite, get_suite

_SEED_STRIDE = 100_000   # episode seeds: seed * 10 * stride + task_index * stride + k


def episode_seed(seed: int, task_index: int, k: int) -> int:
    """Seed of the k-th attempt for the suite's tasks[task_index] in a dataset generated
    from `seed` (at most 10 tasks per suite)."""
    return (seed * 10 + task_index) * _SEED_STRIDE + k


_WORKER: dict = {}


def _init_worker(suite: str, sim_cfg, out_dir: str, recover_from: str | None = None,
                 open_loop_steps: int = OPEN_LOOP_STEPS, recover_method: str = 'full') -> None:
    sim = get_suite(suite)
    env = sim.make_env(sim_cfg)
    multiprocessing.util.Finalize(env, env.close, exitpriority=10)
    policy = None
    if recover_from is not None:
        import torch
        from dysl_ros.runtime.loading import PolicyOptions, open_policy
        torch.set_num_threads(1)   # one thread per worker process
        # the guidance counts the actions that run before the next inference
        options = PolicyOptions(guidance={'executed_actions': open_loop_steps})
        policy = open_policy(Path(recover_from), 'torch', recover_method, options)
    _WORKER.update(env=env, expert=sim.make_expert, out=Path(out_dir), policy=policy,
                   open_loop_steps=open_loop_steps)


def _run_job(job: tuple[str, int]) -> dict:
    task, seed = job
    if _WORKER['policy'] is not None:
        rec = run_recovery_episode(_WORKER['env'], _WORKER['policy'], seed, task,
                                   _WORKER['open_loop_steps'], _WORKER['expert'])
    else:
        rec = run_episode(_WORKER['env'], seed, task, record=True, expert=_WORKER['expert'])
    meta = {k: rec[k] for k in ('task', 'instruction', 'seed', 'length', 'success')}
    if rec['success']:
        meta['file'] = f'{task}_s{seed}.npz'
        save_episode(_WORKER['out'] / meta['file'], rec)
        meta['actions'] = rec['actions']
    return meta


def _check_args(episodes_per_task: int, workers: int, seed: int, sim_cfg,
                tasks: tuple[str, ...], suite: Suite) -> None:
    if not 1 <= episodes_per_task < _SEED_STRIDE // 2:
        raise ValueError(f'episodes_per_task={episodes_per_task!r} is invalid: expected '
                         f'1..{_SEED_STRIDE // 2 - 1}')
    if workers < 1:
        raise ValueError(f'workers={workers!r} is invalid: expected >= 1')
    if seed < 0:
        raise ValueError(f'seed={seed!r} is invalid: expected >= 0')
    if not sim_cfg.cameras:
        raise ValueError('sim_cfg.cameras is empty: demos need at least one camera')
    if seed * 10 * _SEED_STRIDE >= 10**9:
        raise ValueError(f'seed={seed!r} is invalid: expected < {10**9 // (10 * _SEED_STRIDE)} '
                         '(episode seeds stay in the demos range below 10**9, sim/splits.py)')
    unknown = [t for t in tasks if t not in suite.task_names]
    if unknown:
        raise ValueError(f'tasks={unknown} are unknown in suite {suite.name}: expected names '
                         f'from {suite.task_names}')


def generate(out_dir: str | os.PathLike, episodes_per_task: int, seed: int = 0,
             workers: int = 1, sim_cfg=None, tasks: tuple[str, ...] | None = None,
             overwrite: bool = False, recover_from: str | os.PathLike | None = None,
             open_loop_steps: int = OPEN_LOOP_STEPS, suite: str = DEFAULT_SUITE,
             recover_method: str = 'full') -> dict:
    """Write `episodes_per_task` successful expert episodes per task; return a summary.

    With recover_from (a model folder), each episode is a recovery demonstration: the model
    drives until near contact, executing `open_loop_steps` actions of each chunk, then the
    expert takes over (sim/recovery.py). recover_method names how the model drives
    (runtime.methods, default full depth; 'dysl' gathers the states a skipping policy
    visits, for distillation).

    Failed expert episodes are dropped, counted and replaced by new seeds (at most
    2 * episodes_per_task + 10 attempts per task). workers > 1 uses spawned processes, each
    with its own env; the dataset does not depend on the number of workers. `suite` names
    the simulation (sim/suites.py); sim_cfg is its config (default: the suite's defaults).
    """
    sim = get_suite(suite)
    sim_cfg = sim_cfg or sim.config()
    names = sim.task_names
    tasks = tuple(tasks or names)
    _check_args(episodes_per_task, workers, seed, sim_cfg, tasks, sim)
    if recover_from is not None:   # a bad model folder fails here, once, naming the file
        from dysl_ros.model.io import load_vla
        from dysl_ros.runtime.methods import METHODS
        if recover_method not in METHODS:
            raise ValueError(f'recover_method={recover_method!r} is invalid: expected one of '
                             f'{sorted(METHODS)}')
        model_cfg = load_vla(Path(recover_from)).cfg
        sim.check_model(model_cfg.action_names, str(recover_from))
        chunk = model_cfg.chunk_size
        if not 1 <= open_loop_steps <= chunk:
            raise ValueError(f'open_loop_steps={open_loop_steps} is invalid: expected 1..{chunk}'
                             f' (the chunk size of {recover_from})')

    out = prepare_dataset_dir(out_dir, overwrite)

    per_task = {t: {'kept': 0, 'attempts': 0, 'failures': 0, 'failed_seeds': []}
                for t in tasks}
    kept: list[dict] = []
    max_attempts = 2 * episodes_per_task + 10
    t0 = time.perf_counter()
    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context('spawn')
        pool = ctx.Pool(workers, initializer=_init_worker,
                        initargs=(suite, sim_cfg, str(out), recover_from, open_loop_steps,
                                  recover_method))
    else:
        _init_worker(suite, sim_cfg, str(out), recover_from, open_loop_steps, recover_method)
    bar = tqdm(total=0, desc='demos', unit='ep')
    try:
        while True:
            jobs = []
            for t in tasks:
                s = per_task[t]
                need = min(episodes_per_task - s['kept'], max_attempts - s['attempts'])
                ti = names.index(t)
                jobs += [(t, episode_seed(seed, ti, s['attempts'] + j)) for j in range(need)]
                s['attempts'] += max(need, 0)
            if not jobs:
                break
            bar.total += len(jobs)
            bar.refresh()
            results = (pool.imap_unordered(_run_job, jobs) if pool is not None
                       else map(_run_job, jobs))
            for meta in results:
                s = per_task[meta['task']]
                if meta['success']:
                    s['kept'] += 1
                    kept.append(meta)
                else:
                    s['failures'] += 1
                    s['failed_seeds'].append(meta['seed'])
                    bar.set_postfix(failed=sum(v['failures'] for v in per_task.values()),
                                    refresh=False)
                bar.update(1)
    except BaseException:
        if pool is not None:
            pool.terminate()   # do not wait for queued episodes after an error or Ctrl-C
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
        else:
            _WORKER.pop('env').close()

    kept.sort(key=lambda m: (names.index(m['task']), m['seed']))
    for t in tasks:
        lengths = [m['length'] for m in kept if m['task'] == t]
        per_task[t]['mean_length'] = float(np.mean(lengths)) if lengths else None
        per_task[t]['failed_seeds'].sort()
    episodes = [{k: m[k] for k in ('file', 'task', 'instruction', 'seed', 'length')}
                for m in kept]
    index = {'format': FORMAT, 'suite': suite, 'split': 'demos',
             'action_names': list(sim.action_names),
             'cameras': list(sim_cfg.cameras), 'image_size': sim_cfg.image_size,
             'control_hz': sim_cfg.control_hz, 'seed': seed,
             'sim_config': dataclasses.asdict(sim_cfg),
             'recover_from': None if recover_from is None else str(recover_from),
             'recover_method': None if recover_from is None else recover_method,
             'open_loop_steps': None if recover_from is None else open_loop_steps,
             'episodes': episodes,
             'per_task': per_task}
    (out / 'index.json').write_text(json.dumps(index, indent=1))
    if kept:
        stats = action_stats(np.concatenate([m['actions'] for m in kept]), sim.action_names)
        (out / 'stats.json').write_text(json.dumps(stats, indent=1))
    return {'out_dir': str(out), 'suite': suite, 'episodes': len(kept),
            'steps': int(sum(m['length'] for m in kept)),
            'failures': sum(v['failures'] for v in per_task.values()),
            'complete': all(v['kept'] == episodes_per_task for v in per_task.values()),
            'seconds': time.perf_counter() - t0, 'per_task': per_task}


# ---- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the gen-demos options."""
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--suite', choices=list(SUITES), default=DEFAULT_SUITE,
                        help=f'simulation suite (default {DEFAULT_SUITE})')
    parser.add_argument('--episodes-per-task', type=int, default=100,
                        help='successful episodes to keep per task')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed')
    parser.add_argument('--workers', type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help='parallel worker processes')
    parser.add_argument('--image-size', type=int, default=64, help='camera resolution (px)')
    parser.add_argument('--cameras', nargs='+', default=None,
                        help="cameras to render (default: the suite's, e.g. front wrist)")
    parser.add_argument('--shadows', action='store_true', help='render shadows (slower)')
    parser.add_argument('--tasks', nargs='+', default=None,
                        help="subset of the suite's tasks (default all)")
    parser.add_argument('--overwrite', action='store_true', help='replace an existing dataset')
    parser.add_argument('--recover-from', metavar='MODEL', default=None,
                        help='record recovery demos: this model drives until near contact, '
                             'then the expert takes over (only its part is kept)')
    parser.add_argument('--recover-method', default='full', metavar='METHOD',
                        help='with --recover-from: how the model drives (default full depth; '
                             "dysl: the states a skipping policy visits, for distillation)")
    parser.add_argument('--open-loop-steps', type=int, default=OPEN_LOOP_STEPS,
                        help='with --recover-from: actions of each chunk the model executes '
                             'before its next inference')


def run(args: argparse.Namespace) -> int:
    """Generate demos from parsed arguments; print a per-task table; 0 if complete."""
    suite = get_suite(args.suite)
    tasks = tuple(args.tasks or suite.task_names)
    try:
        cfg = suite.config(image_size=args.image_size, shadows=args.shadows,
                           cameras=tuple(args.cameras or suite.config().cameras))
        _check_args(args.episodes_per_task, args.workers, args.seed, cfg, tasks, suite)
    except ValueError as e:
        print(f'gen-demos: {e}', file=sys.stderr)
        return 2
    try:
        summary = generate(args.out, args.episodes_per_task, seed=args.seed,
                           workers=args.workers, sim_cfg=cfg, tasks=tasks,
                           overwrite=args.overwrite, recover_from=args.recover_from,
                           open_loop_steps=args.open_loop_steps, suite=args.suite,
                           recover_method=args.recover_method)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f'gen-demos: {e}', file=sys.stderr)
        return 2
    print(f'{args.suite}, demos split (episode seeds below 10**9)')
    print(f'{"task":<22} {"kept":>5} {"attempts":>8} {"failures":>8} {"mean_len":>8}')
    for name, s in summary['per_task'].items():
        mean_len = math.nan if s['mean_length'] is None else s['mean_length']
        print(f'{name:<22} {s["kept"]:>5} {s["attempts"]:>8} {s["failures"]:>8} '
              f'{mean_len:>8.1f}')
    print(f'{summary["episodes"]} episodes kept, {summary["failures"]} failed expert episodes '
          f'dropped, {summary["steps"]} steps in '
          f'{summary["seconds"]:.1f} s -> {summary["out_dir"]}')
    if not summary['complete']:
        print('WARNING: some tasks did not reach --episodes-per-task successful episodes')
    return 0 if summary['complete'] else 1


if __name__ == '__main__':
    _parser = argparse.ArgumentParser(description='Generate expert demonstrations.')
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
