"""Chunk execution for the controller node (numpy only, no ROS): one action per control tick.

Time semantics: action i of a chunk is meant for `stamp + i * dt`, where `stamp` is the time
of the observation it was predicted from. A chunk that arrives `delay` seconds after its
observation therefore starts at action floor(delay / dt) (latency compensation), so that the
splice between two chunks does not replay actions that are already in the past. Each accepted
chunk then advances one action per tick.

- mode 'replace': the newest accepted chunk replaces the one in progress.
- mode 'ensemble': temporal ensembling (ACT): every chunk still covering this tick votes,
  weighted exp(-ensemble_decay * i) with i = 0 for the oldest vote.
- mode 'prefix': as replace, but the switch is blended. A chunk that takes over while the one
  before it still has actions commands (1 - w_k) * old + w_k * new for its first
  blend_actions ticks, w_k = (k + 1) / (blend_actions + 1), k = 0 on its first tick; the old
  chunk keeps advancing meanwhile and is dropped when the blend ends or it runs out (then the
  new chunk alone). A chunk arriving mid-blend blends from the one that took over last; a new
  chunk that runs out mid-blend ends the old one too (a hold follows).

A chunk is dropped (the reason is counted) when its stamp is negative or more than
max_future_stamp ahead of the clock, when its observation is older than max_chunk_age on
arrival, when it predates the current episode, when its joint names differ from the
configured ones, when it has more than max_chunk_points actions, when its actions are not
spaced one control period apart (time_from_start strictly increasing by dt from a start in
[0, dt)), or when any value is not finite. With nothing to execute the executor holds: zero
for every delta joint and the last commanded value for absolute joints (the gripper).

Switch bound (max_switch_jump, off when empty): at a switch, a tick whose command comes from a
chunk that did not give the previous tick's command (replace, prefix: a new chunk took over,
its first tick; ensemble: the voting chunks gained one) while the previous tick was not a
hold, each joint's change from the previous command is clipped to +-max_switch_jump before
the limits clip. Within a chunk, after a hold and on the first command of an episode nothing
is bounded.

Per tick, `last_tick` (a TickRecord) says whether it held, whether it was a switch, and the
age of the chunk behind its command (now - observation stamp; ensemble: the voters' ages
averaged with their weights; prefix: the new chunk's, blend or not).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..validation import require

MODES = ('replace', 'ensemble', 'prefix')


@dataclass(frozen=True)
class ChunkExecutorConfig:
    """How chunks become commands.

    Args:
        joint_names: action names in command order; a chunk must carry exactly these names
            (in any order).
        control_rate: commands per second.
        mode: 'replace' (the newest chunk replaces the one in progress), 'ensemble'
            (temporal ensembling of every chunk covering the tick) or 'prefix' (as replace,
            with the first blend_actions ticks of a switch blended; see the module docstring).
        ensemble_decay: m in the ensembling weight exp(-m * i), i = 0 for the oldest chunk
            (ACT's default 0.01: nearly uniform; larger trusts older chunks more).
        blend_actions: prefix mode: ticks over which a new chunk's weight ramps up, w_k =
            (k + 1) / (blend_actions + 1) against the chunk it takes over from.
        max_chunk_age: seconds; a chunk whose observation is older than this on arrival is
            dropped, and a chunk is dropped once now > stamp + (H - 1) * dt + max_chunk_age.
        lower_limits: per joint lower clip of every command.
        upper_limits: per joint upper clip of every command.
        absolute_joints: joints whose value is an absolute target (held at the last command);
            all others are deltas (held at zero).
        initial_absolute: hold values of absolute_joints before any command of an episode.
        latency_compensation: start a late chunk at floor(delay / dt) instead of action 0.
        max_future_stamp: seconds; a chunk stamped further ahead of the clock is dropped
            (its sender's clock is wrong: executing it would replay its actions late).
        max_chunk_points: most actions a chunk may carry.
        max_switch_jump: per joint bound (>= 0) on the command's change at a switch (a tick
            whose command comes from a chunk that did not give the previous tick's command:
            replace, prefix: a new chunk took over; ensemble: the voting chunks gained one),
            applied before the limits; empty (the default): no bound. Not applied after a
            hold tick (a hold is not a switch) nor to the first command of an episode.
    """

    joint_names: tuple[str, ...] = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
    control_rate: float = 20.0
    mode: str = 'replace'
    ensemble_decay: float = 0.01
    blend_actions: int = 4
    max_chunk_age: float = 0.5
    lower_limits: tuple[float, ...] = (-0.02, -0.02, -0.02, -0.1, -0.1, -0.1, 0.0)
    upper_limits: tuple[float, ...] = (0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 1.0)
    absolute_joints: tuple[str, ...] = ('gripper',)
    initial_absolute: tuple[float, ...] = (0.0,)
    latency_compensation: bool = True
    max_future_stamp: float = 0.25
    max_chunk_points: int = 1000
    max_switch_jump: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ('joint_names', 'lower_limits', 'upper_limits', 'absolute_joints',
                     'initial_absolute', 'max_switch_jump'):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.joint_names)
        require(n >= 1 and len(set(self.joint_names)) == n and all(self.joint_names),
                 'joint_names', self.joint_names, 'distinct, non-empty names')
        require(0.0 < self.control_rate <= 1000.0, 'control_rate', self.control_rate,
                 '(0, 1000] Hz')
        require(self.mode in MODES, 'mode', self.mode, f'one of {MODES}')
        require(0.0 <= self.ensemble_decay <= 10.0, 'ensemble_decay', self.ensemble_decay,
                 '[0, 10]')
        require(isinstance(self.blend_actions, int) and not isinstance(self.blend_actions, bool)
                and 1 <= self.blend_actions <= 1000, 'blend_actions', self.blend_actions,
                'an integer from 1 to 1000')
        require(0.0 < self.max_chunk_age <= 60.0, 'max_chunk_age', self.max_chunk_age,
                 '(0, 60] s')
        for name in ('lower_limits', 'upper_limits'):
            values = getattr(self, name)
            require(len(values) == n and all(math.isfinite(v) for v in values), name,
                     values, f'{n} finite values, one per joint of {self.joint_names}')
        require(all(lo <= hi for lo, hi in zip(self.lower_limits, self.upper_limits)),
                 'lower_limits', self.lower_limits, f'<= upper_limits={self.upper_limits}')
        require(set(self.absolute_joints) <= set(self.joint_names), 'absolute_joints',
                 self.absolute_joints, f'names from joint_names={self.joint_names}')
        require(len(self.initial_absolute) == len(self.absolute_joints), 'initial_absolute',
                 self.initial_absolute, f'one value per absolute joint {self.absolute_joints}')
        require(0.0 <= self.max_future_stamp <= 60.0, 'max_future_stamp',
                 self.max_future_stamp, '[0, 60] s')
        require(1 <= self.max_chunk_points <= 100000, 'max_chunk_points',
                 self.max_chunk_points, '1 to 100000')
        require(len(self.max_switch_jump) in (0, n)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) and v >= 0 for v in self.max_switch_jump),
                'max_switch_jump', self.max_switch_jump,
                f'empty (off) or {n} finite values >= 0, one per joint of {self.joint_names}')

    @property
    def dt(self) -> float:
        return 1.0 / self.control_rate


@dataclass
class _Active:
    stamp: float
    actions: np.ndarray  # (H, D) in joint_names order
    cursor: int
    seq: int
    ticks: int = 0  # ticks it has taken part in


@dataclass
class ExecutorStats:
    """Counters since start; `dropped` by reason. `switch_ticks`: ticks whose command came
    from a chunk that did not give the previous (non-hold) tick's command;
    `limited_switches`: those of them whose command max_switch_jump changed."""

    received: int = 0
    accepted: int = 0
    dropped: Counter = field(default_factory=Counter)
    ticks: int = 0
    hold_ticks: int = 0
    clipped_ticks: int = 0
    switch_ticks: int = 0
    limited_switches: int = 0
    arrival_delay_ms: list = field(default_factory=list)  # observation -> arrival
    chunk_age_ms: list = field(default_factory=list)  # observation -> tick, per non-hold tick


@dataclass(frozen=True)
class TickRecord:
    """The tick just run: a hold, a switch (counted in switch_ticks), and the age in seconds
    of the chunk(s) behind its command (None on a hold)."""

    hold: bool
    switch: bool
    chunk_age: Optional[float]


class ChunkExecutor:
    """Queues / blends chunks and yields one clipped command per tick (times in seconds)."""

    def __init__(self, cfg: ChunkExecutorConfig):
        self.cfg = cfg
        self._absolute = np.array([n in cfg.absolute_joints for n in cfg.joint_names])
        self._initial = np.zeros(len(cfg.joint_names))
        for name, value in zip(cfg.absolute_joints, cfg.initial_absolute):
            self._initial[cfg.joint_names.index(name)] = value
        self._lower = np.array(cfg.lower_limits, dtype=np.float64)
        self._upper = np.array(cfg.upper_limits, dtype=np.float64)
        self.stats = ExecutorStats()
        self._active: list[_Active] = []
        self._seq = 0
        self._episode_start: Optional[float] = None
        self._last = self._initial.copy()
        self._jump = np.array(cfg.max_switch_jump, dtype=np.float64) \
            if cfg.max_switch_jump else None
        self._prev_seqs: frozenset = frozenset()  # chunks behind the last tick; empty: a hold
        self._prev_command = self._initial.copy()
        self.last_tick: Optional[TickRecord] = None  # None before the first tick

    def reset(self, now: float) -> None:
        """New episode: forget every chunk, hold absolute joints at their initial values, and
        drop later chunks whose observation predates `now`."""
        self._active.clear()
        self._episode_start = now
        self._last = self._initial.copy()
        self._prev_seqs = frozenset()

    def stop(self) -> None:
        """Drop every chunk (hold from the next tick on); the episode goes on."""
        self._active.clear()

    def add(self, stamp: float, names: Sequence[str], actions: np.ndarray, now: float,
            times: Optional[Sequence[float]] = None) -> Optional[str]:
        """Offer a chunk (H, D) observed at `stamp`; returns None if accepted, else why not.

        times are its actions' time_from_start (seconds, H values): one control period
        apart, since the executor runs one action per tick.
        """
        self.stats.received += 1
        reason = self._check(stamp, names, actions, now, times)
        if reason is not None:
            self.stats.dropped[reason] += 1
            return reason
        order = [list(names).index(n) for n in self.cfg.joint_names]
        a = np.asarray(actions, dtype=np.float64)[:, order]  # (H, D) in joint_names order
        delay = now - stamp
        cursor = int(math.floor(delay / self.cfg.dt + 1e-9)) if self.cfg.latency_compensation \
            else 0
        cursor = max(cursor, 0)
        if cursor >= len(a):
            self.stats.dropped['expired'] += 1
            return 'expired'
        self._seq += 1
        chunk = _Active(stamp=stamp, actions=a, cursor=cursor, seq=self._seq)
        if self.cfg.mode == 'ensemble':
            self._active.append(chunk)
        else:  # prefix keeps the chunk in progress to blend from
            self._active = (self._active[-1:] if self.cfg.mode == 'prefix' else []) + [chunk]
        self.stats.accepted += 1
        self.stats.arrival_delay_ms.append(delay * 1e3)
        del self.stats.arrival_delay_ms[:-1000]
        return None

    def tick(self, now: float) -> tuple[np.ndarray, bool]:
        """The command (D,) for this tick and whether it is a hold; see also `last_tick`."""
        self.stats.ticks += 1
        horizon = self.cfg.max_chunk_age
        newest = self._active[-1] if self._active else None
        self._active = [c for c in self._active if c.cursor < len(c.actions)
                        and now <= c.stamp + (len(c.actions) - 1) * self.cfg.dt + horizon]
        prefix = self.cfg.mode == 'prefix'
        if prefix and self._active and self._active[-1] is not newest:
            self._active = []  # the new chunk ran out mid-blend: the old one stays replaced
        if not self._active:
            self.stats.hold_ticks += 1
            command = np.where(self._absolute, self._last, 0.0)
            self._prev_seqs = frozenset()
            self.last_tick = TickRecord(hold=True, switch=False, chunk_age=None)
            return command, True
        if self.cfg.mode == 'ensemble':  # oldest first: weight exp(-m * i), i = 0 for the oldest
            votes = np.stack([c.actions[c.cursor] for c in self._active])  # (N, D)
            w = np.exp(-self.cfg.ensemble_decay * np.arange(len(votes)))  # (N,)
            command = (w[:, None] * votes).sum(0) / w.sum()
            age = float(w @ [now - c.stamp for c in self._active]) / w.sum()
        else:  # the newest chunk; prefix blends it in over the one it took over from
            c = self._active[-1]
            command = c.actions[c.cursor].copy()
            if prefix and len(self._active) == 2:
                old = self._active[0]
                w = (c.ticks + 1) / (self.cfg.blend_actions + 1)
                command = (1.0 - w) * old.actions[old.cursor] + w * command
            age = now - c.stamp
        seqs = frozenset(c.seq for c in self._active)
        for c in self._active:
            c.cursor += 1
            c.ticks += 1
        if prefix and self._active[-1].ticks >= self.cfg.blend_actions:
            self._active = self._active[-1:]  # the blend is over
        switch = bool(self._prev_seqs) and not seqs <= self._prev_seqs
        if switch:  # a switch from a chunk
            self.stats.switch_ticks += 1
            if self._jump is not None:
                step = command - self._prev_command
                over = np.abs(step) > self._jump  # joints within the bound keep their value
                if over.any():
                    self.stats.limited_switches += 1
                    command = np.where(over, self._prev_command
                                       + np.clip(step, -self._jump, self._jump), command)
        self._prev_seqs = seqs
        clipped = np.clip(command, self._lower, self._upper)
        if not np.array_equal(clipped, command):
            self.stats.clipped_ticks += 1
        self._last = np.where(self._absolute, clipped, self._last)
        self._prev_command = clipped
        self.stats.chunk_age_ms.append(age * 1e3)
        del self.stats.chunk_age_ms[:-1000]
        self.last_tick = TickRecord(hold=False, switch=switch, chunk_age=age)
        return clipped, False

    def _evenly_spaced(self, times: np.ndarray, n: int) -> bool:
        """time_from_start = t0 + i * dt for every action, with 0 <= t0 < dt."""
        dt, tol = self.cfg.dt, 1e-3 * self.cfg.dt + 1e-6
        if times.shape != (n,) or not (-tol <= times[0] < dt - tol):
            return False
        return bool(np.all(np.abs(times - times[0] - dt * np.arange(n)) <= tol))

    @property
    def busy(self) -> bool:
        """Whether a chunk still has actions to run."""
        return any(c.cursor < len(c.actions) for c in self._active)

    def _check(self, stamp: float, names: Sequence[str], actions: np.ndarray, now: float,
               times: Optional[Sequence[float]]) -> Optional[str]:
        a = np.asarray(actions)
        if not math.isfinite(stamp) or stamp < 0:
            return 'stamp'
        if stamp > now + self.cfg.max_future_stamp:
            return 'future'
        if sorted(names) != sorted(self.cfg.joint_names):
            return 'joint_names'
        if a.ndim == 2 and a.shape[0] > self.cfg.max_chunk_points:
            return 'too_long'
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != len(self.cfg.joint_names):
            return 'shape'
        if not np.all(np.isfinite(a)):
            return 'non_finite'
        if times is not None and not self._evenly_spaced(np.asarray(times, np.float64), len(a)):
            return 'period'
        if self._episode_start is not None and stamp < self._episode_start:
            return 'previous_episode'
        if now - stamp > self.cfg.max_chunk_age:
            return 'stale'
        return None
