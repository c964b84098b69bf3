"""MuJoCo tabletop simulation: scene, language-selected tasks, scripted experts, demos.
Meta-World MT10 is the second suite (metaworld_suite.py); suites.py registers both.

Rendering is headless: MUJOCO_GL defaults to 'egl' (set MUJOCO_GL=osmesa to use OSMesa); it
must be chosen before mujoco is first imported, which importing this package does.
"""
import os

os.environ.setdefault('MUJOCO_GL', 'egl')

from dysl_ros.sim.env import ACTION_NAMES, Observation, SimConfig, TabletopEnv  # noqa: E402
from dysl_ros.sim.tasks import TASKS, Task, find_task  # noqa: E402

__all__ = ['ACTION_NAMES', 'TASKS', 'Expert', 'Observation', 'SimConfig', 'TabletopEnv', 'Task',
           'find_task', 'make_expert']


def __getattr__(name: str):
    # Lazy, so that `python -m dysl_ros.sim.expert` does not import the module twice.
    if name in ('Expert', 'make_expert'):
        from dysl_ros.sim import expert
        return getattr(expert, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
