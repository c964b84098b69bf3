"""A live replay's chunks against references, without ROS: the comparison behind
`replay --live` (dysl_ros.nodes.bag_player publishes the bag and records the live bag)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..guidance import Guidance, GuidanceConfig
from ..runtime.loading import PolicyOptions, open_policy
from ..runtime.messages import StepStats
from .episodes import BagData
from .report import ChunkArrays, episode_record, recorded_stats, step_record


def evaluate_live(live: BagData, source: BagData, references: Sequence[str],
                  model: Optional[Path], backend: str, device: str, threads: int,
                  progress: bool, have_model: bool = True
                  ) -> tuple[list[dict], dict[str, np.ndarray], tuple[str, ...]]:
    """Per-step records of the node's chunks in the live bag, against the chunks recorded in
    the source bag (same stamps) and / or full-depth predictions made here."""
    refs = []
    for r in references:
        r = ('recorded' if source.has_chunks else 'full') if r == 'auto' else r
        if r not in refs:
            refs.append(r)
    recorded_chunks = {s: c[1] for e in source.episodes for s, c in e.chunks.items()}
    recorded = {s: v for e in source.episodes for s, v in e.stats.items()}
    full = None
    if 'full' in refs or have_model:  # the model also gives the continuity's normalisation
        try:
            full = open_policy(model, backend, 'full',
                               PolicyOptions(device=device, threads=threads))
        except (FileNotFoundError, ValueError):
            if 'full' in refs:
                raise
    arrays = ChunkArrays(tuple(refs))
    episodes = []
    for e in live.episodes:
        if full is not None:
            full.reset()
        track = _Continuity(full)
        steps = []
        for obs in tqdm([o for o in e.observations if o.stamp_ns in e.chunks],
                        desc='compare', unit='step', disable=not progress, leave=False):
            chunk = e.chunk_for(obs)
            references_now = {}
            if 'recorded' in refs:
                references_now['recorded'] = recorded_chunks.get(obs.stamp_ns)
            if 'full' in refs:
                references_now['full'] = full.step(obs.images(), e.instruction)[0]
            c, dc = track.push(chunk)
            steps.append(step_record(
                obs, e, chunk, **_node_step(e.stats.get(obs.stamp_ns)), continuity=c,
                continuity_change=dc, references=references_now,
                recorded=recorded_stats(recorded.get(obs.stamp_ns))))
            arrays.add(e.index, obs, chunk, references_now)
        episodes.append(episode_record(e, steps))
    return episodes, arrays.finish(), tuple(refs)


def _node_step(s: Optional[StepStats]) -> dict:
    """What the node said of a step, as step_record's arguments (nothing run without it)."""
    if s is None:
        return dict(layers_run=0, layers_total=0, layer_ids=[], skipped_at=[], verified=False,
                    allow_points=[], latency={})
    latency = {k: float(v) for k, v in s.latency_ms.items()}
    latency.update(node_step=float(s.policy_ms), camera_to_chunk=float(s.camera_to_chunk_ms))
    latency.setdefault('total', float(s.policy_ms))
    return dict(layers_run=s.layers_run, layers_total=s.layers_total, layer_ids=s.layer_ids,
                skipped_at=s.skipped_at, verified=s.verified, allow_points=s.allow_points,
                latency=latency)


class _Continuity:
    """C and dC after each chunk as the node's guidance computes them (normalised with the
    model's statistics, its K); None without a model."""

    def __init__(self, policy: Any):
        self.spec = getattr(policy, 'spec', None)
        cfg = getattr(getattr(policy, 'guidance', None), 'cfg', None) or GuidanceConfig()
        self.guidance = (Guidance(GuidanceConfig(history=cfg.history), [(0, 1)])
                         if self.spec is not None else None)

    def push(self, chunk: np.ndarray) -> tuple[Optional[float], Optional[float]]:
        if self.guidance is None:
            return None, None
        normalised = (np.asarray(chunk, np.float64) - self.spec.action_mean) / \
            self.spec.action_std  # (H, D)
        self.guidance.push(normalised)
        return self.guidance.continuity()
