"""The Meta-World MT10 suite on real MuJoCo and metaworld: env, experts, variation splits,
gen-demos and the closed-loop bench with --suite metaworld-mt10."""
import json

import numpy as np
import pytest

from dysl_ros.cli import main
from dysl_ros.datasets import iter_episodes, load_stats, read_index
from dysl_ros.export.random_model import build_random_model
from dysl_ros.model import VLAConfig
from dysl_ros.model.io import load_vla
from dysl_ros.paths import default_model_dir
from dysl_ros.sim.demos import episode_seed
from dysl_ros.runtime.loading import model_interface
from dysl_ros.runtime.methods import make_policy
from dysl_ros.sim.expert import run_episode
from dysl_ros.sim.metaworld_suite import (
    ACTION_NAMES, TASKS, MetaWorldConfig, MetaWorldEnv, make_expert)
from dysl_ros.sim.recovery import run_recovery_episode
from dysl_ros.sim.splits import SPLITS
from dysl_ros.sim.suites import SUITES, get_suite

MT10 = ('reach', 'push', 'pick_place', 'door_open', 'drawer_open', 'drawer_close',
        'button_press_topdown', 'peg_insert_side', 'window_open', 'window_close')
VALIDATION = SPLITS['validation'].start
TINY = VLAConfig(image_size=32, patch_size=8, d_model=32, n_layers=3, n_heads=2, mlp_ratio=2,
                 chunk_size=8, cameras=('corner', 'gripperPOV'), action_names=ACTION_NAMES)


@pytest.fixture(scope='module')
def blind_env():
    """No cameras: expert and variation checks run at physics speed."""
    with MetaWorldEnv(MetaWorldConfig(cameras=())) as env:
        yield env


def test_the_registry_holds_both_suites_with_their_own_tasks_and_actions():
    mt10 = get_suite('metaworld-mt10')
    assert mt10.task_names == list(MT10) and mt10.action_names == ACTION_NAMES
    assert len({t.instruction for t in TASKS}) == 10
    assert all(len(t.instruction.split()) <= VLAConfig().max_instruction_tokens for t in TASKS)
    assert get_suite('tabletop').action_names == VLAConfig().action_names
    assert all(len(s.tasks) <= 10 for s in SUITES.values())  # gen-demos' episode_seed
    # each suite ships a model that acts in its actions and sees its cameras
    assert get_suite('tabletop').default_model == default_model_dir()
    assert mt10.default_model == default_model_dir().parent / 'metaworld'
    for suite in SUITES.values():
        actions, cameras = model_interface(suite.default_model)
        suite.check_model(actions, str(suite.default_model))
        assert cameras == suite.cameras
    with pytest.raises(ValueError, match='metaworld-mt10'):
        get_suite('mt50')


def test_env_renders_two_cameras_at_the_requested_size_and_replays_exactly():
    cfg = MetaWorldConfig(image_size=48, cameras=('corner', 'gripperPOV'))
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 4))
    runs = []
    with MetaWorldEnv(cfg) as env:
        for task in ('drawer_close', 'reach', 'drawer_close'):   # another task in between
            obs = env.reset(seed=VALIDATION, task=task)
            frames = [obs.images]
            for a in actions:
                obs, done, info = env.step(a)
                frames.append(obs.images)
            assert not done and info['task'] == task and env.step_count == 5
            assert obs.instruction == env.task.instruction and env.max_steps == 500
            runs.append(frames)
        with pytest.raises(ValueError, match='4 finite values'):
            env.step(np.zeros(7))
        obs = env.reset(seed=VALIDATION, instruction='Open the  DRAWER')
        assert env.task.name == 'drawer_open'
    for im in runs[0][-1].values():
        assert im.shape == (48, 48, 3) and im.dtype == np.uint8 and im.std() > 10
    assert not np.array_equal(runs[0][0]['corner'], runs[0][-1]['corner'])  # the arm moved
    for a, b in zip(runs[0], runs[2]):
        assert all(np.array_equal(a[c], b[c]) for c in cfg.cameras)


def test_the_goal_an_instruction_names_is_drawn_big_enough_to_see_and_changes_no_physics():
    actions = np.random.default_rng(1).uniform(-1, 1, (20, 4))
    runs = {}
    for radius in (0.01, 0.05):
        with MetaWorldEnv(MetaWorldConfig(cameras=('corner',), goal_marker_radius=radius)) as env:
            for task in ('push', 'drawer_close'):
                frames = [env.reset(seed=VALIDATION, task=task).images['corner']]
                for a in actions:
                    frames.append(env.step(a)[0].images['corner'])
                runs[radius, task] = frames, env.state()['qpos']
    changed = (runs[0.05, 'push'][0][0] != runs[0.01, 'push'][0][0]).any(-1)
    assert changed.sum() >= 8   # the green sphere: 3-4 px across in a 64 px corner image
    assert np.array_equal(runs[0.05, 'push'][1], runs[0.01, 'push'][1])   # same motion
    for a, b in zip(runs[0.05, 'drawer_close'][0], runs[0.01, 'drawer_close'][0]):
        assert np.array_equal(a, b)   # a task that names no goal is drawn as Meta-World draws it
    with pytest.raises(ValueError, match='goal_marker_radius'):
        MetaWorldConfig(goal_marker_radius=0.0)


@pytest.mark.parametrize('task', ['reach', 'drawer_close'])
def test_scripted_expert_succeeds_on_a_validation_variation(blind_env, task):
    result = run_episode(blind_env, VALIDATION, task, expert=make_expert)
    assert result['success'] and result['length'] < blind_env.max_steps
    assert blind_env.done and blind_env.success
    assert blind_env.target_distance() < 0.1


def test_variation_splits_are_disjoint_and_deterministic(blind_env):
    seeds = {'demos': [episode_seed(0, 2, k) for k in range(3)] + [episode_seed(999, 2, 9)],
             'validation': list(SPLITS['validation'][:4]),
             'test': list(SPLITS['test'][:4])}
    all_seeds = sum(seeds.values(), [])
    assert len(set(all_seeds)) == len(all_seeds) and max(seeds['demos']) < VALIDATION

    def variation(seed):   # pick_place: puck and goal positions
        blind_env.reset(seed=seed, task='pick_place')
        s = blind_env.state()
        return np.r_[s['object_pos'], s['goal_pos']]

    drawn = [variation(s) for s in all_seeds]
    assert len({v.tobytes() for v in drawn}) == len(drawn)
    assert all(np.array_equal(variation(s), v) for s, v in zip(all_seeds, drawn))


def test_gen_demos_writes_a_metaworld_folder_that_datasets_loads(tmp_path, capsys):
    out = tmp_path / 'mt10'
    code = main(['gen-demos', '--suite', 'metaworld-mt10', '--out', str(out),
                 '--episodes-per-task', '1', '--tasks', 'drawer_close', '--workers', '1',
                 '--image-size', '32'])
    assert code == 0 and 'metaworld-mt10, demos split' in capsys.readouterr().out
    index = read_index(out)
    assert (index['suite'], index['split'], index['action_names']) == (
        'metaworld-mt10', 'demos', list(ACTION_NAMES))
    assert index['cameras'] == ['corner', 'gripperPOV'] and index['control_hz'] == 80.0
    (ep,) = list(iter_episodes(out))
    assert ep.task == 'drawer_close' and ep.success and ep.seed == episode_seed(0, 5, 0)
    assert ep.actions.shape == (ep.length, 4) and np.abs(ep.actions).max() <= 1.0
    assert {c: im.shape for c, im in ep.images.items()} == {
        c: (ep.length, 32, 32, 3) for c in ('corner', 'gripperPOV')}
    assert load_stats(out)['mean'].shape == (4,)
    assert main(['gen-demos', '--suite', 'metaworld-mt10', '--out', str(tmp_path / 'x'),
                 '--tasks', 'pick_red']) == 2   # a tabletop task name
    # train-bc builds the model for the demos' actions and cameras
    assert main(['train-bc', '--demos', str(out), '--out', str(tmp_path / 'bc'), '--steps', '2',
                 '--batch-size', '4', '--d-model', '32', '--n-layers', '2', '--n-heads', '2',
                 '--quiet']) == 0
    cfg = load_vla(tmp_path / 'bc').cfg
    assert cfg.action_names == ACTION_NAMES and cfg.cameras == ('corner', 'gripperPOV')


def test_closed_loop_bench_runs_the_suite_and_refuses_a_model_of_another(tmp_path, capsys):
    model = build_random_model(tmp_path / 'model', TINY)
    out = tmp_path / 'bench.json'
    assert main(['bench', 'closed-loop', '--suite', 'metaworld-mt10', '--model', str(model),
                 '--methods', 'full', '--episodes', '1', '--tasks', 'drawer_close',
                 '--workers', '1', '--open-loop-steps', '8', '--json', str(out)]) == 0
    assert 'metaworld-mt10, on the validation split' in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result['protocol']['suite'] == 'metaworld-mt10'
    (episode,) = result['episodes']
    assert episode['task'] == 'drawer_close' and episode['seed'] == VALIDATION
    assert len(episode['layers_run']) == -(-episode['steps'] // 8)
    with pytest.raises(SystemExit, match='pick the suite'):
        main(['bench', 'closed-loop', '--model', str(model), '--episodes', '1'])


def test_the_bench_runs_the_shipped_mt10_model_when_none_is_given(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(['bench', 'closed-loop', '--suite', 'metaworld-mt10', '--methods', 'full',
                 'dysl', '--episodes', '1', '--tasks', 'drawer_close', '--workers', '1',
                 '--open-loop-steps', '8', '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['config']['model'] == str(get_suite('metaworld-mt10').default_model)
    assert [e['success'] for e in result['episodes']] == [True, True]   # it learnt the task


def test_recovery_demos_on_mt10_record_the_experts_part_and_replay(tmp_path, capsys):
    model = build_random_model(tmp_path / 'model', TINY)
    out = tmp_path / 'recovery'
    assert main(['gen-demos', '--suite', 'metaworld-mt10', '--out', str(out), '--recover-from',
                 str(model), '--episodes-per-task', '1', '--tasks', 'drawer_close',
                 '--workers', '1', '--image-size', '32', '--open-loop-steps', '8']) == 0
    assert read_index(out)['recover_from'] == str(model)
    (ep,) = list(iter_episodes(out))
    with MetaWorldEnv(MetaWorldConfig(image_size=32)) as env:
        again = run_recovery_episode(env, make_policy('full', model), ep.seed, ep.task, 8,
                                     make_expert)
    k = again['takeover_step']   # an untrained model never comes near: the first half
    assert 0 <= k < 250 and ep.success and ep.length + k <= 500
    assert np.array_equal(again['actions'], ep.actions)
    assert all(np.array_equal(again['images'][c], ep.images[c]) for c in ep.images)
    # a tabletop model cannot drive MT10 episodes: refused before anything runs
    tabletop = build_random_model(tmp_path / 'tabletop', VLAConfig(
        image_size=32, patch_size=8, d_model=32, n_layers=3, n_heads=2, mlp_ratio=2))
    capsys.readouterr()
    assert main(['gen-demos', '--suite', 'metaworld-mt10', '--out', str(tmp_path / 'x'),
                 '--recover-from', str(tabletop), '--episodes-per-task', '1']) == 2
    assert 'pick the suite the model was trained on' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()
