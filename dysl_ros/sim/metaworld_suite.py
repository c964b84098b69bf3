"""Meta-World MT10 as a suite: its ten tasks with instructions, cameras, success and experts.

The env has TabletopEnv's interface (reset(seed, instruction, task) -> Observation, step ->
(obs, done, info), success, done, step_count, max_steps, task, target_distance, max_progress),
so gen-demos and the closed-loop bench run it unchanged. Meta-World is imported only when an
env or expert is made: the task list needs no metaworld.

Action semantics (Meta-World's own 4-D space, `ACTION_NAMES` order, each clipped to [-1, 1]):

- dx, dy, dz: the mocap target moves 1 cm per unit per step (Meta-World's action_scale 1/100),
  clamped to its workspace box; the hand follows through a weld constraint.
- gripper: ABSOLUTE grip effort, -1 open .. +1 closed (the fingers' position targets).

Control runs at 80 Hz (5 physics substeps of 2.5 ms). An episode ends at the first step
Meta-World's own `info['success']` is true, or after `max_steps` (Meta-World's horizon, 500).

Variations (object and goal positions): the seed selects one, drawn by Meta-World's own
sampler (`_random_reset_space`, with each task's resampling rules: the draw MT10 makes its
50 variations per task with), seeded instead of from the global numpy stream, so every
seed is a reproducible variation and distinct seeds give distinct (continuous) draws. The
variation sets are the disjoint seed ranges of sim.splits: demos (below 10**9), validation
and test. The goal is in the state observation (MT10's setting) for the scripted experts;
policies see only images, where reach, push and pick-place draw it as a red, green or blue
sphere (the colour their instructions name). Meta-World draws that sphere with a 2 cm radius,
a pixel or two of a 64 px `corner` image, too little to see where to go; we draw it at
MetaWorldConfig.goal_marker_radius (5 cm: 3-4 px across). The sphere is a site: no physics,
and Meta-World's success test is unchanged.
"""
from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass

os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from dysl_ros.sim.env import Observation  # noqa: E402
from dysl_ros.sim.tasks import EpisodeEnv, normalize_instruction, select_task  # noqa: E402
from dysl_ros.validation import require  # noqa: E402

ACTION_NAMES = ('dx', 'dy', 'dz', 'gripper')
ACTION_LOW, ACTION_HIGH = -1.0, 1.0
GRIPPER_OPEN = -1.0   # the gripper action of open fingers: held before an episode's first command
CONTROL_HZ = 80.0   # Meta-World: frame_skip 5 x timestep 2.5 ms
HORIZON = 500       # Meta-World's max_path_length: step() refuses to go further
CAMERAS = ('corner', 'corner2', 'corner3', 'corner4', 'topview', 'behindGripper', 'gripperPOV')
# Their poses in Meta-World's xml point the image's up axis at the floor: rotated 180 degrees.
_UPSIDE_DOWN = ('corner', 'corner2', 'corner3', 'corner4')


@dataclass(frozen=True)
class MT10Task:
    """One MT10 task.

    Args:
        name: short identifier (file names, tables): Meta-World's name without '-v3',
            with underscores.
        env_name: Meta-World's environment name ('reach-v3', ...).
        instruction: the language instruction (lower case, single spaces).
        approach: what the gripper must come near: 'object' (the first object of
            Meta-World's observation: puck, handle, button, peg) or 'goal' (reach).
        max_steps: episode time limit in control steps (at most HORIZON).
        marks_goal: the instruction names a coloured goal sphere (Meta-World's 'goal' site),
            drawn at MetaWorldConfig.goal_marker_radius; other tasks' goal sites stay as
            Meta-World draws them.
    """

    name: str
    env_name: str
    instruction: str
    approach: str = 'object'
    max_steps: int = HORIZON
    marks_goal: bool = False

    def __post_init__(self) -> None:
        require(self.name.replace('_', '').isalnum(), 'name', self.name, '[a-z0-9_]+')
        require(normalize_instruction(self.instruction) == self.instruction, 'instruction',
                self.instruction, 'lower case words separated by single spaces')
        require(self.approach in ('object', 'goal'), 'approach', self.approach,
                "'object' or 'goal'")
        require(1 <= self.max_steps <= HORIZON, 'max_steps', self.max_steps, f'1..{HORIZON}')


TASKS: tuple[MT10Task, ...] = (
    MT10Task('reach', 'reach-v3', 'reach the red goal', approach='goal', marks_goal=True),
    MT10Task('push', 'push-v3', 'push the puck to the green goal', marks_goal=True),
    MT10Task('pick_place', 'pick-place-v3', 'pick up the puck and place it on the blue goal',
             marks_goal=True),
    MT10Task('door_open', 'door-open-v3', 'open the door'),
    MT10Task('drawer_open', 'drawer-open-v3', 'open the drawer'),
    MT10Task('drawer_close', 'drawer-close-v3', 'close the drawer'),
    MT10Task('button_press_topdown', 'button-press-topdown-v3', 'press the button down'),
    MT10Task('peg_insert_side', 'peg-insert-side-v3', 'insert the peg into the hole'),
    MT10Task('window_open', 'window-open-v3', 'slide the window open'),
    MT10Task('window_close', 'window-close-v3', 'slide the window closed'),
)


@dataclass(frozen=True)
class MetaWorldConfig:
    """Meta-World settings.

    Args:
        image_size: square camera resolution in pixels (Meta-World's offscreen buffer is
            640 x 480, so at most 480).
        cameras: cameras rendered into each observation, from CAMERAS; () renders nothing.
        shadows: render shadows (slower software rendering; off by default).
        max_steps: episode time limit override; None uses each task's own limit.
        goal_marker_radius: metres; the radius the goal sphere of reach, push and pick-place
            is drawn at (Meta-World's own is 0.02: a pixel or two at 64 px).
    """

    image_size: int = 64
    cameras: tuple[str, ...] = ('corner', 'gripperPOV')
    shadows: bool = False
    max_steps: int | None = None
    goal_marker_radius: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, 'cameras', tuple(self.cameras))
        require(16 <= self.image_size <= 480, 'image_size', self.image_size, '16..480')
        require(all(c in CAMERAS for c in self.cameras), 'cameras', self.cameras,
                f'names from {CAMERAS}')
        require(len(set(self.cameras)) == len(self.cameras), 'cameras', self.cameras,
                'distinct names')
        require(self.max_steps is None or 1 <= self.max_steps <= HORIZON, 'max_steps',
                self.max_steps, f'None or 1..{HORIZON}')
        require(0.0 < self.goal_marker_radius <= 0.1, 'goal_marker_radius',
                self.goal_marker_radius, '(0, 0.1] metres')

    @property
    def control_hz(self) -> float:
        return CONTROL_HZ


class _Instance:
    """One Meta-World environment (one task) and its renderer."""

    def __init__(self, task: MT10Task, cfg: MetaWorldConfig) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        self.mw = ALL_V3_ENVIRONMENTS[task.env_name]()
        if abs(self.mw.dt * CONTROL_HZ - 1.0) > 1e-9:
            raise RuntimeError(f'{task.env_name} steps at {1 / self.mw.dt} Hz, not {CONTROL_HZ}: '
                               'a metaworld other than 3.1.1 (requirements-dev.txt)?')
        if task.marks_goal:   # a site: drawn bigger, simulated the same
            goal = mujoco.mj_name2id(self.mw.model, mujoco.mjtObj.mjOBJ_SITE, 'goal')
            self.mw.model.site_size[goal, 0] = cfg.goal_marker_radius
        self.renderer = None
        if cfg.cameras:
            # No multisampling, shadows or reflections by default: a 64 px image takes about
            # 5 ms on this CPU instead of 80-110 ms with Meta-World's settings.
            self.mw.model.vis.quality.offsamples = 0
            self.renderer = mujoco.Renderer(self.mw.model, cfg.image_size, cfg.image_size)
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = cfg.shadows
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False

    def reset(self, env_name: str, seed: int) -> np.ndarray:
        """Draw variation `seed`, set it as the task (goal observable) and reset to it."""
        from metaworld.types import Task
        mw = self.mw   # the flags metaworld's own MT10 task maker (_make_tasks) sets to draw
        mw._freeze_rand_vec, mw._set_task_called, mw.seeded_rand_vec = False, True, True
        mw.seed(seed)
        mw.reset()   # draws mw._last_rand_vec from mw.np_random
        mw.set_task(Task(env_name=env_name, data=pickle.dumps(
            {'rand_vec': mw._last_rand_vec, 'env_cls': type(mw), 'partially_observable': False})))
        return mw.reset()[0]

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.mw.close()


class MetaWorldEnv(EpisodeEnv):
    """The MT10 tasks behind TabletopEnv's interface; see the module docstring."""

    def __init__(self, cfg: MetaWorldConfig | None = None) -> None:
        self.cfg = cfg or MetaWorldConfig()
        self._instances: dict[str, _Instance] = {}   # per task, made on first use
        self._task: MT10Task | None = None
        self._obs = np.zeros(0)     # Meta-World's state observation (the experts read it)
        self._start = np.zeros(3)   # the object's position at reset
        self._step = 0
        self._done = False
        self._success = False
        self._max_progress = 0.0
        self.seed: int | None = None
        self.episode = 0   # increments on every reset

    def reset(self, seed: int = 0, instruction: str | None = None,
              task: str | MT10Task | None = None) -> Observation:
        """Start an episode on variation `seed`; the task comes from the instruction, the
        task (name or MT10Task) or, when both are None, from the seed."""
        chosen = select_task(seed, instruction, task, TASKS)
        if chosen.name not in self._instances:
            self._instances[chosen.name] = _Instance(chosen, self.cfg)
        self._task, self.seed = chosen, int(seed)
        self.episode += 1
        self._obs = self._instance.reset(chosen.env_name, self.seed)
        self._start = self._obs[4:7].copy()
        self._step, self._done, self._success, self._max_progress = 0, False, False, 0.0
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[Observation, bool, dict]:
        """Apply one action (4,), simulate one control period; return (obs, done, info)."""
        a = self._checked_action(action, ACTION_NAMES)
        self._obs, _, _, _, mw_info = self._instance.mw.step(np.clip(a, ACTION_LOW, ACTION_HIGH))
        self._step += 1
        self._max_progress = max(self._max_progress, self.progress())
        self._success = bool(mw_info['success'])
        timeout = self._step >= self.max_steps
        self._done = self._success or timeout
        info = {'success': self._success, 'task': self._task.name, 'step': self._step,
                'timeout': timeout and not self._success}
        return self._observe(), self._done, info

    @property
    def _instance(self) -> _Instance:
        return self._instances[self.task.name]

    def _observe(self) -> Observation:
        images, inst = {}, self._instance
        for cam in self.cfg.cameras:
            inst.renderer.update_scene(inst.mw.data, camera=cam)
            im = inst.renderer.render()
            images[cam] = np.ascontiguousarray(im[::-1, ::-1]) if cam in _UPSIDE_DOWN else im
        return Observation(images=images, instruction=self.task.instruction, step=self._step)

    def close(self) -> None:
        """Free the renderers (their GL contexts) and the Meta-World environments."""
        for inst in self._instances.values():
            inst.close()
        self._instances.clear()

    # ---- read-only views ------------------------------------------------------------------
    @property
    def success(self) -> bool:
        return self._success

    def progress(self) -> float:
        """Metres the task's object moved from where it started (0 for reach)."""
        return 0.0 if self.task.approach == 'goal' else float(
            np.linalg.norm(self._obs[4:7] - self._start))

    @property
    def max_progress(self) -> float:
        """The most progress() reached so far in this episode."""
        return self._max_progress

    def target_distance(self) -> float:
        """Metres from the gripper's centre to what the task is about (its object, or the
        goal for reach)."""
        s = self.state()
        return float(np.linalg.norm(s['tcp_pos'] - s[f'{self.task.approach}_pos']))

    def state(self) -> dict[str, np.ndarray]:
        """Privileged simulator state (copies), for experts, tests and logging."""
        mw = self._instance.mw
        return {'obs': self._obs.copy(), 'tcp_pos': np.array(mw.tcp_center),
                'object_pos': self._obs[4:7].copy(), 'goal_pos': self._obs[-3:].copy(),
                'qpos': mw.data.qpos.copy(), 'qvel': mw.data.qvel.copy(),
                'step': np.array(self._step)}


class MetaWorldExpert:
    """Meta-World's scripted policy for the env's current task (metaworld.policies.
    ENV_POLICY_MAP, stateless: it reads the state observation); act() once per step."""

    phase = 'scripted'   # Meta-World's scripted policies have no named phases

    def __init__(self, env: MetaWorldEnv) -> None:
        self.env = env
        self._policies: dict = {}

    def take_over(self, last_action: np.ndarray) -> None:
        """Continue from whatever state another controller left (recovery demonstrations):
        the scripted policies read only the current state, so there is nothing to set."""

    def act(self) -> np.ndarray:
        """Next action (4,) float32 for the env's current state, clipped to the action space."""
        name = self.env.task.env_name
        if name not in self._policies:
            from metaworld.policies import ENV_POLICY_MAP
            self._policies[name] = ENV_POLICY_MAP[name]()
        with warnings.catch_warnings():   # its gains exceed 1 on purpose; the clip handles it
            warnings.filterwarnings('ignore', message=r'Constant\(s\) may be too high')
            a = self._policies[name].get_action(self.env.state()['obs'])
        return np.clip(a, ACTION_LOW, ACTION_HIGH).astype(np.float32)


def make_expert(env: MetaWorldEnv) -> MetaWorldExpert:
    """Scripted expert for `env` (follows env.reset: the task may change per episode)."""
    return MetaWorldExpert(env)
