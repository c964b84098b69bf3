"""The main job: the closed-loop demo over real ROS 2 topics.

The simulation (sim_node: the MuJoCo tabletop, or with --suite metaworld-mt10 Meta-World's
MT10), the DySL policy (policy_node) and the chunk controller (controller_node) run as ROS
nodes in this process, spun by one MultiThreadedExecutor: the same nodes and parameter files
as launch/sim_demo.launch.py, without `ros2 launch`. The suite sets the sim's suite and
cameras (the model's), the policy's cameras and control rate, and the controller's joint
names, limits, rate and gripper convention (suite_params, a parameters file between
config/*.yaml and --params-file); a model made for another suite's actions is refused. For each
task it runs a few episodes and prints one row per episode: success, steps, how many steps the
robot held for lack of a command, chunks, mean layers run, verifications, chunks the
controller dropped (too old, too late, ... by reason in --json), frames the policy found
stale, and latency (policy step and camera to chunk, medians). The nodes log errors only
(--verbose: everything from info up); on a terminal a progress bar stands below the table.

The model is models/default (tabletop) when it is there; otherwise, and for another suite
without --model, a freshly built random model for the suite (the command still works end to
end; its success rate is zero). DDS stays on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in ROS_DOMAIN_ID, or a random domain when unset.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml
from tqdm import tqdm

from ..export.random_model import build_random_model_apart
from ..model.io import VLA_JSON
from ..runtime.chunking import MODES
from ..runtime.loading import model_interface
from ..runtime.messages import camera_topic
from ..sim.suites import DEFAULT_SUITE, SUITES, Suite, get_suite

DEFAULT_EPISODES = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--suite', choices=list(SUITES), default=DEFAULT_SUITE,
                        help=f'simulation suite (default {DEFAULT_SUITE}); the model must act '
                        'in its action names')
    parser.add_argument('--model', metavar='DIR', help='model directory (default: the '
                        "suite's shipped model, models/default for the tabletop, "
                        'models/metaworld for metaworld-mt10; a random model while it does '
                        'not exist)')
    parser.add_argument('--backend', default='torch',
                        choices=('torch', 'onnxruntime', 'tensorrt'), help='default torch')
    parser.add_argument('--method', default='dysl', help='dysl (default), full, or a '
                        'baseline / ablation name')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    parser.add_argument('--episodes', type=int, default=DEFAULT_EPISODES,
                        help=f'episodes per task (default {DEFAULT_EPISODES})')
    parser.add_argument('--tasks', nargs='+', metavar='NAME',
                        help='task names of the suite, or any unique part of one (drawer: '
                        'open_drawer); default: every task')
    parser.add_argument('--max-steps', type=int, default=0,
                        help='episode time limit in steps (default: each task\'s own)')
    parser.add_argument('--mode', default='replace', choices=MODES,
                        help='how the controller splices chunks (default replace)')
    parser.add_argument('--seed', type=int, default=0, help='first episode seed (default 0)')
    parser.add_argument('--execute', type=int, default=8, metavar='N',
                        help='actions of each chunk executed before the next inference (the '
                        'policy infers at control rate / N); default 8, as the default model '
                        'was calibrated and benchmarked; 1 replans every control tick')
    parser.add_argument('--threads', type=int, default=1,
                        help='intra-op threads of the policy (torch, onnxruntime); default 1: '
                        'the sim, the executor and the policy share the cores (2 torch threads '
                        'on 2 cores: steps 2x slower on median, 25x at worst)')
    parser.add_argument('--params-file', action='append', default=[], metavar='PATH',
                        help='ROS parameters file for the nodes, over config/policy.yaml and '
                        'config/sim.yaml (repeatable; a later file wins)')
    parser.add_argument('--json', metavar='PATH', help='also write the rows as JSON')
    parser.add_argument('--verbose', action='store_true',
                        help='show the nodes\' logs from info up (default: errors only) and no '
                        'progress bar')


def select_tasks(wanted: Optional[list[str]], suite: Optional[Suite] = None) -> list:
    """The suite's tasks (default the tabletop's) named in `wanted` (a name, or a part of
    exactly one name), in the suite's order; every task when None. ValueError names what
    matched none or several."""
    tasks = (suite or get_suite(DEFAULT_SUITE)).tasks
    names = [t.name for t in tasks]
    chosen = set()
    for word in wanted or names:
        hits = [n for n in names if n == word] or [n for n in names if word in n]
        if len(hits) != 1:
            raise ValueError(f'--tasks {word!r} matches {hits or "no task"}; known: {names}')
        chosen.add(hits[0])
    return [t for t in tasks if t.name in chosen]


def suite_params(suite: Suite, cameras: tuple[str, ...]) -> dict:
    """The nodes' parameters for this suite and a model with these cameras (primary first),
    as a parameters file: the sim renders the model's cameras, the policy reads them and
    times its chunks at the suite's rate, the controller executes the suite's actions."""
    def names() -> list[str]:  # a fresh list each time: no YAML anchors and aliases in the file
        return list(cameras)

    def topics() -> list[str]:
        return [camera_topic(c) for c in cameras]

    return {
        '/**/sim_node': {'ros__parameters': {
            'suite': suite.name, 'cameras': names(), 'camera_topics': topics()}},
        '/**/policy_node': {'ros__parameters': {
            'camera_names': names(), 'camera_topics': topics(),
            'control_rate': suite.control_hz}},
        '/**/controller_node': {'ros__parameters': suite.controller_params()},
    }


def run(args: argparse.Namespace) -> int:
    suite = get_suite(args.suite)
    tasks = select_tasks(args.tasks, suite)
    if min(args.episodes, args.threads, args.execute) < 1:
        print(f'error: --episodes={args.episodes}, --threads={args.threads} and '
              f'--execute={args.execute} must be >= 1')
        return 2
    with tempfile.TemporaryDirectory(prefix='dysl_demo_') as tmp:
        model = Path(args.model) if args.model else suite.default_model
        if not args.model and not (model / VLA_JSON).is_file():
            print(f'note: no trained {suite.name} model in {model} yet; using a freshly built '
                  'random model instead (everything runs, nothing succeeds)')
            model = build_random_model_apart(Path(tmp) / 'random', seed=args.seed,
                                             export=args.backend != 'torch',
                                             cameras=suite.cameras,
                                             action_names=suite.action_names)
        actions, cameras = model_interface(model)
        suite.check_model(actions, str(model))
        params = Path(tmp) / 'suite.yaml'
        params.write_text(yaml.safe_dump(suite_params(suite, cameras)))
        rows = run_demo(model, tasks, args, suite, params, cameras)
    if rows is None:
        return 1
    _print_summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({'model': str(model), 'rows': rows}, indent=2))
    return 0


def run_demo(model: Path, tasks: list, args: argparse.Namespace, suite: Optional[Suite] = None,
             suite_file: Optional[Path] = None, cameras: tuple[str, ...] = ('front', 'wrist')
             ) -> Optional[list[dict]]:
    """Start the three nodes and the driver, run the episodes, return one row per episode.
    suite_file: the suite's parameters (suite_params), applied over config/*.yaml and under
    --params-file; cameras: the model's."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from ..nodes.controller_node import ControllerNode
    from ..nodes.driver import EpisodeDriver
    from ..nodes.launcher import LocalLaunch, config_file, publishers_matched, wait_for
    from ..nodes.policy_node import PolicyNode
    from ..nodes.sim_node import SimNode

    suite = suite or get_suite(DEFAULT_SUITE)
    files = [config_file('policy.yaml'), config_file('sim.yaml')] + \
        ([suite_file] if suite_file else []) + [Path(f) for f in args.params_file]
    rows: list[dict] = []
    with LocalLaunch(files, log_level=None if args.verbose else 'error') as launch:
        print(f'ROS 2 on this machine only, domain {launch.env["ROS_DOMAIN_ID"]}; model {model} '
              f'({args.backend}, {args.method}); suite {suite.name}')
        launch.add(SimNode, parameter_overrides=[
            Parameter('seed', value=args.seed), Parameter('max_steps', value=args.max_steps)])
        policy = launch.add(PolicyNode, parameter_overrides=[
            Parameter('model_path', value=str(model)), Parameter('backend', value=args.backend),
            Parameter('method', value=args.method), Parameter('device', value=args.device),
            Parameter('torch_threads', value=args.threads),
            Parameter('ort_threads', value=args.threads),
            Parameter('executed_actions', value=args.execute)])
        rate_hz = policy.get_parameter('control_rate').value
        rate = rate_hz / args.execute
        policy.set_parameters([Parameter('inference_rate', value=rate)])
        controller = launch.add(ControllerNode, parameter_overrides=[
            Parameter('mode', value=args.mode)])
        driver = launch.add(EpisodeDriver)
        launch.start()
        if policy.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            print(f'error: the policy node did not configure: {policy.error_text}')
            return None
        policy.trigger_activate()
        # every topic of the loop matched before the first instruction (none may be lost)
        topics = ['/instruction', '/action_chunk', '/command', '/episode_status',
                  '/policy_node/step_stats'] + ['/' + camera_topic(c) for c in cameras]
        wait_for(lambda: driver.instruction_pub.get_subscription_count() >= 3
                 and publishers_matched(launch.nodes, topics), 30.0,
                 'the nodes to discover each other')
        print(HEADER)
        episodes = [task for task in tasks for _ in range(args.episodes)]
        # the bar only on a terminal (disable=None), cleared by tqdm.write before each row;
        # none with --verbose, whose log lines would break it
        with tqdm(total=len(episodes), desc='episodes', unit='ep', leave=False,
                  disable=True if args.verbose else None) as bar:
            for n, task in enumerate(episodes):
                bar.set_postfix_str(task.name)
                limit = args.max_steps or task.max_steps
                before = episode_counts(controller, policy)
                row = driver.run_episode(task.instruction, timeout=limit / rate_hz * 4 + 30.0)
                row.update(count_delta(before, episode_counts(controller, policy)))
                rows.append(row)
                tqdm.write(format_row(n, row), file=sys.stdout)
                bar.update()
    return rows


def episode_counts(controller: Any, policy: Any) -> dict[str, Counter]:
    """The controller's dropped chunks by reason and the policy's errors by kind, so far.

    Read without the nodes' locks: dict() copies a Counter in one C call under the GIL, so a
    copy is never half-updated; a count racing the copy lands in the next episode's delta.
    """
    return {'dropped': Counter(dict(controller.chunks.stats.dropped)),
            'errors': Counter(dict(policy.stats.errors))}


def count_delta(before: dict[str, Counter], after: dict[str, Counter]) -> dict:
    """The table's per-episode counts: chunks the controller dropped (any reason) and frames
    the policy found stale, between two episode_counts."""
    dropped = after['dropped'] - before['dropped']
    return {'dropped_chunks': sum(dropped.values()), 'dropped_by_reason': dict(dropped),
            'stale_frames': (after['errors'] - before['errors'])['stale']}


HEADER = (f'{"ep":>3} {"task":<15} {"success":>7} {"steps":>5} {"holds":>5} {"chunks":>6} '
          f'{"layers":>11} {"verified":>8} {"dropped":>7} {"stale":>5} {"policy ms":>9} '
          f'{"cam->chunk ms":>13}')


def format_row(n: int, r: dict) -> str:
    """One table line under HEADER."""
    layers = (f'{r["layers_run_mean"]:.1f}/{r["layers_total"]}'
              if r['layers_run_mean'] is not None else 'n/a')
    ms = (lambda v: f'{v:.1f}' if v is not None else 'n/a')
    return (f'{n:>3} {r["task"]:<15} {str(r["success"]):>7} {r["steps"]:>5} {r["holds"]:>5} '
            f'{r["chunks"]:>6} {layers:>11} {r["verified"]:>8} {r["dropped_chunks"]:>7} '
            f'{r["stale_frames"]:>5} {ms(r["policy_ms_p50"]):>9} '
            f'{ms(r["camera_to_chunk_ms_p50"]):>13}')


def _print_summary(rows: list[dict]) -> None:
    tasks = sorted({r['task'] for r in rows})
    parts = [f'{t} {np.mean([r["success"] for r in rows if r["task"] == t]):.0%}'
             for t in tasks]
    print('success: ' + ', '.join(parts) +
          f'; overall {np.mean([r["success"] for r in rows]):.0%} of {len(rows)} episodes')
    dropped = sum((Counter(r['dropped_by_reason']) for r in rows), Counter())
    stale = sum(r['stale_frames'] for r in rows)
    if dropped or stale:
        reasons = ', '.join(f'{k} {v}' for k, v in sorted(dropped.items())) or 'none'
        print(f'chunks dropped by the controller: {reasons}; stale frames: {stale} '
              '(--verbose shows the nodes\' warnings)')
