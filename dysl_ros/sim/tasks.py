"""Language-selected tabletop tasks and their success tests.

Every task runs in the same scene (both blocks and the drawer are always present), so only
the instruction says what to do. Success tests are chosen so that doing nothing or moving at
random does not pass them (measured: 0 of 300 seeds per task with zero, uniform random or
random-walk actions):

- pick: the target block is more than `threshold` above its resting height for `hold_steps`
  consecutive control steps (it must be grasped and held up).
- push: the target block moved more than `threshold` to the left (-x) of where it started,
  mostly leftwards (sideways drift in y at most half the leftward move), is on the table (less
  than 1 cm above its resting height) and was never lifted more than 2 cm during the episode
  (pushed, not carried).
- drawer: the drawer slide is open more than `threshold`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dysl_ros.sim.scene import BLOCK_HALF, BLOCK_NAMES

KINDS = ('pick', 'push', 'drawer')
PUSH_ON_TABLE = 0.01    # push: block must end within 1 cm of its resting height
PUSH_MAX_LIFT = 0.02    # push: block must never be lifted more than 2 cm
PUSH_MAX_DRIFT = 0.5    # push: |y drift| at most this fraction of the leftward displacement


def normalize_instruction(text: str) -> str:
    """Lower-case and collapse whitespace."""
    return ' '.join(str(text).lower().split())


@dataclass(frozen=True)
class Task:
    """One instruction-selected task.

    Args:
        name: short identifier (used in file names and tables).
        instruction: the exact language instruction (matched case/whitespace-insensitively).
        max_steps: episode time limit in control steps.
        kind: 'pick', 'push' or 'drawer' (selects the success test and the expert).
        target: the body the task is about ('red_block', 'blue_block' or 'drawer').
        threshold: metres to lift / push / open for success.
        hold_steps: consecutive steps the success condition must hold.
    """

    name: str
    instruction: str
    max_steps: int
    kind: str
    target: str
    threshold: float = 0.05
    hold_steps: int = 1

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace('_', '').isalnum():
            raise ValueError(f'name={self.name!r} is invalid: expected [a-z0-9_]+')
        if normalize_instruction(self.instruction) != self.instruction:
            raise ValueError(f'instruction={self.instruction!r} is invalid: expected lower '
                             'case words separated by single spaces')
        if self.kind not in KINDS:
            raise ValueError(f'kind={self.kind!r} is invalid: expected one of {KINDS}')
        targets = BLOCK_NAMES if self.kind in ('pick', 'push') else ('drawer',)
        if self.target not in targets:
            raise ValueError(f'target={self.target!r} is invalid for kind={self.kind!r}: '
                             f'expected one of {targets}')
        if self.max_steps < 1:
            raise ValueError(f'max_steps={self.max_steps!r} is invalid: expected >= 1')
        if not 0.0 < self.threshold < 0.3:
            raise ValueError(f'threshold={self.threshold!r} is invalid: expected (0, 0.3) m')
        if self.hold_steps < 1:
            raise ValueError(f'hold_steps={self.hold_steps!r} is invalid: expected >= 1')


TASKS: tuple[Task, ...] = (
    Task('pick_red', 'pick up the red block', max_steps=160, kind='pick', target='red_block',
         threshold=0.05, hold_steps=5),
    Task('pick_blue', 'pick up the blue block', max_steps=160, kind='pick',
         target='blue_block', threshold=0.05, hold_steps=5),
    Task('push_blue_left', 'push the blue block to the left', max_steps=160, kind='push',
         target='blue_block', threshold=0.1),
    Task('open_drawer', 'open the drawer', max_steps=160, kind='drawer', target='drawer',
         threshold=0.12),
)


def find_task(instruction: str, tasks: Sequence = TASKS):
    """Return the task of `tasks` whose instruction matches (case/whitespace-insensitive)."""
    key = normalize_instruction(instruction)
    for task in tasks:
        if task.instruction == key:
            return task
    known = ', '.join(repr(t.instruction) for t in tasks)
    raise ValueError(f'unknown instruction {instruction!r}; known instructions: {known}')


def task_by_name(name: str, tasks: Sequence = TASKS):
    """Return the task of `tasks` with this name."""
    for task in tasks:
        if task.name == name:
            return task
    raise ValueError(f'unknown task {name!r}; known tasks: {[t.name for t in tasks]}')


def select_task(seed: int, instruction: str | None = None, task=None, tasks: Sequence = TASKS):
    """The episode's task (any suite's): from the instruction, the task (a name or one of
    `tasks`) or, when both are None, from the seed (an int >= 0, checked here)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'seed={seed!r} is invalid: expected an int >= 0')
    chosen = None if instruction is None else find_task(instruction, tasks)
    if task is not None:
        by_task = task_by_name(task, tasks) if isinstance(task, str) else task
        if chosen is not None and chosen != by_task:
            raise ValueError(f'instruction={instruction!r} does not match task={task!r}')
        chosen = by_task
    if chosen is None:   # own stream: the placement does not depend on how the task was chosen
        chosen = tasks[int(np.random.default_rng([int(seed), 1]).integers(len(tasks)))]
    return chosen


class SuccessMonitor:
    """Tracks one episode's success condition from privileged state, one call per step."""

    def __init__(self, task: Task, state: dict) -> None:
        self.task = task
        self.start = self._value(state)
        self.max_lift = 0.0
        self.max_progress = self.progress(state)  # the most lifted / pushed / opened so far
        self.streak = 0
        self.success = False

    def _value(self, state: dict) -> np.ndarray:
        if self.task.kind == 'drawer':
            return np.array([float(state['drawer_qpos'])])
        return np.array(state[f'{self.task.target}_pos'], dtype=np.float64)

    def progress(self, state: dict) -> float:
        """Metres lifted / pushed left / opened so far (the quantity the threshold applies to)."""
        value = self._value(state)
        if self.task.kind == 'pick':
            return float(value[2] - BLOCK_HALF)
        if self.task.kind == 'push':
            return float(self.start[0] - value[0])
        return float(value[0])

    def update(self, state: dict) -> bool:
        """Advance by one control step; return True once the task has succeeded."""
        if self.task.kind in ('pick', 'push'):
            lift = float(state[f'{self.task.target}_pos'][2] - BLOCK_HALF)
            self.max_lift = max(self.max_lift, lift)
        progress = self.progress(state)
        self.max_progress = max(self.max_progress, progress)
        ok = progress > self.task.threshold
        if self.task.kind == 'push':
            drift = abs(float(state[f'{self.task.target}_pos'][1] - self.start[1]))
            ok = (ok and lift < PUSH_ON_TABLE and self.max_lift < PUSH_MAX_LIFT
                  and drift <= PUSH_MAX_DRIFT * progress)
        self.streak = self.streak + 1 if ok else 0
        self.success = self.success or self.streak >= self.task.hold_steps
        return self.success


class EpisodeEnv:
    """What every suite's env shares: the episode's read-only views and context-manager use.

    A subclass sets `cfg` (with `max_steps`, 0 or None: the task's), `_task`, `_step` and
    `_done`, and defines `success` and `close()`.
    """

    cfg: Any
    _task: Any = None
    _step: int = 0
    _done: bool = False

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> 'EpisodeEnv':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def task(self) -> Any:
        if self._task is None:
            raise RuntimeError('no task yet: call reset()')
        return self._task

    @property
    def done(self) -> bool:
        return self._done

    @property
    def step_count(self) -> int:
        return self._step

    @property
    def max_steps(self) -> int:
        return self.cfg.max_steps or self.task.max_steps

    def _checked_action(self, action: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """A step's action as float64 (through float32 on purpose: stored float32 actions
        replay bit-identically), refused before reset(), after the episode ended, or when it
        is not len(names) finite values."""
        if self._task is None:
            raise RuntimeError('step() called before reset()')
        if self._done:
            raise RuntimeError('the episode is over (success or time limit); call reset()')
        a = np.asarray(action, dtype=np.float32).astype(np.float64).reshape(-1)
        if a.shape != (len(names),) or not np.all(np.isfinite(a)):
            raise ValueError(f'action is invalid: expected {len(names)} finite values '
                             f'{tuple(names)}, got {np.asarray(action).tolist()}')
        return a
