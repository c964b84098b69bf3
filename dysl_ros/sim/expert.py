"""Scripted experts (privileged state) for every tabletop task, and the episode runner.

The experts move the gripper target with a trapezoidal speed profile: fast and smooth in free
space (up to 2 cm/step, speed changes of at most 4 mm/step), slow around contact (approach,
grasp, push, pull, release: at most 6-8 mm/step). Actions are therefore nearly constant while
cruising and change abruptly at grasp and release, the continuity structure DySL relies on.
After each act(), `expert.phase` names the phase that produced the action: 'reach', 'descend',
'grasp', 'lift', 'hold' (pick), 'push' (push), 'pull', 'release' (drawer), or 'retry' (the
grasp or the push contact was lost: back up to hover height and reach again).
`take_over(last_action)` continues from a state another controller left (recovery demos).

Per-task success of any suite's experts: `python -m dysl_ros.sim.check_experts`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from dysl_ros.sim.env import TabletopEnv, wrap_angle
from dysl_ros.sim.scene import BLOCK_HALF

HOVER_Z = 0.10         # tool centre point height for free-space moves near objects
LIFT_Z = 0.15          # pick: lift to this height, then hold
GRASP_Z = BLOCK_HALF + 0.002
PUSH_Z = 0.022         # fingertips 7 mm above the table
PUSH_OFFSET = 0.065    # push: start this far to the right of the block centre
PUSH_TRAVEL = 0.14     # push: target displacement (success needs 0.1)
PULL_TRAVEL = 0.145    # drawer: target opening (success needs 0.12)
FAST = (0.02, 0.004)   # free space: max speed (m/step), max speed change (m/step^2)
SLOW = (0.006, 0.0015)  # approach and release near contact
CONTACT = (0.008, 0.002)  # pushing and pulling
YAW_RATE = (0.1, 0.025)   # rad/step, rad/step^2
GRIP_RATE = 0.25       # gripper command change per step
GRASP_STEPS = 8        # steps spent closing and settling the fingers


def _braking_speed(dist: float, decel: float) -> float:
    """Largest speed from which steps shrinking by `decel` per step stop within `dist`."""
    # v + (v - a) + (v - 2a) + ... ~= v^2 / (2a) + v / 2 <= dist
    return (-decel + math.sqrt(decel * decel + 8.0 * decel * dist)) / 2.0


class Expert:
    """Scripted expert for the env's current task; call act() once per step."""

    def __init__(self, env: TabletopEnv) -> None:
        self.env = env
        self._episode = -1
        self._phase = 'reach'   # state machine
        self.phase = 'reach'    # the phase that produced the last action (for logs and plots)

    def reset(self) -> None:
        """Restart for the env's current episode (called automatically after env.reset)."""
        s = self.env.state()
        self._episode = self.env.episode
        self._phase = self.phase = 'reach'
        self._v = np.zeros(3)
        self._w = 0.0
        self._grip = float(s['gripper'])
        self._count = 0
        self._anchor = s['target_pos'].copy()
        task = self.env.task
        self._start = (s['handle_pos'].copy() if task.kind == 'drawer'
                       else s[f'{task.target}_pos'].copy())

    def take_over(self, last_action: np.ndarray) -> None:
        """Continue from whatever state another controller left (recovery demonstrations).

        The motion profile starts from `last_action` (the speed and gripper command in force)
        and the phase is read off the scene: aligned and open above the object -> descend,
        closed on it -> grasp, closed beside it or low elsewhere -> retry (open, up, reach).
        """
        self.reset()
        a = np.asarray(last_action, dtype=np.float64)
        self._v, self._w, self._grip = a[:3].copy(), float(a[5]), float(np.clip(a[6], 0, 1))
        self._phase = self.phase = self._resume_phase(self.env.state())

    def _resume_phase(self, s: dict) -> str:
        task, ee = self.env.task, s['ee_pos']
        if task.kind == 'push':
            block = s[f'{task.target}_pos']
            pre = np.array([block[0] + PUSH_OFFSET, block[1]])
            if (block[0] + 0.01 < ee[0] < pre[0] + 0.01 and abs(ee[1] - block[1]) < 0.015
                    and ee[2] < PUSH_Z + 0.01):
                return 'push'
            if np.linalg.norm(ee[:2] - pre) < 0.015:
                return 'descend'
            return 'retry' if ee[2] < HOVER_Z - 0.02 else 'reach'
        goal = s['handle_pos'] if task.kind == 'drawer' else s[f'{task.target}_pos']
        aligned = float(np.linalg.norm(ee[:2] - goal[:2])) < 0.015
        closing = self._grip > (0.75 if task.kind == 'drawer' else 0.5)
        if closing:
            return 'grasp' if aligned and ee[2] - goal[2] < 0.015 else 'retry'
        if aligned:
            return 'descend'
        return 'retry' if ee[2] < HOVER_Z - 0.02 else 'reach'

    def act(self) -> np.ndarray:
        """Next action (7,) for the env's current state."""
        if self._episode != self.env.episode:
            self.reset()
        s = self.env.state()
        kind = self.env.task.kind
        if kind == 'pick':
            return self._pick(s)
        if kind == 'push':
            return self._push(s)
        return self._drawer(s)

    # ---- motion primitive -------------------------------------------------------------------
    def _move(self, s: dict, goal: np.ndarray, yaw: float, limits: tuple[float, float],
              grip: float) -> tuple[np.ndarray, bool]:
        """Move the target towards goal/yaw on a trapezoidal profile; return (action, arrived)."""
        self.phase = self._phase
        vmax, amax = limits
        err = np.asarray(goal, dtype=np.float64) - s['target_pos']
        dist = float(np.linalg.norm(err))
        v_des = np.zeros(3)
        if dist > 1e-9:
            v_des = err / dist * min(vmax, _braking_speed(dist, amax), dist)
        dv = v_des - self._v
        n = float(np.linalg.norm(dv))
        self._v = self._v + (dv * (amax / n) if n > amax else dv)

        yerr = wrap_angle(yaw - float(s['target_euler'][2]))
        wmax, alpha = YAW_RATE
        w_des = math.copysign(min(wmax, _braking_speed(abs(yerr), alpha), abs(yerr)), yerr)
        self._w += float(np.clip(w_des - self._w, -alpha, alpha))

        self._grip += float(np.clip(grip - self._grip, -GRIP_RATE, GRIP_RATE))
        # level a tilt another controller left (take_over); zero in the expert's own episodes
        tilt = -np.clip(s['target_euler'][:2], -YAW_RATE[0], YAW_RATE[0])
        action = np.array([*self._v, *tilt, self._w, self._grip])
        arrived = (dist < 0.002 and abs(yerr) < 0.02 and abs(self._grip - grip) < 1e-9
                   and float(np.linalg.norm(self._v)) < 0.003)
        return action, arrived

    def _hold(self, s: dict, grip: float) -> tuple[np.ndarray, bool]:
        return self._move(s, s['target_pos'], float(s['target_euler'][2]), SLOW, grip)

    def _aligned_yaw(self, s: dict, yaw: float, period: float) -> float:
        """The yaw + k * period closest to the gripper target's current yaw."""
        cur = float(s['target_euler'][2])
        return cur + wrap_angle((yaw - cur) * (2 * math.pi / period)) * period / (2 * math.pi)

    def _tracking(self, s: dict, tol: float) -> bool:
        return float(np.linalg.norm(s['ee_pos'] - s['target_pos'])) < tol

    # ---- tasks --------------------------------------------------------------------------------
    def _pick(self, s: dict) -> np.ndarray:
        name = self.env.task.target
        block = s[f'{name}_pos']
        yaw = self._aligned_yaw(s, float(s[f'{name}_yaw']), math.pi / 2)
        if self._phase == 'reach':
            a, ok = self._move(s, (block[0], block[1], HOVER_Z), yaw, FAST, 0.0)
            if ok:
                self._phase = 'descend'
            return a
        if self._phase == 'descend':
            a, ok = self._move(s, (block[0], block[1], GRASP_Z), yaw, SLOW, 0.0)
            if ok and self._tracking(s, 0.005):
                self._phase, self._count = 'grasp', 0
            return a
        if self._phase == 'grasp':
            a, _ = self._hold(s, 1.0)
            self._count += 1
            if self._count >= GRASP_STEPS:
                self._phase = 'lift'
                self._anchor = s['target_pos'].copy()
            return a
        if self._phase in ('lift', 'hold'):
            if s['ee_pos'][2] - block[2] > 0.03:   # the block slipped out: open and retry
                self._phase = 'retry'
                return self._pick(s)
            goal = (self._anchor[0], self._anchor[1], LIFT_Z)
            a, ok = self._move(s, goal, float(s['target_euler'][2]), SLOW, 1.0)
            if ok:
                self._phase = 'hold'
            return a
        return self._retry(s, 0.0)

    def _push(self, s: dict) -> np.ndarray:
        block = s[f'{self.env.task.target}_pos']
        yaw = 0.0
        pre = np.array([block[0] + PUSH_OFFSET, block[1], HOVER_Z])
        if self._phase == 'reach':
            a, ok = self._move(s, pre, yaw, FAST, 1.0)
            if ok:
                self._phase = 'descend'
            return a
        if self._phase == 'descend':
            a, ok = self._move(s, (pre[0], pre[1], PUSH_Z), yaw, SLOW, 1.0)
            if ok and self._tracking(s, 0.005):
                self._phase = 'push'
            return a
        if self._phase == 'push':
            ee = s['ee_pos']
            lost = ee[0] < block[0] + 0.01 or abs(ee[1] - block[1]) > 0.025
            if lost:
                self._phase = 'retry'
                return self._retry(s, 1.0)
            goal = (self._start[0] - PUSH_TRAVEL, block[1], PUSH_Z)
            a, ok = self._move(s, goal, yaw, CONTACT, 1.0)
            if ok:
                self._phase = 'retry'
            return a
        return self._retry(s, 1.0)

    def _drawer(self, s: dict) -> np.ndarray:
        h = s['handle_pos']
        yaw = self._aligned_yaw(s, math.pi / 2, math.pi)
        if self._phase == 'reach':
            a, ok = self._move(s, (h[0], h[1], h[2] + 0.07), yaw, FAST, 0.5)
            if ok:
                self._phase = 'descend'
            return a
        if self._phase == 'descend':
            a, ok = self._move(s, h, yaw, SLOW, 0.5)
            if ok and self._tracking(s, 0.005):
                self._phase, self._count = 'grasp', 0
            return a
        if self._phase == 'grasp':
            a, _ = self._hold(s, 1.0)
            self._count += 1
            if self._count >= GRASP_STEPS:
                self._phase = 'pull'
            return a
        if self._phase == 'pull':
            if float(np.linalg.norm(s['ee_pos'] - h)) > 0.03:   # lost the handle
                self._phase = 'retry'
                return self._retry(s, 0.5)
            goal = (h[0], self._start[1] - PULL_TRAVEL, h[2])
            a, ok = self._move(s, goal, yaw, CONTACT, 1.0)
            if ok:
                self._phase = 'release'
            return a
        if self._phase == 'release':
            a, _ = self._hold(s, 0.5)
            return a
        return self._retry(s, 0.5)

    def _retry(self, s: dict, grip: float) -> np.ndarray:
        """Open (or keep closed for pushing), go up to hover height, then reach again."""
        self._phase = 'retry'
        goal = (s['target_pos'][0], s['target_pos'][1], HOVER_Z)
        a, ok = self._move(s, goal, float(s['target_euler'][2]), SLOW, grip)
        if ok:
            self._phase = 'reach'
        return a


def make_expert(env: TabletopEnv) -> Expert:
    """Scripted expert for `env` (follows env.reset: the task may change per episode)."""
    return Expert(env)


def run_episode(env: TabletopEnv, seed: int, task_name: str, record: bool = False,
                expert: Callable = make_expert) -> dict:
    """Run one expert episode; return success, length and (if record) observations/actions.
    Any suite's env works with its own expert factory (sim/suites.py)."""
    obs = env.reset(seed=seed, task=task_name)
    return finish_episode(env, expert(env), obs, seed, record)


def finish_episode(env: TabletopEnv, expert: Expert, obs, seed: int, record: bool) -> dict:
    """Let `expert` act from observation `obs` until the episode ends (see run_episode; any
    suite's env and expert)."""
    task = env.task
    images = {c: [] for c in env.cfg.cameras}
    actions, phases = [], []
    done, info = False, {'success': False}
    while not done:
        a = expert.act()
        if record:
            for c in env.cfg.cameras:
                images[c].append(obs.images[c])
            actions.append(a.astype(np.float32))
            phases.append(expert.phase)
        obs, done, info = env.step(a)
    out = {'success': bool(info['success']), 'length': env.step_count, 'seed': seed,
           'task': task.name, 'instruction': task.instruction}
    if record:
        out['images'] = {c: np.stack(v) for c, v in images.items()}
        out['actions'] = np.stack(actions)
        out['phases'] = np.array(phases)
    return out
