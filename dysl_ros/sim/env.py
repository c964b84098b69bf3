"""Tabletop environment: a floating gripper driven by end-effector delta actions.

Action semantics (one action per control step, `ACTION_NAMES` order, shape (7,)):

- dx, dy, dz: metres per step added to the gripper's target position in the world frame
  (+x right in the front camera image, +y away from it, +z up), each clipped to
  +-max_translation (default 0.02 m, i.e. 0.4 m/s at 20 Hz). The target is then clamped to the
  workspace box (`workspace_low` .. `workspace_high`; the tool centre point cannot go below
  z = 0.02, where the fingertips are 5 mm above the table) and kept within `max_lag` of the
  gripper's actual position (a blocked gripper pushes with a bounded force).
- droll, dpitch, dyaw: radians per step added to the target's roll, pitch, yaw angles
  (orientation R = Rz(yaw) Ry(pitch) Rx(roll); yaw 0 = fingers closing along world x), each
  clipped to +-max_rotation (default 0.1 rad). Roll and pitch stay within +-max_tilt; yaw is
  wrapped to [-pi, pi). The experts only use yaw.
- gripper: ABSOLUTE finger target in [0, 1] (0 fully open, 1 closed), clipped to [0, 1].

So "hold still" is zero deltas with the gripper value unchanged. Actions are read at float32
precision, so float32 actions stored in demos replay exactly. The target is a mocap body; the
gripper follows it through a weld constraint, so contacts (table, blocks, drawer) can hold it
back. Each control step runs 1 / (control_hz * physics_timestep) physics substeps (25 by
default: 20 Hz control, 2 ms physics).

An episode ends when the task succeeds or after the task's `max_steps`. The same seed (and
task) replays the same episode exactly: identical states and images for identical actions.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from dysl_ros.sim.scene import (  # noqa: E402
    BLOCK_HALF, BLOCK_NAMES, CABINET_Y, CAMERAS, FINGER_OPEN, build_scene_xml)
from dysl_ros.sim.tasks import EpisodeEnv, SuccessMonitor, Task, select_task  # noqa: E402

from dysl_ros.model.config import ACTION_NAMES  # noqa: E402  (one definition, shared)
from dysl_ros.validation import require  # noqa: E402

# Randomisation ranges of reset() (metres / radians).
BLOCK_X = (-0.16, 0.16)
BLOCK_Y = (-0.2, -0.06)
BLOCK_YAW = (-math.pi / 4, math.pi / 4)
BLOCK_MIN_DIST = 0.12
CABINET_X = (-0.12, 0.12)
START_X = (-0.05, 0.05)
START_Y = (-0.14, -0.08)
START_Z = (0.2, 0.25)



@dataclass(frozen=True)
class SimConfig:
    """Simulation settings.

    Args:
        image_size: square camera resolution in pixels.
        cameras: cameras rendered into each observation, from ('front', 'wrist'); () renders
            nothing (fast expert runs).
        control_hz: control (action) rate.
        physics_timestep: MuJoCo timestep; 1 / (control_hz * physics_timestep) must be an
            integer number of substeps.
        max_translation: per-step clip of dx, dy, dz in metres.
        max_rotation: per-step clip of droll, dpitch, dyaw in radians.
        max_tilt: limit of the target's absolute roll and pitch in radians.
        max_lag: the target is kept within this distance (m) of the gripper's actual
            position, which bounds the force the gripper can press with.
        shadows: render shadows (a depth cue, but about 4x slower software rendering; off by
            default so demos, benchmarks and the demo run fast on a CPU).
        max_steps: episode time limit override; None uses each task's own limit.
        workspace_low: lower corner of the box the gripper target is clamped to.
        workspace_high: upper corner of that box.
    """

    image_size: int = 64
    cameras: tuple[str, ...] = ('front', 'wrist')
    control_hz: float = 20.0
    physics_timestep: float = 0.002
    max_translation: float = 0.02
    max_rotation: float = 0.1
    max_tilt: float = 0.5
    max_lag: float = 0.04
    shadows: bool = False
    max_steps: int | None = None
    workspace_low: tuple[float, float, float] = (-0.35, -0.28, 0.02)
    workspace_high: tuple[float, float, float] = (0.35, 0.28, 0.35)

    def __post_init__(self) -> None:
        for name in ('cameras', 'workspace_low', 'workspace_high'):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        require(16 <= self.image_size <= 1024, 'image_size', self.image_size, '16..1024')
        require(all(c in CAMERAS for c in self.cameras), 'cameras', self.cameras,
                 f'names from {CAMERAS}')
        require(len(set(self.cameras)) == len(self.cameras), 'cameras', self.cameras,
                 'distinct names')
        require(self.control_hz > 0, 'control_hz', self.control_hz, '> 0')
        require(0 < self.physics_timestep <= 0.01, 'physics_timestep', self.physics_timestep,
                 '(0, 0.01] s')
        sub = 1.0 / (self.control_hz * self.physics_timestep)
        require(sub >= 1 and abs(sub - round(sub)) < 1e-6, 'control_hz', self.control_hz,
                 f'a rate whose period is a whole number of physics_timestep='
                 f'{self.physics_timestep} substeps (got {sub:.3f})')
        require(0 < self.max_translation <= 0.1, 'max_translation', self.max_translation,
                 '(0, 0.1] m')
        require(0 < self.max_rotation <= 0.5, 'max_rotation', self.max_rotation,
                 '(0, 0.5] rad')
        require(0 <= self.max_tilt <= 1.2, 'max_tilt', self.max_tilt, '[0, 1.2] rad')
        require(self.max_lag >= math.sqrt(3) * self.max_translation, 'max_lag', self.max_lag,
                 f'>= sqrt(3) * max_translation={self.max_translation} (one full step)')
        require(self.max_steps is None or self.max_steps >= 1, 'max_steps', self.max_steps,
                 'None or >= 1')
        lo, hi = np.array(self.workspace_low), np.array(self.workspace_high)
        require(lo.shape == (3,) and hi.shape == (3,) and bool(np.all(lo < hi)),
                 'workspace_low', (self.workspace_low, self.workspace_high),
                 'two (x, y, z) corners with low < high')
        require(lo[2] >= 0.02, 'workspace_low', self.workspace_low,
                 'z >= 0.02 (fingertips above the table)')

    @property
    def substeps(self) -> int:
        return int(round(1.0 / (self.control_hz * self.physics_timestep)))


@dataclass(frozen=True)
class Observation:
    """What a policy sees: camera images (H, W, 3) uint8, the instruction and the step index."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    instruction: str = ''
    step: int = 0

    def __post_init__(self) -> None:
        for name, im in self.images.items():
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f'images[{name!r}] is invalid: expected (H, W, 3) uint8, got '
                                 f'{im.shape} {im.dtype}')


def euler_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return np.array([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy])


def wrap_angle(a: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def quat_yaw(q: np.ndarray) -> float:
    """Heading of the body x axis in the world xy plane."""
    w, x, y, z = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class TabletopEnv(EpisodeEnv):
    """MuJoCo tabletop with language-selected tasks; see the module docstring for actions."""

    def __init__(self, cfg: SimConfig | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.model = mujoco.MjModel.from_xml_string(
            build_scene_xml(self.cfg.physics_timestep, self.cfg.image_size))
        self.data = mujoco.MjData(self.model)
        self._renderer = self._make_renderer() if self.cfg.cameras else None
        m = self.model
        body = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n)  # noqa: E731
        joint = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)  # noqa: E731
        self._gripper = body('gripper')
        self._cabinet = body('cabinet')
        self._blocks = {n: body(n) for n in BLOCK_NAMES}
        self._block_qadr = {n: m.jnt_qposadr[joint(n)] for n in BLOCK_NAMES}
        self._gripper_qadr = m.jnt_qposadr[joint('gripper')]
        self._finger_qadr = [m.jnt_qposadr[joint('finger_l')], m.jnt_qposadr[joint('finger_r')]]
        self._drawer_qadr = m.jnt_qposadr[joint('drawer')]
        self._handle = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, 'handle')
        self._lo = np.array(self.cfg.workspace_low)
        self._hi = np.array(self.cfg.workspace_high)
        self._task: Task | None = None
        self._monitor: SuccessMonitor | None = None
        self._target_pos = np.zeros(3)
        self._target_euler = np.zeros(3)
        self._grip = 0.0
        self._step = 0
        self._done = False
        self.seed: int | None = None
        self.episode = 0   # increments on every reset (experts use it to restart)

    def _make_renderer(self) -> mujoco.Renderer:
        try:
            r = mujoco.Renderer(self.model, self.cfg.image_size, self.cfg.image_size)
        except Exception as e:  # mujoco.FatalError or a GL loader error
            raise RuntimeError(
                f'cannot create a headless MuJoCo renderer ({e}). MUJOCO_GL='
                f'{os.environ.get("MUJOCO_GL")!r} must be egl (Debian: libegl1 libegl-mesa0 '
                'libgl1-mesa-dri) or osmesa (libosmesa6) and set before mujoco is first imported '
                '(import dysl_ros.sim before mujoco, or export MUJOCO_GL); or run without images: '
                'SimConfig(cameras=())') from e
        # No reflective materials in the scene: skipping the reflection pass changes no pixel.
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.cfg.shadows
        return r

    # ---- episode control -------------------------------------------------------------------
    def reset(self, seed: int = 0, instruction: str | None = None,
              task: str | Task | None = None) -> Observation:
        """Start an episode: place objects from `seed`; the task comes from the instruction,
        the task (name or Task) or, when both are None, from the seed."""
        chosen = select_task(seed, instruction, task)
        rng = np.random.default_rng(int(seed))
        self._task, self.seed = chosen, int(seed)
        self.episode += 1

        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        cab_x = rng.uniform(*CABINET_X)
        m.body_pos[self._cabinet] = (cab_x, CABINET_Y, 0.0)
        for name, (x, y, yaw) in zip(BLOCK_NAMES, self._sample_blocks(rng)):
            a = self._block_qadr[name]
            d.qpos[a:a + 3] = (x, y, BLOCK_HALF)
            d.qpos[a + 3:a + 7] = euler_to_quat(0.0, 0.0, yaw)
        start = np.array([rng.uniform(*START_X), rng.uniform(*START_Y), rng.uniform(*START_Z)])
        self._target_pos = start
        self._target_euler = np.zeros(3)
        self._grip = 0.0
        a = self._gripper_qadr
        d.qpos[a:a + 3] = start
        d.qpos[a + 3:a + 7] = (1.0, 0.0, 0.0, 0.0)
        for q in self._finger_qadr:
            d.qpos[q] = FINGER_OPEN
        self._apply_targets()
        mujoco.mj_forward(m, d)
        self._step = 0
        self._done = False
        self._monitor = SuccessMonitor(chosen, self.state())
        return self._observe()

    @staticmethod
    def _sample_blocks(rng: np.random.Generator) -> list[tuple[float, float, float]]:
        """Red and blue block (x, y, yaw): apart, and nothing in the blue block's push lane."""
        while True:
            red = [rng.uniform(*BLOCK_X), rng.uniform(*BLOCK_Y), rng.uniform(*BLOCK_YAW)]
            blue = [rng.uniform(*BLOCK_X), rng.uniform(*BLOCK_Y), rng.uniform(*BLOCK_YAW)]
            dist = math.hypot(red[0] - blue[0], red[1] - blue[1])
            in_lane = abs(red[1] - blue[1]) < 0.08 and blue[0] - 0.22 < red[0] < blue[0] + 0.12
            if dist >= BLOCK_MIN_DIST and not in_lane:
                return [tuple(red), tuple(blue)]

    def step(self, action: np.ndarray) -> tuple[Observation, bool, dict]:
        """Apply one action (7,), simulate one control period; return (obs, done, info)."""
        a = self._checked_action(action, ACTION_NAMES)
        cfg = self.cfg
        target = self._target_pos + np.clip(a[:3], -cfg.max_translation, cfg.max_translation)
        # Keep the target near the real gripper: bounds the weld force, so a blocked gripper
        # presses with a limited force instead of tunnelling through the cabinet or the table.
        ee = self.data.xpos[self._gripper]
        lag = float(np.linalg.norm(target - ee))
        if lag > cfg.max_lag:
            target = ee + (target - ee) * (cfg.max_lag / lag)
        self._target_pos = np.clip(target, self._lo, self._hi)
        e = self._target_euler + np.clip(a[3:6], -cfg.max_rotation, cfg.max_rotation)
        e[:2] = np.clip(e[:2], -cfg.max_tilt, cfg.max_tilt)
        e[2] = wrap_angle(e[2])
        self._target_euler = e
        self._grip = float(np.clip(a[6], 0.0, 1.0))
        self._apply_targets()
        mujoco.mj_step(self.model, self.data, nstep=cfg.substeps)
        self._step += 1
        success = self._monitor.update(self.state())
        timeout = self._step >= self.max_steps
        self._done = success or timeout
        info = {'success': success, 'task': self._task.name, 'step': self._step,
                'timeout': timeout and not success}
        return self._observe(), self._done, info

    def _apply_targets(self) -> None:
        self.data.mocap_pos[0] = self._target_pos
        self.data.mocap_quat[0] = euler_to_quat(*self._target_euler)
        self.data.ctrl[:] = FINGER_OPEN * (1.0 - self._grip)

    def _observe(self) -> Observation:
        images = {}
        for cam in self.cfg.cameras:
            self._renderer.update_scene(self.data, camera=cam)
            images[cam] = self._renderer.render()
        return Observation(images=images, instruction=self._task.instruction, step=self._step)

    def close(self) -> None:
        """Free the renderer (its GL context)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- read-only views ------------------------------------------------------------------
    @property
    def success(self) -> bool:
        return bool(self._monitor is not None and self._monitor.success)

    def progress(self) -> float:
        """Metres lifted / pushed / opened so far for the current task."""
        return self._monitor.progress(self.state())

    @property
    def max_progress(self) -> float:
        """The most progress() reached so far in this episode."""
        return self._monitor.max_progress

    def target_distance(self) -> float:
        """Metres from the gripper to what the task is about (its block, or the drawer handle)."""
        d, task = self.data, self.task
        target = (d.site_xpos[self._handle] if task.kind == 'drawer'
                  else d.xpos[self._blocks[task.target]])
        return float(np.linalg.norm(d.xpos[self._gripper] - target))

    def state(self) -> dict[str, np.ndarray]:
        """Privileged simulator state (copies), for experts, tests and logging."""
        d = self.data
        g = self._gripper
        s = {
            'ee_pos': d.xpos[g].copy(),
            'ee_quat': d.xquat[g].copy(),
            'ee_yaw': np.array(quat_yaw(d.xquat[g])),
            'target_pos': self._target_pos.copy(),
            'target_euler': self._target_euler.copy(),
            'gripper': np.array(self._grip),
            'finger_qpos': d.qpos[self._finger_qadr].copy(),
            'drawer_qpos': np.array(d.qpos[self._drawer_qadr]),
            'handle_pos': d.site_xpos[self._handle].copy(),
            'qpos': d.qpos.copy(),
            'qvel': d.qvel.copy(),
            'step': np.array(self._step),
        }
        for name, b in self._blocks.items():
            s[f'{name}_pos'] = d.xpos[b].copy()
            s[f'{name}_quat'] = d.xquat[b].copy()
            s[f'{name}_yaw'] = np.array(quat_yaw(d.xquat[b]))
        return s
