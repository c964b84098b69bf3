"""MuJoCo tabletop: determinism, task selection, success tests, experts, demo files."""
import json
import os

os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dysl_ros.datasets import (  # noqa: E402
    EpisodeFormatError, iter_episodes, load_episode, load_stats, read_index)
from dysl_ros.sim import ACTION_NAMES, TASKS, SimConfig, TabletopEnv, make_expert  # noqa: E402
from dysl_ros.sim.demos import generate  # noqa: E402
from dysl_ros.sim.expert import run_episode  # noqa: E402

NO_RENDER = SimConfig(cameras=())


@pytest.fixture(scope='module')
def env():
    e = TabletopEnv(SimConfig(image_size=64, cameras=('front', 'wrist')))
    yield e
    e.close()


@pytest.fixture(scope='module')
def blind_env():
    e = TabletopEnv(NO_RENDER)
    yield e
    e.close()


def _random_action(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(-1, 1, 7) * [0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 0.5]
    a[6] += 0.5
    return a


def _rollout(env: TabletopEnv, seed: int, steps: int, instruction: str) -> tuple[list, list]:
    rng = np.random.default_rng(123)
    obs = env.reset(seed=seed, instruction=instruction)
    images, states = [obs.images], [env.state()]
    for _ in range(steps):
        obs, done, _ = env.step(_random_action(rng))
        images.append(obs.images)
        states.append(env.state())
        if done:
            break
    return images, states


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match='image_size'):
        SimConfig(image_size=4)
    with pytest.raises(ValueError, match='cameras'):
        SimConfig(cameras=('front', 'top'))
    with pytest.raises(ValueError, match='control_hz'):
        SimConfig(control_hz=30.0)   # 1 / (30 * 0.002) is not a whole number of substeps
    with pytest.raises(ValueError, match='max_translation'):
        SimConfig(max_translation=0.0)
    assert SimConfig().substeps == 25
    assert ACTION_NAMES == ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')


def test_observation_contract(env):
    obs = env.reset(seed=3, instruction='pick up the red block')
    assert set(obs.images) == {'front', 'wrist'}
    for im in obs.images.values():
        assert im.shape == (64, 64, 3) and im.dtype == np.uint8
        assert im.std() > 5   # a real picture, not a blank buffer
    assert obs.instruction == 'pick up the red block' and obs.step == 0
    obs, done, info = env.step(np.zeros(7))
    assert obs.step == 1 and not done
    assert info['task'] == 'pick_red' and info['success'] is False
    assert env.task.name == 'pick_red' and env.success is False


def test_same_seed_replays_bit_identically(env):
    other = TabletopEnv(env.cfg)
    try:
        im_a, st_a = _rollout(env, 11, 25, 'open the drawer')
        im_b, st_b = _rollout(other, 11, 25, 'open the drawer')
        im_c, st_c = _rollout(env, 11, 25, 'open the drawer')   # same env, after a reset
    finally:
        other.close()
    assert len(im_a) == len(im_b) == len(im_c) == 26
    for a, b, c in zip(im_a, im_b, im_c):
        for cam in a:
            assert np.array_equal(a[cam], b[cam]) and np.array_equal(a[cam], c[cam])
    for a, b, c in zip(st_a, st_b, st_c):
        for k in a:
            assert np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]), k
    # The random actions moved the gripper, so the comparison covered a changing scene.
    assert np.linalg.norm(st_a[-1]['ee_pos'] - st_a[0]['ee_pos']) > 0.02


def test_different_seed_changes_placement(blind_env):
    placements = []
    for seed in range(4):
        blind_env.reset(seed=seed, instruction='pick up the blue block')
        s = blind_env.state()
        placements.append(np.concatenate([s['red_block_pos'], s['blue_block_pos'],
                                          s['handle_pos'], s['ee_pos']]))
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(placements[i] - placements[j]).max() > 0.01


def test_instruction_matching_and_unknown_instruction(blind_env):
    blind_env.reset(seed=0, instruction='  Push the BLUE block\tto the left ')
    assert blind_env.task.name == 'push_blue_left'
    with pytest.raises(ValueError, match='pick up the red block') as err:
        blind_env.reset(seed=0, instruction='make me a coffee')
    assert 'make me a coffee' in str(err.value)
    for t in TASKS:   # every known instruction is listed in the error
        assert t.instruction in str(err.value)


def test_task_from_seed_is_deterministic_and_covers_all_tasks(blind_env):
    names = []
    for seed in range(24):
        blind_env.reset(seed=seed)
        names.append(blind_env.task.name)
        state = blind_env.state()
        blind_env.reset(seed=seed)
        assert blind_env.task.name == names[-1]
        # Naming the same task explicitly gives the same episode.
        blind_env.reset(seed=seed, instruction=blind_env.task.instruction)
        assert np.array_equal(blind_env.state()['qpos'], state['qpos'])
    assert set(names) == {t.name for t in TASKS}


def test_action_clipping_and_episode_end(blind_env):
    blind_env.reset(seed=5, instruction='open the drawer')
    before = blind_env.state()['target_pos']
    blind_env.step(np.array([1.0, -1.0, 0.0, 0.0, 0.0, 5.0, 7.0]))
    s = blind_env.state()
    np.testing.assert_allclose(s['target_pos'] - before, [0.02, -0.02, 0.0], atol=1e-12)
    np.testing.assert_allclose(s['target_euler'], [0.0, 0.0, 0.1], atol=1e-12)
    assert float(s['gripper']) == 1.0
    with pytest.raises(ValueError, match='action'):
        blind_env.step(np.zeros(6))
    with pytest.raises(ValueError, match='action'):
        blind_env.step(np.array([np.nan] * 7))
    done, steps = False, 1
    while not done:
        _, done, info = blind_env.step(np.zeros(7))
        steps += 1
    assert steps == TASKS[3].max_steps and info['timeout'] and not info['success']
    with pytest.raises(RuntimeError, match='reset'):
        blind_env.step(np.zeros(7))


def test_hold_action_keeps_the_gripper_still(blind_env):
    blind_env.reset(seed=2, instruction='pick up the red block')
    start = blind_env.state()['ee_pos']
    for _ in range(20):
        blind_env.step(np.zeros(7))
    assert np.linalg.norm(blind_env.state()['ee_pos'] - start) < 1e-3


@pytest.mark.parametrize('task', [t.name for t in TASKS])
def test_expert_succeeds(blind_env, task):
    for seed in (0, 1, 2):
        result = run_episode(blind_env, seed, task)
        assert result['success'], (task, seed)
        assert result['length'] < blind_env.task.max_steps


def test_target_distance_and_max_progress_follow_the_expert(blind_env):
    from dysl_ros.sim.expert import make_expert
    for instruction in ('pick up the red block', 'open the drawer'):
        blind_env.reset(seed=3, instruction=instruction)
        expert = make_expert(blind_env)
        start = blind_env.target_distance()
        closest = start
        while not blind_env.done:
            blind_env.step(expert.act())
            closest = min(closest, blind_env.target_distance())
        assert start > 0.05 and closest < 0.01, (instruction, start, closest)
        assert blind_env.success and blind_env.max_progress > blind_env.task.threshold


def test_expert_phases_and_instruction_matters(blind_env):
    blind_env.reset(seed=4, instruction='pick up the red block')
    expert = make_expert(blind_env)
    start = blind_env.state()
    phases, done = [], False
    while not done:
        a = expert.act()
        assert a.shape == (7,)
        phases.append(expert.phase)
        _, done, info = blind_env.step(a)
    assert info['success']
    order = list(dict.fromkeys(phases))
    assert order[:4] == ['reach', 'descend', 'grasp', 'lift']
    end = blind_env.state()
    assert end['red_block_pos'][2] > 0.07                       # the red block is up
    assert np.abs(end['blue_block_pos'] - start['blue_block_pos']).max() < 0.005   # blue untouched
    # The same expert object follows the next episode (and its new task).
    blind_env.reset(seed=4, instruction='open the drawer')
    expert.act()
    assert expert.phase == 'reach'


@pytest.mark.parametrize('task', [t.name for t in TASKS])
def test_doing_nothing_or_random_actions_does_not_succeed(blind_env, task):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for policy in ('zero', 'random'):
            blind_env.reset(seed=seed, task=task)
            done = False
            while not done:
                a = np.zeros(7) if policy == 'zero' else _random_action(rng)
                _, done, info = blind_env.step(a)
            assert not info['success'], (task, seed, policy)
            assert blind_env.progress() < blind_env.task.threshold


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('demos')
    summary = generate(out, episodes_per_task=1, seed=0, workers=1, sim_cfg=SimConfig())
    assert summary['complete'] and summary['episodes'] == len(TASKS)
    return out


def test_demo_dataset_is_readable_with_stats(demo_dir):
    index = read_index(demo_dir)
    assert index['action_names'] == list(ACTION_NAMES) and index['cameras'] == ['front', 'wrist']
    episodes = list(iter_episodes(demo_dir))
    assert sorted(e.task for e in episodes) == sorted(t.name for t in TASKS)
    for ep in episodes:
        t = ep.length
        assert ep.success and ep.instruction == next(x.instruction for x in TASKS
                                                     if x.name == ep.task)
        assert ep.actions.shape == (t, 7) and ep.actions.dtype == np.float32
        assert ep.phases.shape == (t,) and ep.phases[0] == 'reach'
        for im in ep.images.values():
            assert im.shape == (t, 64, 64, 3) and im.dtype == np.uint8
    actions = np.concatenate([e.actions for e in episodes]).astype(np.float64)
    stats = load_stats(demo_dir)
    np.testing.assert_allclose(stats['mean'], actions.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats['std'], actions.std(0), atol=1e-6)
    np.testing.assert_allclose(stats['min'], actions.min(0), atol=1e-7)
    np.testing.assert_allclose(stats['max'], actions.max(0), atol=1e-7)
    assert json.loads((demo_dir / 'stats.json').read_text())['count'] == len(actions)


def test_demo_replays_from_its_seed(demo_dir, env):
    ep = next(e for e in iter_episodes(demo_dir) if e.task == 'push_blue_left')
    obs = env.reset(seed=ep.seed, instruction=ep.instruction)
    for t, a in enumerate(ep.actions):
        for cam in ep.images:
            assert np.array_equal(obs.images[cam], ep.images[cam][t]), (cam, t)
        obs, done, info = env.step(a)
    assert done and info['success']


def test_demo_generation_does_not_depend_on_worker_count(demo_dir, tmp_path):
    generate(tmp_path, episodes_per_task=1, seed=0, workers=2, sim_cfg=SimConfig(),
             tasks=('pick_blue', 'open_drawer'))
    for ep in iter_episodes(tmp_path):
        ref = load_episode(demo_dir / os.path.basename(ep.path))
        assert np.array_equal(ep.actions, ref.actions)
        assert all(np.array_equal(ep.images[c], ref.images[c]) for c in ref.images)


def test_bad_episode_files_raise_errors_naming_the_file(demo_dir, tmp_path):
    bad = tmp_path / 'corrupt.npz'
    bad.write_bytes(b'not a zip file at all')
    with pytest.raises(EpisodeFormatError, match='corrupt.npz'):
        load_episode(bad)
    ep = load_episode(demo_dir / read_index(demo_dir)['episodes'][0]['file'])
    partial = tmp_path / 'partial.npz'
    np.savez_compressed(partial, images_front=ep.images['front'], phases=ep.phases)
    with pytest.raises(EpisodeFormatError, match=r'partial\.npz.*actions'):
        load_episode(partial)
    with pytest.raises(FileNotFoundError, match='index.json'):
        list(iter_episodes(tmp_path / 'nowhere'))
    with pytest.raises(FileExistsError, match='overwrite'):
        generate(demo_dir, episodes_per_task=1, workers=1)


def test_close_releases_the_renderer():
    e = TabletopEnv(SimConfig(image_size=32, cameras=('wrist',)))
    e.reset(seed=0)
    e.close()
    e.close()   # idempotent
    assert e._renderer is None


def test_gen_demos_cli(tmp_path, capsys):
    import argparse

    from dysl_ros.sim.demos import add_arguments, run
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / 'cli'
    args = parser.parse_args(['--out', str(out), '--episodes-per-task', '1', '--workers', '1',
                              '--tasks', 'open_drawer', '--image-size', '32'])
    assert run(args) == 0
    (ep,) = list(iter_episodes(out))
    assert ep.task == 'open_drawer' and ep.images['front'].shape[1:] == (32, 32, 3)
    assert run(args) == 2   # refuses to overwrite without --overwrite
    assert 'overwrite' in capsys.readouterr().err
    bad = parser.parse_args(['--out', str(tmp_path / 'x'), '--cameras', 'top'])
    assert run(bad) == 2


def test_failed_expert_episodes_are_counted_and_dropped(tmp_path):
    # A 20-step time limit is too short for the expert: every attempt fails.
    cfg = SimConfig(image_size=16, cameras=('front',), max_steps=20)
    summary = generate(tmp_path, episodes_per_task=1, workers=1, sim_cfg=cfg,
                       tasks=('open_drawer',))
    per = summary['per_task']['open_drawer']
    assert not summary['complete'] and summary['episodes'] == 0
    assert per['failures'] == per['attempts'] == 12 and len(per['failed_seeds']) == 12
    assert read_index(tmp_path)['episodes'] == [] and not list(tmp_path.glob('*.npz'))
    assert not (tmp_path / 'stats.json').exists()
