"""`python -m dysl_ros bench realtime`: chunks executed in real time over ROS 2, with policy
latency added, synchronous against asynchronous execution.

Every run starts the policy and controller nodes in their own processes, as `ros2 run` starts
them (DDS on loopback, a domain of its own), and per task a sim node process (the tabletop,
the split's first seed, the next one per episode); this process drives the episodes through
the topics (nodes.driver.EpisodeDriver) and hears every control tick on the controller's
`~/tick_stats`. A run is one added latency (--latencies, ms: the policy node's
extra_latency_ms, standing in for a bigger model or a slower robot computer) and one
execution (--executions):

- sync: the robot waits for each chunk, then runs its first --execute actions (policy
  schedule sync; controller replace without latency compensation: nothing elapsed while
  it waited);
- async-replace, async-ensemble, async-prefix: the next inference starts while the current
  chunk runs, timed from the online p95 to land before it runs out (policy schedule async);
  the controller replaces it, temporal-ensembles, or blends the overlap (prefix: the policy's
  guidance history also takes the actions that actually execute).

Figures per run: success per task with its 95% Wilson interval; idle fraction (sim steps
that held for lack of a command once the episode's first chunk arrived: every execution
waits for that one, and it is reported apart, in ticks); the command's change at chunk
switches against within chunks, per tick max over the delta joints of |c_t - c_(t-1)| /
(upper - lower limit), p95 and max (ticks after a hold excluded: a hold is not a switch);
chunk age when executed (now - its observation's stamp, p50 and p95); policy step and
camera-to-chunk p95; backbone layers run per policy step and the verified fraction. A
table, --json and --plot.

    python -m dysl_ros bench realtime --latencies 0 200 --episodes 10 --json runs/rt.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from ..bench.closed_loop import format_rate, success_rate
from ..paths import default_model_dir
from ..runtime.stats import percentile
from ..sim.splits import SPLITS, split_seeds
from ..sim.suites import DEFAULT_SUITE, get_suite

EXECUTIONS = {
    'sync': ({'schedule': 'sync'}, {'mode': 'replace', 'latency_compensation': False}),
    'async-replace': ({'schedule': 'async'}, {'mode': 'replace'}),
    'async-ensemble': ({'schedule': 'async'}, {'mode': 'ensemble'}),
    'async-prefix': ({'schedule': 'async', 'prefix_history': True}, {'mode': 'prefix'}),
}
TICKS_TOPIC = '/controller_node/tick_stats'
STARTUP_TIMEOUT = 120.0  # s for the nodes to load the model and connect


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=Path, default=None,
                        help='model directory (default: the embedded models/default)')
    parser.add_argument('--method', default='dysl', help='policy method (default dysl)')
    parser.add_argument('--latencies', type=float, nargs='+', default=[0, 100, 200, 400],
                        metavar='MS', help='policy latency added per step, ms '
                        '(default 0 100 200 400)')
    parser.add_argument('--executions', nargs='+', default=list(EXECUTIONS),
                        choices=list(EXECUTIONS), metavar='NAME',
                        help=f'default all: {", ".join(EXECUTIONS)}')
    parser.add_argument('--episodes', type=int, default=10, help='episodes per task '
                        '(default 10; 100 for a claimed figure)')
    parser.add_argument('--tasks', nargs='+', default=None, help='task names (default all)')
    parser.add_argument('--split', choices=list(SPLITS), default='validation',
                        help='seed range (sim/splits.py): validation (default) or test')
    parser.add_argument('--execute', type=int, default=8, metavar='N',
                        help='actions of each chunk executed per inference (default 8)')
    parser.add_argument('--json', metavar='PATH', help='write the figures as JSON')
    parser.add_argument('--plot', metavar='PATH', help='write a PNG plot of the figures')


def run(args: argparse.Namespace) -> int:
    from .launcher import ros_environment
    ros_environment()  # before rclpy loads; the node processes inherit it
    suite = get_suite(DEFAULT_SUITE)
    tasks = args.tasks or list(suite.task_names)
    unknown = sorted(set(tasks) - set(suite.task_names))
    if unknown or args.execute < 1 or min(args.latencies) < 0:
        print(f'error: unknown tasks {unknown}, --execute below 1 or a negative latency')
        return 2
    try:
        seeds = split_seeds(args.split, args.episodes)
    except ValueError as e:
        print(f'error: --episodes: {e}')
        return 2
    model = Path(args.model) if args.model else default_model_dir()
    print(f'bench realtime: {args.split} split, seeds {seeds.start}..{seeds.stop - 1} per task; '
          f'model {model} ({args.method}); {args.execute} actions per chunk at '
          f'{suite.control_hz:g} Hz')
    runs = []
    for latency in args.latencies:
        for execution in args.executions:
            r = run_one(model, args.method, execution, latency, tasks, seeds, args.execute)
            print(format_run(r))
            runs.append(r)
    print(format_table(runs, tasks))
    result = {'split': args.split, 'seeds': [seeds.start, seeds.stop - 1], 'model': str(model),
              'method': args.method, 'execute': args.execute, 'runs': runs}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n')
    if args.plot:
        plot(runs, Path(args.plot))
    return 0


def run_one(model: Path, method: str, execution: str, latency_ms: float, tasks: Sequence[str],
            seeds: range, execute: int, max_steps: int = 0) -> dict:
    """One latency x execution: the nodes started, every task's episodes, the figures.
    max_steps: the sim's episode limit (0: each task's own)."""
    from .driver import EpisodeDriver
    from .launcher import LocalLaunch, config_file, ros_args, wait_for
    from .soak_bench import NODES, NodeProcess, stop_all  # the policy and controller nodes
    policy_params, controller_params = EXECUTIONS[execution]
    with tempfile.TemporaryDirectory(prefix='dysl_realtime_') as tmp:
        params = Path(tmp) / 'params.yaml'
        params.write_text(yaml.safe_dump({
            '/**/policy_node': {'ros__parameters': {
                'model_path': str(model), 'method': method, 'autostart': True,
                'executed_actions': execute, 'extra_latency_ms': float(latency_ms),
                **policy_params}},
            '/**/controller_node': {'ros__parameters': {'tick_stats': True,
                                                        **controller_params}},
            '/**/sim_node': {'ros__parameters': {'seed': seeds.start,
                                                 'max_steps': max_steps}}}))
        files = [config_file('policy.yaml'), config_file('sim.yaml'), params]
        node_args = ros_args(files, log_level='warn')
        procs = [NodeProcess(n, m, node_args, Path(tmp) / f'{n}.log') for n, m in NODES.items()]
        episodes: list[dict] = []
        try:
            with LocalLaunch() as launch:
                driver = launch.add(EpisodeDriver)
                ticks = launch.add(_TickListener)
                launch.start()
                for task in tasks:
                    driver.forget_status()  # this sim counts its episodes from 1
                    sim = NodeProcess('sim_node', 'dysl_ros.nodes.sim_node', node_args,
                                      Path(tmp) / f'sim_{task}.log')
                    try:
                        wait_for(lambda: driver.instruction_pub.get_subscription_count() >= 3
                                 and ticks.heard(), STARTUP_TIMEOUT,
                                 'the sim, policy and controller nodes to connect')
                        instruction = suite_instruction(task)
                        for _ in seeds:
                            start = ticks.count()
                            row = driver.run_episode(instruction, timeout=120.0)
                            row['ticks'] = ticks.since(start)
                            episodes.append(row)
                    finally:
                        stop_all([sim])
                        wait_for(lambda: driver.instruction_pub.get_subscription_count() < 3,
                                 10.0, 'the sim node to leave')
        except Exception as e:  # a node that never came up: its log says why
            for p in procs:
                print(f'--- {p.name} log tail:\n{p.log_tail()}')
            raise RuntimeError(f'{execution} at {latency_ms:g} ms: {e}') from e
        finally:
            stop_all(procs)
    return summarise(execution, latency_ms, tasks, episodes)


def suite_instruction(task: str) -> str:
    return next(t.instruction for t in get_suite(DEFAULT_SUITE).tasks if t.name == task)


def _TickListener(context: Any) -> Any:
    """A node that keeps every ~/tick_stats record of the controller (a factory: rclpy is
    imported only when the bench runs)."""
    from rclpy.node import Node
    from std_msgs.msg import String

    from .qos import STATUS_QOS

    class TickListener(Node):
        def __init__(self) -> None:
            super().__init__('realtime_ticks', context=context)
            self._lock = threading.Lock()
            self._ticks: list[dict] = []
            self.create_subscription(String, TICKS_TOPIC, self._on_tick, STATUS_QOS)

        def _on_tick(self, msg: Any) -> None:
            with self._lock:
                self._ticks.append(json.loads(msg.data))

        def heard(self) -> bool:
            return self.count() > 0

        def count(self) -> int:
            with self._lock:
                return len(self._ticks)

        def since(self, start: int) -> list[dict]:
            with self._lock:
                return self._ticks[start:]

    return TickListener()


# ---- figures ------------------------------------------------------------------------------
def command_changes(ticks: Sequence[dict], scale: np.ndarray, delta: np.ndarray
                    ) -> tuple[list[float], list[float]]:
    """Per tick after a non-hold tick: max over the delta joints of |c_t - c_(t-1)| / scale,
    split into (at a switch, within a chunk)."""
    at_switch, within = [], []
    for prev, tick in zip(ticks, ticks[1:]):
        if prev['hold'] or tick['hold']:
            continue
        step = np.abs(np.subtract(tick['command'], prev['command']))[delta] / scale[delta]
        (at_switch if tick['switch'] else within).append(float(step.max()))
    return at_switch, within


def summarise(execution: str, latency_ms: float, tasks: Sequence[str], episodes: list[dict]
              ) -> dict:
    """The figures of one run (JSON-ready); the ticks themselves are not kept."""
    suite = get_suite(DEFAULT_SUITE)
    limits = suite.controller_params()
    scale = np.subtract(limits['upper_limits'], limits['lower_limits'])
    delta = np.array([n not in suite.absolute_actions for n in suite.action_names])
    at_switch, within, ages = [], [], []
    for e in episodes:
        ticks = e.pop('ticks')
        # the episode's first inference: every execution waits for it, so it is kept apart
        e['first_chunk_holds'] = min(e['holds'], next(
            (i for i, t in enumerate(ticks) if not t['hold']), len(ticks)))
        s, w = command_changes(ticks, scale, delta)
        at_switch += s
        within += w
        ages += [t['chunk_age_ms'] for t in ticks if t['chunk_age_ms'] is not None]
    steps = sum(e['steps'] for e in episodes)
    holds = sum(e['holds'] for e in episodes)
    waiting = sum(e['first_chunk_holds'] for e in episodes)
    inferred = [e for e in episodes if e['chunks']]
    chunks = sum(e['chunks'] for e in inferred)
    return {
        'execution': execution, 'latency_ms': latency_ms,
        'success': {t: success_rate([e['success'] for e in episodes if e['task'] == t])
                    for t in tasks},
        'success_mean': success_rate([e['success'] for e in episodes]),
        'idle_fraction': (holds - waiting) / max(steps - waiting, 1),
        'first_chunk_ticks': percentile([e['first_chunk_holds'] for e in episodes], 50),
        'hold_fraction': holds / max(steps, 1),
        'switch_change': {'p95': percentile(at_switch, 95), 'max': max(at_switch, default=None),
                          'n': len(at_switch)},
        'within_change': {'p95': percentile(within, 95), 'max': max(within, default=None),
                          'n': len(within)},
        'chunk_age_ms': {'p50': percentile(ages, 50), 'p95': percentile(ages, 95)},
        # per policy step (each episode's mean weighted by its chunks), of layers_total
        'layers_run_mean': (sum(e['layers_run_mean'] * e['chunks'] for e in inferred) / chunks
                            if chunks else None),
        'layers_total': inferred[0]['layers_total'] if inferred else None,
        'verified_fraction': sum(e['verified'] for e in inferred) / chunks if chunks else None,
        # per-episode p95s (None: an episode without chunks), their median
        'policy_ms_p95': percentile([e['policy_ms_p95'] for e in episodes
                                     if e['policy_ms_p95'] is not None], 50),
        'camera_to_chunk_ms_p95': percentile([e['camera_to_chunk_ms_p95'] for e in episodes
                                              if e['camera_to_chunk_ms_p95'] is not None], 50),
        'episodes': episodes,
    }


def _num(v: Optional[float], fmt: str = '.3f') -> str:
    return '-' if v is None else format(v, fmt)


def format_run(r: dict) -> str:
    """One line as a run ends."""
    return (f'{r["execution"]} at +{r["latency_ms"]:g} ms: success '
            f'{format_rate(r["success_mean"])}, idle {r["idle_fraction"]:.1%} after the first chunk, change at switches p95 '
            f'{_num(r["switch_change"]["p95"])} vs within {_num(r["within_change"]["p95"])}')


def format_table(runs: Sequence[dict], tasks: Sequence[str]) -> str:
    """Success per task, idle fraction, command changes, chunk age, latency per run."""
    head = (f'{"execution":<16}{"+ms":>5}' + ''.join(f'{t:>17}' for t in tasks) +
            f'{"all":>17}{"idle":>7}{"first":>6}{"switch p95":>11}{"max":>7}'
            f'{"within p95":>11}{"max":>7}'
            f'{"age p50":>8}{"p95":>6}{"step p95":>9}{"c2c p95":>8}{"layers":>7}')
    lines = [head, '-' * len(head)]
    for r in runs:
        sw, wi, age = r['switch_change'], r['within_change'], r['chunk_age_ms']
        lines.append(
            f'{r["execution"]:<16}{r["latency_ms"]:>5g}'
            + ''.join(f'{format_rate(r["success"][t]):>17}' for t in tasks)
            + f'{format_rate(r["success_mean"]):>17}{r["idle_fraction"]:>7.1%}'
            f'{r["first_chunk_ticks"]:>6.0f}'
            f'{_num(sw["p95"]):>11}{_num(sw["max"]):>7}{_num(wi["p95"]):>11}'
            f'{_num(wi["max"]):>7}{_num(age["p50"], ".0f"):>8}{_num(age["p95"], ".0f"):>6}'
            f'{_num(r["policy_ms_p95"], ".0f"):>9}{_num(r["camera_to_chunk_ms_p95"], ".0f"):>8}'
            f'{_num(r["layers_run_mean"], ".1f"):>7}')
    lines.append('idle: sim steps held for lack of a command once the episode\'s first chunk '
                 'arrived; first: ticks held before it (median); switch / within: per tick max '
                 'over delta joints of |command change| / limit range; age: ms from a '
                 "chunk's observation to its action's tick; step, c2c: per-episode p95, median; "
                 'layers: backbone layers run per policy step (mean)')
    return '\n'.join(lines)


def plot(runs: Sequence[dict], path: Path) -> None:
    """Success, idle fraction and switch / within change against added latency, per
    execution (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for execution in dict.fromkeys(r['execution'] for r in runs):
        rs = sorted((r for r in runs if r['execution'] == execution),
                    key=lambda r: r['latency_ms'])
        x = [r['latency_ms'] for r in rs]
        rate = np.array([r['success_mean']['rate'] for r in rs])
        err = np.array([[r['success_mean']['rate'] - r['success_mean']['low'],
                         r['success_mean']['high'] - r['success_mean']['rate']] for r in rs]).T
        axes[0].errorbar(x, rate, yerr=err, marker='o', capsize=3, label=execution)
        axes[1].plot(x, [r['idle_fraction'] for r in rs], marker='o', label=execution)
        ratio = [None if not r['within_change']['p95'] or r['switch_change']['p95'] is None
                 else r['switch_change']['p95'] / r['within_change']['p95'] for r in rs]
        axes[2].plot(x, [np.nan if v is None else v for v in ratio], marker='o', label=execution)
    for ax, title in zip(axes, ('success (95% CI)', 'idle fraction',
                                'command change p95: switch / within')):
        ax.set_xlabel('added policy latency (ms)')
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].axhline(1.5, color='gray', linestyle='--', linewidth=1)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
