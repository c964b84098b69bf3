"""`python -m dysl_ros record`: simulated episodes, expert or policy, into a rosbag2 bag.

No DDS: the tool drives a simulation suite (--suite, sim/suites.py: the MuJoCo tabletop by
default, or metaworld-mt10) and the expert or policy directly, and writes the messages the
nodes would publish, on the nodes' default topics (dysl_ros.bags.topics):

    per episode   /instruction            the task's instruction (starts the episode)
    per step      /image, /wrist/image    the observation (stamp = the step's time); the
                                          suite's cameras (MT10: /corner/image,
                                          /gripperPOV/image)
                  /episode_status         JSON as the sim node + 'phase' (the scripted
                                          expert's phase; for policy episodes the phase an
                                          expert tracking the same state would be in)
                  /command                the action applied (expert: its action; policy:
                                          chunk action, clipped to the suite's limits as
                                          the controller clips)
    per chunk     /action_chunk           the chunk, as the policy node publishes it
                  /policy_node/step_stats JSON as the policy node + 'continuity',
                                          'continuity_change' and 'guidance': the ring
                                          buffer and allow points before the step, so that a
                                          replay can restore them and reproduce each skip

Time is simulated, not wall time: step k of an episode is stamped t0 + lead + k / control_hz
(the policy infers on each observation it acts on; --execute N runs N actions per chunk).
Expert episodes carry no chunk. The bag's custom data (BAG_FORMAT) names the suite, its
action names, the cameras and the rate, which `replay` reads. `ros2 bag info` / `ros2 bag
play` read the bag on a robot.

    python -m dysl_ros record --out bags/expert --episodes 2
    python -m dysl_ros record --out bags/dysl --source policy --model models/default
    python -m dysl_ros record --suite metaworld-mt10 --out bags/mt10 --tasks drawer_close
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from ..runtime.loading import BACKENDS, PolicyOptions, open_policy
from ..runtime.messages import EpisodeStatus, StepStats, camera_topic
from ..sim.suites import DEFAULT_SUITE, SUITES, get_suite
from ..validation import require
from .bagfile import STORAGES, BagWriter
from .policies import guidance_of
from .topics import (MSG_CHUNK, MSG_COMMAND, MSG_IMAGE, MSG_STRING, TopicMap,
                     add_topic_arguments, chunk_msg, command_msg, image_msg, string_msg,
                     topics_from_args)

SOURCES = ('expert', 'policy')
BAG_FORMAT = 'dysl_ros.bag/1'
LEAD_NS = 100_000_000  # instruction -> first frame of an episode
CHUNK_OFFSET_NS = 1_000  # chunk and step statistics: just after their frame
COMMAND_OFFSET_NS = 2_000  # command: just after the chunk


@dataclass(frozen=True)
class RecordConfig:
    """What to record.

    Args:
        source: 'expert' (scripted expert acts) or 'policy' (the policy acts).
        suite: the simulation suite (sim/suites.py) whose tasks, expert and action limits
            are used; the env given to record() must be one of its envs.
        tasks: task names of the suite; empty: every task.
        episodes: episodes per task.
        seed: seed of the first episode; each episode uses the next.
        execute: policy only: actions executed per chunk before the next inference (1: a new
            chunk on every observation, as the policy node with a fast model).
        control_hz: control rate: one observation and one command per 1 / control_hz; 0:
            the env's rate.
        episode_gap: seconds of bag time between the end of an episode and the next one.
        start_ns: bag time of the first instruction (ns since the epoch); 0: now.
    """

    source: str = 'expert'
    suite: str = DEFAULT_SUITE
    tasks: tuple[str, ...] = ()
    episodes: int = 1
    seed: int = 0
    execute: int = 1
    control_hz: float = 0.0
    episode_gap: float = 0.5
    start_ns: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, 'tasks', tuple(self.tasks))
        require(self.source in SOURCES, 'source', self.source, f'one of {SOURCES}')
        require(self.episodes >= 1, 'episodes', self.episodes, '>= 1')
        require(self.seed >= 0, 'seed', self.seed, '>= 0')
        require(self.execute >= 1, 'execute', self.execute, '>= 1')
        require(self.control_hz >= 0, 'control_hz', self.control_hz, '>= 0 (0: the env\'s)')
        require(self.episode_gap >= 0, 'episode_gap', self.episode_gap, '>= 0 s')
        require(self.start_ns >= 0, 'start_ns', self.start_ns, '>= 0')

    @property
    def dt_ns(self) -> int:
        return int(round(1e9 / self.control_hz))


@dataclass
class _Clock:
    """Bag time of the recording and the chunk sequence number."""

    now: int
    seq: int = 0


def record(out: Path | str, cfg: RecordConfig, topics: TopicMap, env: Any,
           policy: Optional[Any] = None, storage: str = 'mcap', info: Optional[dict] = None,
           progress: bool = True) -> dict:
    """Run the episodes in `env` (an env of cfg.suite whose cameras are the topic map's) and
    write the bag; returns a summary. policy is required for source 'policy' and must act in
    the suite's action names."""
    sim = get_suite(cfg.suite)
    if cfg.source == 'policy' and policy is None:
        raise ValueError("source='policy' needs a policy")
    if not isinstance(env.cfg, sim.config):
        raise ValueError(f'the env ({type(env).__name__}) is not one of the {sim.name} suite '
                         f'({sim.config.__name__} expected): make it with '
                         f'get_suite({sim.name!r}).make_env')
    unknown = [t for t in cfg.tasks if t not in sim.task_names]
    if unknown:
        raise ValueError(f'tasks={unknown} are unknown in suite {sim.name}: expected names '
                         f'from {sim.task_names}')
    if not cfg.control_hz:
        cfg = dataclasses.replace(cfg, control_hz=float(env.cfg.control_hz))
    if abs(env.cfg.control_hz - cfg.control_hz) > 1e-9:
        raise ValueError(f'control_hz={cfg.control_hz} differs from the sim\'s '
                         f'{env.cfg.control_hz}: one command per sim step')
    missing = [c for c in topics.camera_names if c not in env.cfg.cameras]
    if missing:
        raise ValueError(f'cameras {missing} of the topic map are not rendered by the sim '
                         f'(its cameras: {list(env.cfg.cameras)})')
    if policy is not None:
        sim.check_model(policy.spec.action_names)
        cams = list(policy.spec.cameras)
        if sorted(cams) != sorted(topics.camera_names):
            raise ValueError(f'the model\'s cameras {cams} differ from the topic map\'s '
                             f'{list(topics.camera_names)}')
        if cfg.execute > policy.spec.chunk_size:
            raise ValueError(f'execute={cfg.execute} exceeds the model\'s chunk size '
                             f'{policy.spec.chunk_size}')
        guidance = guidance_of(policy)
        if guidance is not None:  # its history must be what the robot did
            executed = guidance.cfg.executed_actions or policy.spec.chunk_size
            if executed != cfg.execute:
                raise ValueError(f'the policy\'s guidance puts {executed} actions of each '
                                 f'chunk into its history, but execute={cfg.execute} run: '
                                 f"open it with guidance={{'executed_actions': {cfg.execute}}}")
    lower, upper = np.array(sim.action_low), np.array(sim.action_high)
    tasks = [t for t in sim.tasks if not cfg.tasks or t.name in cfg.tasks]
    jobs = [(t, cfg.seed + i)
            for i, t in enumerate(t for t in tasks for _ in range(cfg.episodes))]
    clock = _Clock(now=cfg.start_ns or time.time_ns())
    summary = {'bag': str(out), 'episodes': [], 'steps': 0, 'chunks': 0}
    info = {'format': BAG_FORMAT, 'source': cfg.source, 'suite': sim.name,
            'action_names': list(sim.action_names), 'control_hz': cfg.control_hz,
            'execute': cfg.execute, 'cameras': [list(c) for c in topics.cameras],
            'image_size': env.cfg.image_size, **(info or {})}
    with BagWriter(out, storage, info) as bag:
        for n, (task, seed) in enumerate(tqdm(jobs, desc='record', unit='ep',
                                              disable=not progress)):
            expert = sim.make_expert(env)
            row = _episode(bag, env, expert, policy, task, seed, n + 1, cfg, topics, clock,
                           lower, upper)
            summary['episodes'].append(row)
            summary['steps'] += row['steps']
            summary['chunks'] += row['chunks']
            clock.now += int(cfg.episode_gap * 1e9)
        summary['counts'] = dict(bag.counts)
    return summary


def _episode(bag: BagWriter, env: Any, expert: Any, policy: Optional[Any], task: Any,
             seed: int, episode: int, cfg: RecordConfig, topics: TopicMap, clock: _Clock,
             lower: np.ndarray, upper: np.ndarray) -> dict:
    obs = env.reset(seed=seed, task=task.name)
    if policy is not None:
        policy.reset()
    bag.write(topics.instruction, MSG_STRING, clock.now, string_msg(task.instruction))
    t = clock.now + LEAD_NS
    status = dict(episode=episode, seed=seed, task=task.name, instruction=task.instruction,
                  holds=0, error=None)
    queue: list[np.ndarray] = []
    done, info, chunks, phase = False, {'success': False, 'timeout': False}, 0, None
    while not done:
        step = env.step_count
        action = expert.act()  # policy episodes: only for its phase
        phase = expert.phase
        bag.write(topics.status, MSG_STRING, t, string_msg(EpisodeStatus(
            **status, step=step, done=False, success=False, timeout=False,
            extra={'source': cfg.source, 'phase': phase}).to_json()))
        for camera, topic in reversed(topics.cameras):  # primary last, as the sim node
            bag.write(topic, MSG_IMAGE, t, image_msg(obs.images[camera], t, camera))
        if policy is not None:
            if not queue:
                queue = _infer(bag, policy, obs, task.instruction, episode, t, cfg, topics,
                               clock)
                chunks += 1
            action = np.clip(queue.pop(0), lower, upper)
        bag.write(topics.command, MSG_COMMAND, t + COMMAND_OFFSET_NS, command_msg(action))
        obs, done, info = env.step(action)
        t += cfg.dt_ns
    bag.write(topics.status, MSG_STRING, t, string_msg(EpisodeStatus(
        **status, step=env.step_count, done=True, success=bool(info['success']),
        timeout=bool(info['timeout']), extra={'source': cfg.source, 'phase': phase}).to_json()))
    clock.now = t
    return {'episode': episode, 'task': task.name, 'seed': seed, 'steps': env.step_count,
            'chunks': chunks, 'success': bool(info['success'])}


def _infer(bag: BagWriter, policy: Any, obs: Any, instruction: str, episode: int, t: int,
           cfg: RecordConfig, topics: TopicMap, clock: _Clock) -> list[np.ndarray]:
    """One policy step on the observation stamped t: write chunk + statistics, return the
    actions to execute."""
    guidance = guidance_of(policy)
    before = guidance_state_json(guidance) if guidance is not None else None
    t0 = time.perf_counter()
    chunk, stats = policy.step(obs.images, instruction)
    policy_ms = (time.perf_counter() - t0) * 1e3
    spec = policy.spec
    bag.write(topics.chunk, MSG_CHUNK, t + CHUNK_OFFSET_NS,
              chunk_msg(chunk, spec.action_names, t, 1.0 / cfg.control_hz))
    clock.seq += 1
    bag.write(topics.stats, MSG_STRING, t + CHUNK_OFFSET_NS, string_msg(StepStats(
        seq=clock.seq, episode=episode, stamp_ns=t, layers_run=stats.layers_run,
        layers_total=stats.layers_total, layer_ids=list(stats.layer_ids),
        skipped_at=list(stats.skipped_at), verified=bool(stats.verified),
        allow_points=[int(a) for a in stats.allow_points], policy_ms=policy_ms,
        camera_to_chunk_ms=policy_ms, latency_ms=dict(stats.latency_ms),
        extra={'continuity': stats.continuity, 'continuity_change': stats.continuity_change,
               'guidance': before}).to_json()))
    return [a for a in np.asarray(chunk, dtype=np.float64)[:cfg.execute]]


def guidance_state_json(guidance: Any) -> dict:
    """Guidance.state_dict() as JSON-ready lists (floats round-trip exactly through JSON)."""
    s = guidance.state_dict()
    return {'buffer': np.asarray(s['buffer'], dtype=np.float64).tolist(), 'c': s['c'],
            'dc': s['dc'], 'allow_points': [int(a) for a in s['allow_points']],
            'history': int(s['history']), 'segments': [list(x) for x in s['segments']]}


def guidance_state_from_json(data: dict) -> dict:
    """The inverse of guidance_state_json: a dict Guidance.load_state_dict accepts."""
    buf = np.asarray(data['buffer'], dtype=np.float64)
    return {'buffer': buf if buf.size else np.zeros((0, 0)), 'c': data['c'], 'dc': data['dc'],
            'allow_points': np.asarray(data['allow_points'], dtype=np.int64),
            'history': data['history'], 'segments': data['segments']}


def default_topics(cameras: tuple[str, ...]) -> TopicMap:
    """The nodes' default topics for these cameras (front: /image, other: /<name>/image)."""
    return TopicMap(cameras=tuple((c, '/' + camera_topic(c)) for c in cameras))


# ---- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m dysl_ros record`."""
    d = RecordConfig()
    parser.add_argument('--out', required=True, type=Path, help='bag directory to create')
    parser.add_argument('--storage', choices=STORAGES, default='mcap',
                        help='rosbag2 storage plugin (default mcap)')
    parser.add_argument('--source', choices=SOURCES, default=d.source,
                        help='who acts: the scripted expert (default) or the policy')
    parser.add_argument('--suite', choices=list(SUITES), default=d.suite,
                        help=f'simulation suite (default {d.suite}); a policy\'s model must '
                             'act in its action names')
    parser.add_argument('--model', type=Path, default=None,
                        help="policy: model directory or export (default: the suite's shipped "
                             'model, models/default or models/metaworld)')
    parser.add_argument('--backend', choices=BACKENDS, default='torch')
    parser.add_argument('--method', default='dysl',
                        help='policy: dysl (default), full, or a baseline / ablation name')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch / ONNX Runtime threads (0: their default)')
    parser.add_argument('--tasks', nargs='+', default=[], metavar='NAME',
                        help='task names of the suite (default: every task)')
    parser.add_argument('--episodes', type=int, default=d.episodes, help='episodes per task')
    parser.add_argument('--seed', type=int, default=d.seed, help='first episode seed')
    parser.add_argument('--max-steps', type=int, default=0,
                        help='episode time limit in steps (default: each task\'s own)')
    parser.add_argument('--execute', type=int, default=d.execute,
                        help='policy: actions executed per chunk (default 1); the guidance '
                             'puts as many into its continuity history')
    parser.add_argument('--control-hz', type=float, default=d.control_hz,
                        help='control rate (default 0: the suite\'s, tabletop 20 Hz, '
                             'metaworld-mt10 80 Hz, its only one)')
    parser.add_argument('--image-size', type=int, default=0,
                        help='camera resolution (default: the model\'s, or 64 for the expert)')
    parser.add_argument('--start-ns', type=int, default=0,
                        help='bag time of the first message, ns since the epoch (default now)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    add_topic_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Record the episodes; print a summary line per episode."""
    suite = get_suite(args.suite)
    cfg = RecordConfig(source=args.source, suite=suite.name, tasks=tuple(args.tasks),
                       episodes=args.episodes, seed=args.seed, execute=args.execute,
                       control_hz=args.control_hz, start_ns=args.start_ns)
    topics, given = topics_from_args(args)
    policy, info = None, {}
    if cfg.source == 'policy':
        if args.threads > 0:
            import torch
            torch.set_num_threads(args.threads)
        model = args.model or suite.default_model
        policy = open_policy(model, args.backend, args.method,
                             PolicyOptions(device=args.device, threads=args.threads,
                                           guidance={'executed_actions': cfg.execute}))
        suite.check_model(policy.spec.action_names)  # before its cameras meet the suite's
        if 'cameras' not in given:
            topics = TopicMap(**{**_fields(topics),
                                 'cameras': default_topics(tuple(policy.spec.cameras)).cameras})
        info = {'model': str(model), 'backend': args.backend,
                'method': args.method, 'action_names': list(policy.spec.action_names)}
        size = args.image_size or policy.spec.image_size
    else:
        if 'cameras' not in given:
            topics = TopicMap(**{**_fields(topics),
                                 'cameras': default_topics(suite.cameras).cameras})
        size = args.image_size or 64
    sim_cfg = suite.env_config(args.control_hz, image_size=size, cameras=topics.camera_names,
                               max_steps=args.max_steps or None)
    with suite.make_env(sim_cfg) as env:
        summary = record(args.out, cfg, topics, env, policy, args.storage, info,
                         progress=not args.quiet)
    for row in summary['episodes']:
        print(f'episode {row["episode"]}: {row["task"]} seed {row["seed"]}: {row["steps"]} '
              f'steps, {row["chunks"]} chunks, success {row["success"]}')
    print(f'wrote {args.out}: ' + json.dumps(summary['counts']))
    return 0


def _fields(topics: TopicMap) -> dict:
    return {k: getattr(topics, k) for k in ('cameras', 'instruction', 'chunk', 'command',
                                            'status', 'stats')}
