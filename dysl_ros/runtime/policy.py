"""The policy executor: walks the segments under the shared guidance with any runner.

One control step (dysl-method.md section 2):
  1. allow points come from the last continuity change (pre-skip prediction)
  2. embed -> segment walk (static layers always; controllers from P_k on) -> head
  3. if anything was skipped and the chunk is the onset of a continuity drop: re-predict at
     full depth from the input of the first segment that skipped, and keep that chunk
     (post-skip verification)
  4. push the chunk into the continuity ring buffer (moves the allow points)
With a shadow check (ShadowCheck, dysl_ros.runtime.shadow) a due step keeps its pass, and
shadow_pass() later completes it at full depth to measure the chunk's drift; a drift above the
check's threshold makes the next steps run at full depth.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional, Protocol

import numpy as np

from ..guidance import Guidance, GuidanceConfig
from ..layout import Layout
from ..model.processing import preprocess_images
from ..model.tokenizer import WordTokenizer
from ..skipping import as_segments, resume_full_depth, walk_segments
from .budget import LatencyBudget
from .runner import Runner
from .shadow import ShadowCheck, chunk_drift

if TYPE_CHECKING:
    from ..model.vla import VLA


class NonFiniteOutput(ValueError):
    """The model produced NaN or inf: no chunk may reach the robot."""


def check_finite(chunk: np.ndarray) -> np.ndarray:
    """The chunk itself, or NonFiniteOutput saying how many values are NaN or inf."""
    if not np.isfinite(chunk).all():
        raise NonFiniteOutput(f'the model returned a non-finite chunk '
                              f'({int((~np.isfinite(chunk)).sum())} of {chunk.size} values)')
    return chunk


@dataclass(frozen=True)
class ModelSpec:
    """What a runtime needs to know of a model besides its units."""

    cameras: tuple[str, ...]
    image_size: int
    tokenizer: WordTokenizer
    action_names: tuple[str, ...]
    chunk_size: int
    action_mean: np.ndarray
    action_std: np.ndarray
    layout: Layout
    skip_threshold: float = 0.5

    def prepare(self, images: Mapping[str, np.ndarray], instruction: str
                ) -> tuple[np.ndarray, np.ndarray]:
        """Camera images + instruction -> the embedder's (1, N, 3, S, S), (1, L) inputs."""
        pixels = preprocess_images(images, self.cameras, self.image_size)[None]
        return pixels, self.tokenizer.encode(instruction)[None]

    def unnormalise(self, chunk: np.ndarray) -> np.ndarray:
        """Normalised (H, D) -> action units; a non-finite chunk raises NonFiniteOutput."""
        return check_finite(chunk) * self.action_std + self.action_mean

    @classmethod
    def from_model(cls, vla: 'VLA', layout: Optional[Layout] = None,
                   skip_threshold: float = 0.5) -> 'ModelSpec':
        """The spec of a torch VLA (layout: its DySL layout, or all-static full depth)."""
        cfg = vla.cfg
        return cls(cameras=cfg.cameras, image_size=cfg.image_size, tokenizer=vla.tokenizer,
                   action_names=cfg.action_names, chunk_size=cfg.chunk_size,
                   action_mean=vla.action_mean.detach().cpu().numpy().astype(np.float32),
                   action_std=vla.action_std.detach().cpu().numpy().astype(np.float32),
                   layout=layout or Layout.full(cfg.n_layers), skip_threshold=skip_threshold)


@dataclass
class StepStats:
    """What one policy step did; the same structure whatever the backend or method.

    layer_ids and skipped_at describe the guided pass; a verified step then also ran the
    layers from its first skip to the end at full depth, which layers_run counts.
    """

    layers_run: int
    layers_total: int
    layer_ids: list[int]
    skipped_at: list[Optional[int]]
    verified: bool
    allow_points: list[int]
    latency_ms: dict[str, float] = field(default_factory=dict)
    continuity: Optional[float] = None
    continuity_change: Optional[float] = None
    threshold: Optional[float] = None  # the controllers' threshold of the guided pass
    shadow_fallback: bool = False  # run at full depth: a shadow check's drift was too high
    shadow_drift: Optional[float] = None  # this chunk's drift, once its shadow pass ran

    @property
    def layer_fraction(self) -> float:
        return self.layers_run / self.layers_total


class Policy(Protocol):
    """What every method (DySL, full depth, baselines, ablations) offers a benchmark or node."""

    spec: ModelSpec

    def reset(self) -> None:
        """Start a new episode (clears the action history)."""

    def step(self, images: Mapping[str, np.ndarray], instruction: str
             ) -> tuple[np.ndarray, StepStats]:
        """Observation -> unnormalised chunk (H, D) and its statistics."""


class GuidedPolicy:
    """DySL inference over any runner. skipping=False runs full depth (the teacher).

    A runner of segments gets one launch per segment and one read of the skip positions
    per step; a runner of units is walked unit by unit (skipping.as_segments).
    `threshold` is the controllers' threshold (the model's, unless a caller moves it);
    a `budget` (LatencyBudget, None: off) lowers it per step while steps run over budget.
    A `shadow` (ShadowCheck, None: off) measures every n-th chunk's drift from full depth in
    shadow_pass(), which the caller runs after using the chunk (else the next step runs it
    first, outside its own latency); fallback steps run at full depth and are not counted by
    the budget (they are slow on purpose).

    StepStats.latency_ms holds the step's wall time ('total'); profile=True adds the time
    of each stage, synchronising the runner at every stage boundary (benchmarks only).

    step(..., executed=(start, stop)) gives the guidance (verification and history) the
    chunk's actions start..stop-1, those the controller is expected to run when it drops the
    first ones as already past and the next chunk takes over at `stop` (None: the whole
    chunk; a window past the end keeps the last action). The guidance's executed_actions
    still caps how many enter the history.
    """

    def __init__(self, runner: Runner, spec: ModelSpec, guidance: GuidanceConfig,
                 skipping: bool = True, profile: bool = False):
        runs_segments = getattr(runner, 'runs_segments', False)
        layout = getattr(runner, 'layout', spec.layout) if runs_segments else spec.layout
        if layout != spec.layout:
            raise ValueError(f'the runner\'s segments {layout.to_dict()} differ from the '
                             f'model\'s layout {spec.layout.to_dict()}')
        self.runner = runner
        self.spec = spec
        self.skipping = skipping
        self.threshold = spec.skip_threshold
        self.budget: Optional[LatencyBudget] = None
        self.shadow: Optional[ShadowCheck] = None
        self._shadow_pending: Optional[tuple] = None  # (trace, guided chunk, stats, segments)
        self.profile = profile  # per-stage latency (a device sync per stage); else total only
        segments = [(s.static, s.end) for s in spec.layout.segments]
        self.guidance = Guidance(guidance, segments)

    def reset(self) -> None:
        self.guidance.reset()

    def step(self, images: Mapping[str, np.ndarray], instruction: str,
             executed: Optional[tuple[int, int]] = None) -> tuple[np.ndarray, StepStats]:
        if executed is not None and not 0 <= executed[0] < executed[1]:
            raise ValueError(f'executed={executed!r} is invalid: expected (start, stop) with '
                             '0 <= start < stop')
        self.shadow_pass()  # the last step's, if its caller did not run it
        r, t = self.runner, Clock(self.runner, self.profile)
        fallback, shadowed = (False, False) if self.shadow is None or not self.skipping \
            else self.shadow.begin_step()
        pixels, tokens = self.spec.prepare(images, instruction)
        allow = self.guidance.allow_points if self.skipping and not fallback else None
        budget = self.budget  # None: off, and the guidance is not asked
        protecting = budget is not None and self.guidance.protecting
        threshold = self.threshold - (0.0 if budget is None else budget.shift_for(protecting))
        t.lap('prepare')
        x = r.embed(pixels, tokens)
        t.lap('embed')
        layout, segments = self.spec.layout, as_segments(r, self.spec.layout)
        x, trace = walk_segments(x, layout, segments, allow, threshold)
        t.lap('backbone')
        chunk = check_finite(r.head(x))  # before the guidance sees it
        t.lap('head')
        layers_run = len(trace.layers_run)
        run = slice(None) if executed is None else \
            slice(min(executed[0], len(chunk) - 1), executed[1])  # what the guidance sees
        verified = trace.skipped and self.guidance.is_onset(chunk[run])
        if verified:  # post-skip verification: full depth from where the pass first skipped
            x, extra = resume_full_depth(trace, layout, segments)
            chunk = check_finite(r.head(x))
            layers_run += extra
            t.lap('verify')
        self.guidance.push(chunk[run])
        c, dc = self.guidance.continuity()
        ends = [s.end for s in self.spec.layout.segments]
        stats = StepStats(
            layers_run=layers_run, layers_total=self.spec.layout.num_layers,
            layer_ids=list(trace.layers_run), skipped_at=list(trace.skipped_at),
            verified=verified, allow_points=[int(a) for a in (ends if allow is None else allow)],
            latency_ms=t.total(), continuity=c, continuity_change=dc,
            threshold=None if allow is None else threshold, shadow_fallback=fallback)
        if budget is not None and not fallback:
            budget.observe(stats.latency_ms['total'])
        if shadowed:  # the pass stays as it is, for shadow_pass (nothing else runs between)
            self._shadow_pending = (trace, np.array(chunk, copy=True), stats, segments)
        return self.spec.unnormalise(chunk), stats

    def shadow_pass(self) -> Optional[float]:
        """Complete the last step's guided pass at full depth if a shadow check is due, off
        that step's critical path: its chunk's drift (normalised L1, shadow.chunk_drift) goes
        into that step's StepStats (shadow_drift, latency_ms['shadow']) and the ShadowCheck.
        Returns the drift (None: no check due). The guidance never sees the full-depth chunk.

        A pass that skipped nothing, or was verified, already is full depth: drift 0. Else the
        full-depth pass resumes from the input of the first segment that skipped (the layers
        before are the same at full depth). Call it before any other use of the runner."""
        if self._shadow_pending is None:
            return None
        trace, guided, stats, segments = self._shadow_pending
        self._shadow_pending = None
        t0 = time.perf_counter()
        if trace.skipped and not stats.verified:
            x, _ = resume_full_depth(trace, self.spec.layout, segments)
            drift = chunk_drift(guided, check_finite(self.runner.head(x)))
        else:
            drift = 0.0
        stats.latency_ms['shadow'] = (time.perf_counter() - t0) * 1e3
        stats.shadow_drift = drift
        self.shadow.observe(drift)
        return drift


class Clock:
    """Wall time of a step in ms ('total': start to the last lap); with profile=True also
    per stage, synchronising the runner at each stage boundary so that queued device work
    is charged to the stage that queued it."""

    def __init__(self, runner: Runner, profile: bool = False):
        self.runner = runner
        self.profile = profile
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.profile:
            self.runner.synchronize()
        now = time.perf_counter()
        if self.profile:
            self.laps[name] = (now - self.last) * 1e3
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.laps, 'total': (self.last - self.start) * 1e3}
