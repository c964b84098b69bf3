"""The simulation suites, one registry: name -> env factory, tasks, expert, action names,
seed splits. Commands take `--suite NAME` and look everything up here, never by an `if`.

- 'tabletop' (the default): our MuJoCo tabletop (sim/env.py), 7-D actions at 20 Hz.
- 'metaworld-mt10': Meta-World's MT10 tasks (sim/metaworld_suite.py), 4-D actions at 80 Hz.

Both draw their episodes' variations from the same seed ranges (sim/splits.py): demos below
10**9 (gen-demos), `validation` and `test` above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from dysl_ros.sim import metaworld_suite as mw
from dysl_ros.sim.env import ACTION_NAMES, SimConfig, TabletopEnv
from dysl_ros.sim.expert import make_expert
from dysl_ros.sim.splits import SPLITS
from dysl_ros.sim.tasks import TASKS

DEFAULT_SUITE = 'tabletop'


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
    """

    name: str
    tasks: tuple
    action_names: tuple[str, ...]
    config: Callable[..., Any]
    make_env: Callable[[Any], Any]
    make_expert: Callable[[Any], Any]
    splits: Mapping[str, range]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


SUITES: dict[str, Suite] = {
    'tabletop': Suite('tabletop', TASKS, ACTION_NAMES, SimConfig, TabletopEnv,
                      make_expert, SPLITS),
    'metaworld-mt10': Suite('metaworld-mt10', mw.TASKS, mw.ACTION_NAMES, mw.MetaWorldConfig,
                            mw.MetaWorldEnv, mw.make_expert, SPLITS),
}


def get_suite(name: str) -> Suite:
    """The suite called `name` (ValueError naming the suites)."""
    if name not in SUITES:
        raise ValueError(f'suite={name!r} is invalid: expected one of {list(SUITES)}')
    return SUITES[name]
