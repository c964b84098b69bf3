"""`python -m dysl_ros replay`: a bag's frames through a policy, chunks against references.

Two modes, one report (dysl_ros.bags.report: report.json, chunks.npz, PNG plots):

- step-locked (default): no DDS, no clock. The bag's observations go through the policy (any
  backend) one by one, episode by episode (policy.reset() at each instruction), so a run is
  exactly repeatable: same backend, threads and machine give the same chunks bit for bit.
  --frames chunked (the default when the bag holds chunks) steps only on the frames that got a
  chunk when the bag was made, which reproduces that run's continuity history and therefore
  its skip decisions; --restore-guidance also loads the recorded ring buffer and allow points
  before each step (bags made by `record`), so each step reproduces on its own.
- live (--live, dysl_ros.nodes.bag_player): the camera and instruction streams are published over DDS
  with their original stamps into a policy node, started in this process or already running
  (--external), and what it publishes is recorded into <out>/live_bag.

References: 'recorded' = the chunks in the bag with the observation's stamp; 'full' =
full-depth predictions of the same model made on the spot on the same frames. Per step the
report gives the action error against each, the layers run, skip positions, verifications and
latency.

    python -m dysl_ros replay bags/dysl --out reports/dysl --reference recorded full
    python -m dysl_ros replay robot_bag --out reports/robot --camera front=/cam/image_raw \\
        --instruction "pick up the red block" --reference full
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..runtime.loading import BACKENDS, PolicyOptions, open_policy
from ..validation import require
from .bagfile import BagError, bag_info
from .episodes import BagData, load_bag
from .policies import full_depth_twin, guidance_of, recorded_guidance
from .record import guidance_state_from_json, guidance_state_json
from .report import ChunkArrays, episode_record, recorded_stats, step_record, write_report
from .topics import add_topic_arguments, topics_from_args

FRAMES = ('auto', 'all', 'chunked')
REFERENCES = ('auto', 'recorded', 'full')


@dataclass(frozen=True)
class ReplayConfig:
    """How a bag is replayed.

    Args:
        frames: 'all' steps on every observation; 'chunked' only on those with a recorded
            chunk (reproduces the recording run's history); 'auto': chunked when the bag
            holds chunks, else all.
        references: what chunks are compared with: 'recorded', 'full', or 'auto' (recorded
            when the bag holds chunks, else full).
        restore_guidance: load the recorded guidance state before each step, when the bag
            has one (bags from `record`).
    """

    frames: str = 'auto'
    references: tuple[str, ...] = ('auto',)
    restore_guidance: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, 'references', tuple(self.references))
        require(self.frames in FRAMES, 'frames', self.frames, f'one of {FRAMES}')
        require(len(self.references) >= 1 and all(r in REFERENCES for r in self.references),
                'references', self.references, f'names from {REFERENCES}')

    def resolve(self, data: BagData) -> tuple[str, tuple[str, ...]]:
        """(frames, references) with 'auto' decided for this bag."""
        frames = self.frames
        if frames == 'auto':
            frames = 'chunked' if data.has_chunks else 'all'
        refs = []
        for r in self.references:
            r = ('recorded' if data.has_chunks else 'full') if r == 'auto' else r
            if r not in refs:
                refs.append(r)
        if not data.has_chunks and ('recorded' in refs or frames == 'chunked'):
            raise BagError(f'{data.path}: no chunks on {data.topics.chunk}: use --frames all '
                           'and --reference full')
        return frames, tuple(refs)


def _same_state(a: dict, b: dict) -> bool:
    return (np.array_equal(np.asarray(a['buffer'], dtype=np.float64).reshape(-1),
                           np.asarray(b['buffer'], dtype=np.float64).reshape(-1))
            and a['c'] == b['c'] and a['dc'] == b['dc']
            and list(a['allow_points']) == list(b['allow_points']))


def replay_step_locked(data: BagData, policy: Any, cfg: ReplayConfig = ReplayConfig(),
                       progress: bool = True) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Step the policy through the bag's episodes; return per-episode records (see
    dysl_ros.bags.report) and the arrays of chunks.npz."""
    frames, refs = cfg.resolve(data)
    twin = full_depth_twin(policy) if 'full' in refs else None
    if 'full' in refs and twin is None:
        raise ValueError('--reference full needs a policy with a runner (GuidedPolicy or a '
                         'baseline): this one has none')
    guidance = guidance_of(policy)
    episodes, arrays = [], ChunkArrays(refs)
    total = sum(len(_selected(e, frames)) for e in data.episodes)
    bar = tqdm(total=total, desc='replay', unit='step', disable=not progress)
    for e in data.episodes:
        policy.reset()
        if twin is not None:
            twin.reset()
        steps = []
        for obs in _selected(e, frames):
            images = obs.images()
            recorded = e.stats.get(obs.stamp_ns)
            saved = recorded.extra.get('guidance') if recorded is not None else None
            guidance_match = None
            if guidance is not None and saved is not None:
                if cfg.restore_guidance:
                    guidance.load_state_dict(guidance_state_from_json(saved))
                # the state this step runs with, against the recording's
                guidance_match = _same_state(guidance_state_json(guidance), saved)
            t0 = time.perf_counter()
            chunk, st = policy.step(images, e.instruction)
            wall_ms = (time.perf_counter() - t0) * 1e3
            references = {}
            if 'recorded' in refs:
                references['recorded'] = e.chunk_for(obs)
            if twin is not None:
                references['full'] = twin.step(images, e.instruction)[0]
            rec = recorded_stats(recorded)
            steps.append(step_record(
                obs, e, chunk, layers_run=st.layers_run, layers_total=st.layers_total,
                layer_ids=st.layer_ids, skipped_at=st.skipped_at, verified=st.verified,
                allow_points=st.allow_points, continuity=st.continuity,
                continuity_change=st.continuity_change,
                latency={**st.latency_ms, 'wall': wall_ms}, references=references,
                recorded=rec, guidance_match=guidance_match))
            arrays.add(e.index, obs, chunk, references)
            bar.update(1)
        episodes.append(episode_record(e, steps))
    bar.close()
    return episodes, arrays.finish()


def check_actions(data: BagData, action_names: Any) -> None:
    """BagError (one line) when a bag made by `record` acts in other action names than the
    model (a bag of another suite); other bags are not checked."""
    recorded = (data.info or {}).get('action_names')
    if recorded is not None and tuple(recorded) != tuple(action_names):
        raise BagError(f'{data.path}: recorded in actions {tuple(recorded)}, the model acts in '
                       f'{tuple(action_names)}: replay it with a model of that suite')


def _selected(e: Any, frames: str) -> list:
    if frames == 'all':
        return list(e.observations)
    return [o for o in e.observations if o.stamp_ns in e.chunks]


# ---- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m dysl_ros replay`."""
    parser.add_argument('bag', type=Path, help='rosbag2 bag (directory, .mcap or .db3)')
    parser.add_argument('--out', required=True, type=Path,
                        help='report directory (report.json, chunks.npz, PNG plots)')
    parser.add_argument('--model', type=Path, default=None,
                        help='model directory or export (default models/default)')
    parser.add_argument('--backend', choices=BACKENDS, default='torch')
    parser.add_argument('--method', default='dysl',
                        help='dysl (default), full, or a baseline / ablation name (torch)')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch / ONNX Runtime threads (0: their default); exact '
                        'repeatability needs the same count as the run compared with')
    parser.add_argument('--reference', nargs='+', choices=REFERENCES, default=['auto'],
                        help='compare with recorded chunks, full-depth predictions, or both '
                        '(auto: recorded when the bag has chunks, else full)')
    parser.add_argument('--frames', choices=FRAMES, default='auto',
                        help='step-locked: all observations, or only those with a recorded '
                        'chunk (auto: chunked when the bag has chunks)')
    parser.add_argument('--restore-guidance', action='store_true',
                        help='step-locked: load the recorded guidance state before each step')
    parser.add_argument('--instruction', default=None,
                        help='for a bag without instructions: the whole bag is one episode '
                        'with this instruction')
    parser.add_argument('--no-plots', action='store_true', help='JSON and npz only')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    live = parser.add_argument_group('live replay over DDS')
    live.add_argument('--live', action='store_true',
                      help='publish the bag into a policy node instead of stepping the policy')
    live.add_argument('--external', action='store_true',
                      help='publish into an already running, active policy node (started with '
                      'use_sim_time:=true) instead of starting one in this process')
    live.add_argument('--rate', type=float, default=1.0,
                      help='playback speed: 1 = as recorded, 0.5 = half speed')
    live.add_argument('--node-name', default='policy_node', help='the policy node\'s name')
    live.add_argument('--no-clock', action='store_true',
                      help='do not publish /clock (then the node needs a max_image_age that '
                      'covers the age of the original stamps)')
    live.add_argument('--domain-id', type=int, default=None,
                      help='ROS_DOMAIN_ID (default: ROS_DOMAIN_ID, else a random one)')
    live.add_argument('--timeout', type=float, default=60.0,
                      help='seconds to wait for the node and its last chunks')
    add_topic_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Replay the bag and write the report."""
    topics, given = topics_from_args(args, bag_info(args.bag))
    cfg = ReplayConfig(frames=args.frames, references=tuple(args.reference),
                       restore_guidance=args.restore_guidance)
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    need = ['cameras', 'instruction'] + sorted(given - {'cameras', 'instruction'})
    if 'recorded' in cfg.references:
        need.append('chunk')
    data = load_bag(args.bag, topics, need=need, instruction=args.instruction)
    meta = {'bag': str(args.bag), 'mode': 'live' if args.live else 'step-locked',
            'model': str(args.model or 'models/default'), 'backend': args.backend,
            'method': args.method, 'threads': args.threads, 'recorded_with': data.info}
    if args.live:
        from ..nodes.bag_player import LiveConfig, replay_live
        live_cfg = LiveConfig(rate=args.rate, launch=not args.external,
                              node_name=args.node_name, publish_clock=not args.no_clock,
                              timeout=args.timeout, domain_id=args.domain_id)
        episodes, arrays, live_meta = replay_live(
            data, args.out, live_cfg, model=args.model, backend=args.backend,
            method=args.method, device=args.device, threads=args.threads,
            references=cfg.references, progress=not args.quiet)
        meta.update(live_meta)
    else:
        policy = open_policy(args.model, args.backend, args.method,
                             PolicyOptions(device=args.device, threads=args.threads,
                                           guidance=recorded_guidance(data.info)))
        check_actions(data, policy.spec.action_names)
        episodes, arrays = replay_step_locked(data, policy, cfg, progress=not args.quiet)
        meta['frames'], meta['references'] = cfg.resolve(data)
    report = write_report(args.out, meta, episodes, arrays, plots=not args.no_plots)
    print(format_summary(report['summary']))
    print(f'wrote {args.out}')
    return 0


def format_summary(s: dict) -> str:
    """A few lines: steps, layers, verifications, latency, errors per reference."""
    lines = [f'{s["steps"]} steps in {s["episodes"]} episodes; layers run '
             f'{_f(s["layers_run_mean"])} of {s["layers_total"]}, skip rate '
             f'{_f(s["skip_rate"])}, {s["verifications"]} verifications; latency p50 '
             f'{_f(s["latency_ms_p50"])} ms, p90 {_f(s["latency_ms_p90"])} ms']
    for name, e in s['errors'].items():
        lines.append(f'vs {name}: {e["compared"]} chunks compared, {e["exact"]} exact, mean '
                     f'|error| {_f(e["mean_abs"], ".3g")}, max {_f(e["max_abs"], ".3g")}')
    if s['skips_match']['compared']:
        lines.append(f'skip decisions as recorded: {s["skips_match"]["matched"]} of '
                     f'{s["skips_match"]["compared"]}')
    return '\n'.join(lines)


def _f(v: Any, fmt: str = '.2f') -> str:
    return 'n/a' if v is None else format(v, fmt)
