"""Each task's scripted expert over N seeded episodes of a suite: success rate, mean episode
length, steps/s (exit 1 below 95%).

    python -m dysl_ros.sim.check_experts --episodes 50            # tabletop, no rendering
    python -m dysl_ros.sim.check_experts --episodes 10 --render   # with the 64 px cameras
    python -m dysl_ros.sim.check_experts --suite metaworld-mt10 --episodes 5 --seed 1000000000
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from dysl_ros.sim.expert import run_episode


def main(argv: list[str] | None = None) -> int:
    """Print per-task expert success rate, mean episode length and steps/s."""
    from tqdm import tqdm

    from dysl_ros.sim.suites import DEFAULT_SUITE, SUITES
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--suite', choices=list(SUITES), default=DEFAULT_SUITE,
                   help='simulation suite (sim/suites.py)')
    p.add_argument('--episodes', type=int, default=50, help='episodes per task')
    p.add_argument('--seed', type=int, default=0, help='first seed (seeds seed..seed+N-1)')
    p.add_argument('--render', action='store_true', help="render the suite's cameras")
    p.add_argument('--image-size', type=int, default=64)
    p.add_argument('--shadows', action='store_true', help='render shadows (slower)')
    p.add_argument('--tasks', nargs='*', default=None, help="default: the suite's tasks")
    args = p.parse_args(argv)
    suite = SUITES[args.suite]
    cfg = suite.config(image_size=args.image_size, shadows=args.shadows,
                       cameras=suite.config().cameras if args.render else ())
    env = suite.make_env(cfg)
    rows, all_ok = [], True
    try:
        for name in args.tasks or suite.task_names:
            results, t0 = [], time.perf_counter()
            for i in tqdm(range(args.episodes), desc=name, leave=False):
                results.append(run_episode(env, args.seed + i, name,
                                           expert=suite.make_expert))
            dt = time.perf_counter() - t0
            steps = sum(r['length'] for r in results)
            ok = [r for r in results if r['success']]
            rate = len(ok) / len(results)
            all_ok &= rate >= 0.95
            failed = [r['seed'] for r in results if not r['success']]
            rows.append((name, len(ok), len(results), rate,
                         np.mean([r['length'] for r in ok]) if ok else float('nan'),
                         steps / dt, failed))
    finally:
        env.close()
    print(f'{args.suite}: render={args.render} image_size={args.image_size} '
          f'shadows={cfg.shadows} MUJOCO_GL={os.environ.get("MUJOCO_GL")}')
    print(f'{"task":<22} {"success":>9} {"rate":>6} {"mean_len":>9} {"steps/s":>8}  failed seeds')
    for name, n_ok, n, rate, mean_len, sps, failed in rows:
        print(f'{name:<22} {n_ok:>4}/{n:<4} {rate:>6.2f} {mean_len:>9.1f} {sps:>8.0f}  '
              f'{failed[:10]}')
    return 0 if all_ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
