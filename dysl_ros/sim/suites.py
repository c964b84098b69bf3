"""The simulation suites, one registry: name -> env factory, tasks, expert, action names and
limits, seed splits. Commands and nodes take a suite name (`--suite NAME`, the sim node's
`suite` parameter) and look everything up here, never by an `if`.

- 'tabletop' (the default): our MuJoCo tabletop (sim/env.py), 7-D actions at 20 Hz, cameras
  front and wrist, gripper absolute in [0, 1] starting open (0).
- 'metaworld-mt10': Meta-World's MT10 tasks (sim/metaworld_suite.py), 4-D actions in [-1, 1]
  at 80 Hz, cameras corner and gripperPOV, gripper absolute starting open (-1).

Both draw their episodes' variations from the same seed ranges (sim/splits.py): demos below
10**9 (gen-demos), `validation` and `test` above.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from dysl_ros.paths import package_path
from dysl_ros.sim import metaworld_suite as mw
from dysl_ros.sim.env import ACTION_NAMES, SimConfig, TabletopEnv
from dysl_ros.sim.expert import make_expert
from dysl_ros.sim.splits import SPLITS
from dysl_ros.sim.tasks import TASKS
from dysl_ros.validation import require

DEFAULT_SUITE = 'tabletop'

# The tabletop env clips each step's deltas to its config's limits, the gripper to [0, 1].
_TT = SimConfig()
_TT_HIGH = (_TT.max_translation,) * 3 + (_TT.max_rotation,) * 3 + (1.0,)
_TT_LOW = tuple(-v for v in _TT_HIGH[:6]) + (0.0,)


@dataclass(frozen=True)
class Suite:
    """One simulation suite.

    Args:
        name: the `--suite` value.
        tasks: its tasks (each with .name, .instruction, .max_steps), in table order.
        action_names: the env's action dimensions, in order (a model for the suite is
            configured with them: VLAConfig.action_names).
        config: the env's config class; takes image_size, cameras, shadows, max_steps.
        make_env: config -> env (reset / step / success / ..., see sim/env.py).
        make_expert: env -> scripted expert (act() per step, .phase).
        splits: named evaluation seed ranges (validation, test).
        action_low: per action, the lowest value the env acts on (a controller clips
            commands to [action_low, action_high]).
        action_high: per action, the highest.
        absolute_actions: actions that are absolute targets (the gripper), held at their
            last value; every other action is a delta, held at zero.
        initial_absolute: each absolute action's value before an episode's first command.
        model_folder: its shipped model, a folder of the package's models/ (default_model).
    """

    name: str
    tasks: tuple
    action_names: tuple[str, ...]
    config: Callable[..., Any]
    make_env: Callable[[Any], Any]
    make_expert: Callable[[Any], Any]
    splits: Mapping[str, range]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    absolute_actions: tuple[str, ...]
    initial_absolute: tuple[float, ...]
    model_folder: str

    def __post_init__(self) -> None:
        n = len(self.action_names)
        require(len(self.action_low) == n and len(self.action_high) == n
                and all(lo <= hi for lo, hi in zip(self.action_low, self.action_high)),
                'action_low', (self.action_low, self.action_high),
                f'{n} low <= high pairs, one per action of {self.action_names}')
        require(set(self.absolute_actions) <= set(self.action_names), 'absolute_actions',
                self.absolute_actions, f'names from {self.action_names}')
        require(len(self.initial_absolute) == len(self.absolute_actions), 'initial_absolute',
                self.initial_absolute, f'one value per absolute action {self.absolute_actions}')

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def default_model(self) -> Path:
        """The shipped model for this suite (models/<model_folder>; it may not exist yet)."""
        return package_path('models', self.model_folder)

    @property
    def cameras(self) -> tuple[str, ...]:
        """The cameras the suite renders by default (the first is the primary)."""
        return tuple(self.config().cameras)

    @property
    def control_hz(self) -> float:
        """The suite's default control rate."""
        return float(self.config().control_hz)

    def check_model(self, action_names: Any, model: str = 'the model') -> None:
        """ValueError (one line) unless a model's action names are this suite's."""
        if tuple(action_names) != tuple(self.action_names):
            raise ValueError(f'{model} acts in {tuple(action_names)}, the {self.name} suite in '
                             f'{tuple(self.action_names)}: pick the suite the model was '
                             'trained on (--suite)')

    def env_config(self, control_hz: float = 0.0, rate_name: str = 'control_hz',
                   **fields: Any) -> Any:
        """The env config with `fields` (image_size, cameras, max_steps, shadows); control_hz
        0 keeps the suite's rate, another must be one its env steps at (ValueError naming
        the rate as `rate_name` and the suite otherwise, as for a camera it does not have)."""
        cfg = self.config(**fields)
        if control_hz and abs(control_hz - cfg.control_hz) > 1e-9:
            names = {f.name for f in dataclasses.fields(cfg)}
            require('control_hz' in names, rate_name, control_hz,
                    f'{cfg.control_hz:g} Hz, the rate the {self.name} suite steps at (or 0 '
                    'for it)')
            cfg = dataclasses.replace(cfg, control_hz=control_hz)
        return cfg

    def controller_params(self, control_hz: float = 0.0) -> dict[str, Any]:
        """The controller node's parameters for this suite's actions: joint_names,
        control_rate (control_hz, 0: the suite's), limits and the gripper convention."""
        return {'joint_names': list(self.action_names),
                'control_rate': float(control_hz or self.control_hz),
                'lower_limits': [float(v) for v in self.action_low],
                'upper_limits': [float(v) for v in self.action_high],
                'absolute_joints': list(self.absolute_actions),
                'initial_absolute': [float(v) for v in self.initial_absolute]}

    def hold_action(self, last: Optional[np.ndarray] = None) -> np.ndarray:
        """The action (D,) that holds still: zero for every delta, each absolute action at
        its value in `last` (the previous command, clipped to its limits) or, with no
        previous command in the episode, at its initial value."""
        hold = np.zeros(len(self.action_names))
        for name, initial in zip(self.absolute_actions, self.initial_absolute):
            i = self.action_names.index(name)
            value = initial if last is None else float(last[i])
            hold[i] = float(np.clip(value, self.action_low[i], self.action_high[i]))
        return hold


SUITES: dict[str, Suite] = {
    'tabletop': Suite('tabletop', TASKS, ACTION_NAMES, SimConfig, TabletopEnv,
                      make_expert, SPLITS, _TT_LOW, _TT_HIGH, ('gripper',), (0.0,), 'default'),
    'metaworld-mt10': Suite('metaworld-mt10', mw.TASKS, mw.ACTION_NAMES, mw.MetaWorldConfig,
                            mw.MetaWorldEnv, mw.make_expert, SPLITS,
                            (mw.ACTION_LOW,) * 4, (mw.ACTION_HIGH,) * 4, ('gripper',),
                            (mw.GRIPPER_OPEN,), 'metaworld'),
}


def get_suite(name: str) -> Suite:
    """The suite called `name` (ValueError naming the suites)."""
    if name not in SUITES:
        raise ValueError(f'suite={name!r} is invalid: expected one of {list(SUITES)}')
    return SUITES[name]
