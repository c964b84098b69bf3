"""Recovery demonstrations: the expert takes over from states another controller left."""
import argparse
import json
import os

os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dysl_ros.datasets import iter_episodes, load_stats  # noqa: E402
from dysl_ros.export.random_model import build_random_model  # noqa: E402
from dysl_ros.model import VLAConfig  # noqa: E402
from dysl_ros.runtime.methods import make_policy  # noqa: E402
from dysl_ros.sim import SimConfig, TabletopEnv, make_expert  # noqa: E402
from dysl_ros.sim.demos import _WORKER, _init_worker, add_arguments, generate, run  # noqa: E402,E501
from dysl_ros.sim.recovery import run_recovery_episode  # noqa: E402
from dysl_ros.train.dataset import load_demos  # noqa: E402

TINY = VLAConfig(image_size=32, patch_size=8, d_model=32, n_layers=3, n_heads=2, mlp_ratio=2,
                 chunk_size=4)
SMALL = SimConfig(image_size=32)


@pytest.fixture(scope='module')
def blind_env():
    e = TabletopEnv(SimConfig(cameras=()))
    yield e
    e.close()


def _expert_until_low(env, seed: int, task: str):
    """Run the expert until its descent is 3 cm from the object; return the last action."""
    env.reset(seed=seed, task=task)
    expert = make_expert(env)
    while True:
        a = expert.act()
        env.step(a)
        if expert.phase == 'descend' and env.target_distance() < 0.03:
            return a


def _finish(env, expert) -> bool:
    while not env.done:
        env.step(expert.act())
    return env.success


@pytest.mark.parametrize('task', ['pick_red', 'open_drawer'])
def test_expert_takes_over_mid_descent_and_after_a_bad_close(blind_env, task):
    for seed in (0, 1):
        last = _expert_until_low(blind_env, seed, task)
        expert = make_expert(blind_env)
        expert.take_over(last)
        assert expert.phase == 'descend'   # aligned above the object, fingers open
        assert _finish(blind_env, expert), (task, seed)

        # Another controller drifts 3 cm sideways while closing the fingers on nothing.
        _expert_until_low(blind_env, seed, task)
        drift = np.array([0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 1.0])
        for _ in range(4):
            blind_env.step(drift)
        expert = make_expert(blind_env)
        expert.take_over(drift)
        assert expert.phase == 'retry'     # open, back up to hover height, reach again
        assert _finish(blind_env, expert), (task, seed)


def test_doing_nothing_then_taking_over_still_succeeds(blind_env):
    for task in ('pick_blue', 'push_blue_left'):
        blind_env.reset(seed=2, task=task)
        for _ in range(30):
            blind_env.step(np.zeros(7))
        expert = make_expert(blind_env)
        expert.take_over(np.zeros(7))
        assert expert.phase == 'reach'
        assert _finish(blind_env, expert), task


@pytest.fixture(scope='module')
def recovery(tmp_path_factory):
    root = tmp_path_factory.mktemp('recovery')
    model = build_random_model(root / 'model', TINY)
    out = root / 'recovery'
    summary = generate(out, episodes_per_task=1, seed=1, workers=1, sim_cfg=SMALL,
                       tasks=('pick_red', 'open_drawer'), recover_from=model)
    # An untrained model can leave a scene the expert cannot finish in time (a gripper jammed
    # and tilted against the block): such attempts are dropped like failed expert episodes.
    assert summary['complete']
    return model, out


def test_recovery_episodes_record_the_experts_part_and_replay(recovery):
    model, out = recovery
    policy = make_policy('full', model)
    env = TabletopEnv(SMALL)
    try:
        for ep in iter_episodes(out):
            again = run_recovery_episode(env, policy, ep.seed, ep.task)
            k = again['takeover_step']
            # An untrained model never comes near: the expert takes over in the first half.
            assert 0 <= k < 80 and ep.length + k <= 160
            assert ep.success and ep.phases[0] in ('reach', 'retry')
            assert np.array_equal(again['actions'], ep.actions)
            assert all(np.array_equal(again['images'][c], ep.images[c]) for c in ep.images)
    finally:
        env.close()
    with np.load(next(out.glob('*.npz'))) as z:
        assert 0 <= int(z['takeover_step']) < 80


def test_training_reads_several_folders_with_the_first_ones_statistics(recovery, tmp_path):
    _, out = recovery
    demos = tmp_path / 'demos'
    generate(demos, episodes_per_task=1, seed=0, workers=1, sim_cfg=SMALL, tasks=('pick_red',))
    episodes, stats = load_demos([demos, out])
    assert [e.path.startswith(str(demos)) for e in episodes] == [True, False, False]
    np.testing.assert_array_equal(stats['mean'], load_stats(demos)['mean'])
    front_only = tmp_path / 'front'
    generate(front_only, episodes_per_task=1, seed=0, workers=1,
             sim_cfg=SimConfig(image_size=16, cameras=('front',)), tasks=('pick_red',))
    with pytest.raises(ValueError, match=f'{front_only}: cameras'):
        load_demos([demos, front_only])


def test_gen_demos_refuses_a_bad_model_folder_naming_the_file(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(['--out', str(tmp_path / 'out'), '--episodes-per-task', '1',
                              '--recover-from', str(tmp_path / 'nowhere')])
    assert run(args) == 2
    assert 'nowhere/vla.json' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_gen_demos_refuses_more_open_loop_steps_than_the_chunk(recovery, tmp_path, capsys):
    model, _ = recovery
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(['--out', str(tmp_path / 'out'), '--recover-from', str(model),
                              '--open-loop-steps', str(TINY.chunk_size + 1)])
    assert run(args) == 2
    assert f'expected 1..{TINY.chunk_size}' in capsys.readouterr().err


def test_a_skipping_policy_can_drive_recovery_episodes_and_a_bad_method_is_refused(
        recovery, tmp_path, capsys):
    model, _ = recovery
    out = tmp_path / 'dysl'
    generate(out, episodes_per_task=1, seed=2, workers=1, sim_cfg=SMALL, tasks=('pick_red',),
             recover_from=model, recover_method='dysl', open_loop_steps=2)
    assert json.loads((out / 'index.json').read_text())['recover_method'] == 'dysl'
    ep = next(iter_episodes(out))
    env = TabletopEnv(SMALL)
    try:  # the same episode, driven again by DySL (its guidance counts 2 executed actions)
        policy = make_policy('dysl', model, guidance={'executed_actions': 2})
        assert policy.guidance.cfg.executed_actions == 2
        again = run_recovery_episode(env, policy, ep.seed, ep.task, open_loop_steps=2)
        assert np.array_equal(again['actions'], ep.actions)
    finally:
        env.close()
    for method, skipping in (('dysl', True), ('full', False)):  # what a worker drives with
        _init_worker('tabletop', SMALL, str(out), str(model), 2, method)
        assert _WORKER['policy'].skipping is skipping
        _WORKER['env'].close()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(['--out', str(tmp_path / 'bad'), '--recover-from', str(model),
                              '--recover-method', 'deepest'])
    assert run(args) == 2
    assert "recover_method='deepest' is invalid" in capsys.readouterr().err
