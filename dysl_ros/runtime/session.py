"""What a policy server decides besides running the model (no ROS): the instruction and
episode, the latest frames and when to step on them, and the statistics of each step. The
policy node only moves messages in and out of it, as the controller node does with
ChunkExecutor.

Thread-safe: camera and instruction callbacks, the model thread and lifecycle transitions
call it concurrently. Hold `lock` (re-entrant) to publish atomically with `stop()`: no chunk
can then follow the hold a deactivation publishes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .budget import LatencyBudget
from .frames import Frame, FrameGate, Rejected
from .messages import StepStats
from .shadow import ShadowCheck

# text -> (its words, those the model does not know)
Vocabulary = Callable[[str], tuple[list[str], list[str]]]


def policy_vocabulary(policy: Any) -> Optional[Vocabulary]:
    """The Vocabulary of the policy's tokenizer (None when it has none)."""
    tokenizer = getattr(policy.spec, 'tokenizer', None)
    if tokenizer is None:
        return None
    return lambda text: (tokenizer.words(text), tokenizer.unknown_words(text))


@dataclass(frozen=True)
class StepInput:
    """Everything one policy step needs."""

    frames: dict[str, Frame]
    instruction: str
    episode: int
    new_episode: bool  # reset the policy's action history first

    @property
    def images(self) -> dict[str, np.ndarray]:
        return {c: f.rgb for c, f in self.frames.items()}


@dataclass(frozen=True)
class Waiting:
    """No step yet: what is missing, and until when a step waits for a lagging camera."""

    reason: str  # '' while the primary camera has no new frame
    deadline_ns: Optional[int] = None


class PolicySession:
    """Instruction, episode and frames of one policy; see the module docstring."""

    def __init__(self, gate: FrameGate, max_instruction_length: int,
                 vocabulary: Optional[Vocabulary] = None, instruction: str = '',
                 episode: int = 1):
        self.lock = threading.RLock()
        self.gate = gate
        self.max_instruction_length = max_instruction_length
        self.vocabulary = vocabulary
        self.instruction = instruction.strip()
        self.episode = episode
        self.active = False
        self._stepped_episode = -1  # the episode the policy's history belongs to

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            self.active = True
            self.gate.clear()

    def stop(self) -> None:
        with self.lock:
            self.active = False
            self.gate.clear()

    # ---- inputs -------------------------------------------------------------------------------
    def set_instruction(self, text: str) -> list[str]:
        """Start an episode with `text`; returns its words unknown to the model. Raises
        Rejected('instruction') for an empty, too long or wholly unknown instruction (the
        current one stays)."""
        text = text.strip()
        keeping = f'keeping {self.instruction!r}'
        if not text:
            raise Rejected('instruction', f'empty instruction ignored; {keeping}')
        if len(text) > self.max_instruction_length:
            raise Rejected('instruction', f'instruction of {len(text)} characters ignored: '
                           f'longer than max_instruction_length={self.max_instruction_length}')
        words, unknown = self.vocabulary(text) if self.vocabulary else ([], [])
        if self.vocabulary and len(unknown) == len(words):
            raise Rejected('instruction', f'instruction {text[:80]!r} ignored: no word the '
                           f'model knows; {keeping}')
        self.new_episode(text)
        return unknown

    def new_episode(self, instruction: Optional[str] = None) -> int:
        """A new episode (a reset, or a new instruction): earlier frames and stamps are
        forgotten and the next step starts the action history over."""
        with self.lock:
            if instruction is not None:
                self.instruction = instruction
            self.episode += 1
            self.gate.clear()
            return self.episode

    def check_frame(self, camera: str, stamp_ns: int, now_ns: int) -> None:
        """Raise Rejected for a frame not worth converting (stamp, order)."""
        with self.lock:
            self.gate.check(camera, stamp_ns, now_ns)

    def put_frame(self, camera: str, rgb: np.ndarray, stamp_ns: int, arrival_ns: int,
                  now_ns: int) -> bool:
        """Store a converted frame; returns whether it replaced one no step used."""
        with self.lock:
            return self.gate.put(camera, rgb, stamp_ns, arrival_ns, now_ns)

    # ---- steps --------------------------------------------------------------------------------
    def next_step(self, now_ns: int) -> 'StepInput | Waiting':
        """The inputs of a step, or why there is none; raises Rejected('stale')."""
        with self.lock:
            if not self.active:
                return Waiting('')
            if not self.instruction:
                return Waiting('an instruction')
            frames = self.gate.take(now_ns)
            if frames is None:
                missing = self.gate.missing()
                return Waiting(f'cameras {missing}' if missing else '',
                               None if missing else self.gate.deadline_ns())
            new = self._stepped_episode != self.episode
            self._stepped_episode = self.episode
            return StepInput(frames, self.instruction, self.episode, new)

    def restart_history(self) -> None:
        """The next step starts the action history over (after a non-finite output)."""
        with self.lock:
            self._stepped_episode = -1

    def current(self, episode: int) -> bool:
        """Whether a step of `episode` may still publish (call holding `lock`)."""
        return self.active and self.episode == episode


def step_stats(seq: int, episode: int, primary: Frame, step: Any, start_ns: int,
               policy_ms: float, camera_to_chunk_ms: float,
               budget: Optional[LatencyBudget] = None,
               shadow: Optional[ShadowCheck] = None) -> StepStats:
    """The statistics of a step on the `primary` camera's frame that began at start_ns and
    whose chunk was out camera_to_chunk_ms after the frame's stamp (`step`: the policy's
    StepStats, dysl_ros.runtime.policy), with the step's threshold and the latency budget's
    figures when the policy has a budget, and with the shadow check's figures when it has one:
    shadow_fallback (this step ran at full depth), shadow_drift (this chunk's drift, None when
    it was not checked) and ShadowCheck.report()."""
    extra = {} if budget is None else {'threshold': step.threshold, **budget.report()}
    if shadow is not None:
        extra.update(shadow_fallback=bool(step.shadow_fallback),
                     shadow_drift=step.shadow_drift, **shadow.report())
    stamp = primary.stamp_ns
    return StepStats(
        seq=seq, episode=episode, stamp_ns=stamp, layers_run=step.layers_run,
        layers_total=step.layers_total, layer_ids=list(step.layer_ids),
        skipped_at=list(step.skipped_at), verified=bool(step.verified),
        allow_points=list(step.allow_points), policy_ms=policy_ms,
        camera_to_chunk_ms=camera_to_chunk_ms,
        # where camera -> chunk went (ms, they add up)
        stages_ms={'frame in': (primary.arrival_ns - stamp) * 1e-6,
                   'conversion': (primary.ready_ns - primary.arrival_ns) * 1e-6,
                   'wake and pairing': (start_ns - primary.ready_ns) * 1e-6,
                   'step': policy_ms,
                   'chunk message and publish':
                       camera_to_chunk_ms - (start_ns - stamp) * 1e-6 - policy_ms},
        latency_ms=dict(step.latency_ms),
        extra=extra)
