"""Recovery demonstrations: the model drives, the expert takes over near contact.

Behaviour cloning only sees the expert's own states, so a policy that ends its reach 2 cm off
the block has never been shown what to do there (covariate shift, as in DAgger). A recovery
episode runs the model in closed loop until the gripper first comes within NEAR_M of the task's
object (`env.target_distance()`), rewinds the seeded episode to a random step shortly before or
after that moment, and lets the expert finish from there (`take_over`). Only the expert's part
is recorded, in the demo format, with `takeover_step` saying where it began; the seed, the
model and that step replay it exactly. Any suite whose env replays a seed deterministically
and whose expert has take_over works (sim/suites.py: the tabletop and MT10).

    python -m dysl_ros gen-demos --out data/recovery --recover-from runs/default \\
        --open-loop-steps 8 --episodes-per-task 400 --seed 1 [--suite metaworld-mt10]
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dysl_ros.sim.expert import finish_episode, make_expert

NEAR_M = 0.02             # "near contact": the gripper within 2 cm of the task's object
TAKEOVER_WINDOW = (-20, 15)  # take over this many steps before / after first coming near
OPEN_LOOP_STEPS = 4       # actions of each model chunk executed before the next inference


def run_recovery_episode(env, policy, seed: int, task_name: str,
                         open_loop_steps: int = OPEN_LOOP_STEPS,
                         expert: Callable = make_expert) -> dict:
    """One recovery episode (recorded, as expert.run_episode(record=True), + takeover_step):
    any suite's env with its own expert factory."""
    rng = np.random.default_rng(seed)
    obs = env.reset(seed=seed, task=task_name)
    policy.reset()
    actions: list[np.ndarray] = []
    near, done = None, False
    while not done and (near is None or len(actions) < near + TAKEOVER_WINDOW[1]):
        chunk, _ = policy.step(obs.images, obs.instruction)
        for a in chunk[:open_loop_steps]:
            obs, done, _ = env.step(a)
            actions.append(np.asarray(a, dtype=np.float64))
            if near is None and env.target_distance() < NEAR_M:
                near = len(actions)
            if done:
                break
    if near is None:   # never came near: take over in the first half (the expert needs time)
        k = int(rng.integers(0, max(1, len(actions) // 2)))
    else:
        k = near + int(rng.integers(TAKEOVER_WINDOW[0], TAKEOVER_WINDOW[1] + 1))
    k = int(np.clip(k, 0, len(actions) - 1))   # the episode must not have ended at step k

    obs = env.reset(seed=seed, task=task_name)   # same seed, same actions: the same states
    for a in actions[:k]:
        obs, _, _ = env.step(a)
    takeover = expert(env)
    takeover.take_over(actions[k - 1] if k else np.zeros_like(actions[0]))
    out = finish_episode(env, takeover, obs, seed, record=True)
    out.update(length=len(out['actions']), takeover_step=k)
    return out
