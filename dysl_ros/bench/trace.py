"""Skip-decision traces: record what DySL decided, or synthesise it, and replay it.

A trace holds per step the allow points, where each segment skipped and whether the step was
verified. Replaying drives the one policy executor (GuidedPolicy) with the recorded
decisions through the same inputs a segment graph takes: each segment's allow point is its
recorded skip (its end when it ran through) and the threshold is below any probability, so
the controller at the recorded skip says skip (it runs, its cost is paid; those between the
recorded allow point and the skip are not asked). The guidance still updates on every chunk
(its cost is paid) but the verification comes from the trace. That is how a backbone with
random weights is timed as if it were trained, per unit or per segment alike.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..guidance import Guidance, GuidanceConfig
from ..layout import Layout
from ..runtime.policy import GuidedPolicy, ModelSpec, StepStats
from ..runtime.runner import Runner


@dataclass(frozen=True)
class Decision:
    """What DySL decided in one step."""

    allow_points: tuple[int, ...]
    skipped_at: tuple[Optional[int], ...]
    verified: bool


def layers_run(layout: Layout, d: Decision) -> int:
    """Backbone layers a step with decision d runs (a verified step adds full depth from its
    first skipping segment on: skipping.resume_full_depth)."""
    n = sum((seg.end if j is None else j) - seg.static
            for seg, j in zip(layout.segments, d.skipped_at))
    first = next((seg.static for seg, j in zip(layout.segments, d.skipped_at)
                  if j is not None), layout.num_layers)
    return n + (layout.num_layers - first if d.verified else 0)


class DecisionTrace:
    """A sequence of decisions over one layout, validated against it."""

    def __init__(self, layout: Layout, decisions: Sequence[Decision], source: str = ''):
        self.layout, self.decisions, self.source = layout, list(decisions), source
        if not self.decisions:
            raise ValueError('a decision trace needs at least one step')
        segs = layout.segments
        for t, d in enumerate(self.decisions):
            if len(d.allow_points) != len(segs) or len(d.skipped_at) != len(segs):
                raise ValueError(f'step {t}: {len(d.allow_points)} allow points / '
                                 f'{len(d.skipped_at)} skips for {len(segs)} segments')
            for seg, p, j in zip(segs, d.allow_points, d.skipped_at):
                if not seg.static + 1 <= p <= seg.end:
                    raise ValueError(f'step {t}: allow point {p} outside [{seg.static + 1}, '
                                     f'{seg.end}] of segment {seg}')
                if j is not None and not p <= j < seg.end:
                    raise ValueError(f'step {t}: skip at {j} is not a dynamic layer at or '
                                     f'after allow point {p} in segment {seg}')
            if d.verified and all(j is None for j in d.skipped_at):
                raise ValueError(f'step {t}: verified without a skip')

    def __len__(self) -> int:
        return len(self.decisions)

    def mean_layer_fraction(self) -> float:
        L = self.layout.num_layers
        return float(np.mean([layers_run(self.layout, d) / L for d in self.decisions]))

    @classmethod
    def from_stats(cls, layout: Layout, stats: Sequence[StepStats], source: str = ''
                   ) -> 'DecisionTrace':
        return cls(layout, [Decision(tuple(s.allow_points), tuple(s.skipped_at), s.verified)
                            for s in stats], source)

    @classmethod
    def synthetic(cls, layout: Layout, steps: int, seed: int = 0, skip_rate: float = 0.85,
                  depth: float = 0.6, drop_rate: float = 0.08,
                  verify_rate: float = 0.03) -> 'DecisionTrace':
        """Plausible DySL decisions: mostly early skips, with occasional continuity drops that
        push the allow points deep (stride 1-3) and release one layer per step.

        skip_rate: chance a segment with an active controller skips; depth: chance each
        further layer is the one that skips (geometric); drop_rate: chance of a drop per
        step; verify_rate: chance a skipping step is verified.
        """
        rng = np.random.default_rng(seed)
        segs = layout.segments
        low = np.array([s.static + 1 for s in segs])
        high = np.array([s.end for s in segs])
        points = low.copy()
        out = []
        for _ in range(steps):
            skipped: list[Optional[int]] = []
            for seg, p in zip(segs, points):
                j = None
                if p < seg.end and rng.random() < skip_rate:
                    j = min(int(p) + int(rng.geometric(depth)) - 1, seg.end - 1)
                skipped.append(j)
            verified = any(j is not None for j in skipped) and rng.random() < verify_rate
            out.append(Decision(tuple(int(p) for p in points), tuple(skipped), verified))
            if rng.random() < drop_rate:
                points = np.minimum(points + int(rng.integers(1, 4)), high)
            else:
                points = np.maximum(points - 1, low)
        return cls(layout, out, f'synthetic (seed {seed})')

    def to_dict(self) -> dict:
        return {'layout': self.layout.to_dict(), 'source': self.source,
                'steps': [{'allow_points': list(d.allow_points),
                           'skipped_at': list(d.skipped_at), 'verified': d.verified}
                          for d in self.decisions]}

    @classmethod
    def from_dict(cls, d: dict) -> 'DecisionTrace':
        return cls(Layout.from_dict(d['layout']),
                   [Decision(tuple(int(p) for p in s['allow_points']),
                             tuple(None if j is None else int(j) for j in s['skipped_at']),
                             bool(s['verified'])) for s in d['steps']], d.get('source', ''))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + '\n')

    @classmethod
    def load(cls, path: Path) -> 'DecisionTrace':
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{path}: not a decision trace ({e})') from None


class _Cursor:
    def __init__(self, trace: DecisionTrace):
        self.trace, self.t = trace, 0

    @property
    def decision(self) -> Decision:
        return self.trace.decisions[self.t % len(self.trace)]


class _ReplayGuidance:
    """The guidance interface GuidedPolicy uses, answering from the trace; a real Guidance
    still updates on every chunk so its cost is paid."""

    def __init__(self, cursor: _Cursor, cfg: GuidanceConfig, spec: ModelSpec):
        self.cursor = cursor
        self.segments = spec.layout.segments
        self.real = Guidance(cfg, [(s.static, s.end) for s in self.segments])

    @property
    def allow_points(self) -> np.ndarray:
        """Per segment its recorded skip, or its end: with a threshold below any probability
        the walk skips exactly there."""
        d = self.cursor.decision
        return np.array([seg.end if j is None else j
                         for seg, j in zip(self.segments, d.skipped_at)], dtype=np.int64)

    def is_onset(self, chunk: np.ndarray) -> bool:
        self.real.is_onset(chunk)
        return self.cursor.decision.verified

    def push(self, chunk: np.ndarray) -> None:
        self.real.push(chunk)
        self.cursor.t += 1

    def continuity(self) -> tuple[Optional[float], Optional[float]]:
        return self.real.continuity()

    def reset(self) -> None:
        self.real.reset()
        self.cursor.t = 0


def replay_policy(trace: DecisionTrace, runner: Runner, spec: ModelSpec,
                  guidance: GuidanceConfig = GuidanceConfig(), profile: bool = False
                  ) -> GuidedPolicy:
    """A GuidedPolicy whose decisions follow `trace`, one step per decision (cycling);
    reset() starts the trace over. profile: per-stage latency, as GuidedPolicy's."""
    if trace.layout != spec.layout:
        raise ValueError(f'trace layout {trace.layout.to_dict()} differs from the model\'s '
                         f'{spec.layout.to_dict()}')
    return _ReplayPolicy(_Cursor(trace), runner, spec, guidance, profile)


class _ReplayPolicy(GuidedPolicy):
    """Steps whose statistics report the trace's allow points (not the forcing ones)."""

    def __init__(self, cursor: _Cursor, runner: Runner, spec: ModelSpec,
                 guidance: GuidanceConfig, profile: bool):
        super().__init__(runner, spec, guidance, profile=profile)
        self.cursor = cursor
        self.guidance = _ReplayGuidance(cursor, guidance, spec)
        self.threshold = -1.0  # every asked controller skips: at the allow point it is given

    def step(self, images: Mapping[str, np.ndarray], instruction: str
             ) -> tuple[np.ndarray, StepStats]:
        recorded = self.cursor.decision.allow_points
        chunk, stats = super().step(images, instruction)
        stats.allow_points = list(recorded)
        return chunk, stats
