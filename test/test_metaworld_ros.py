"""Meta-World MT10 on the ROS path: `record --suite metaworld-mt10` into a bag that `replay`
steps through, the sim node with suite metaworld-mt10 over DDS (loopback, the session's own
domain: conftest), and `demo --suite metaworld-mt10` with the suite's controller settings."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, String

from dysl_ros.bags.bagfile import bag_info
from dysl_ros.cli import main
from dysl_ros.export.random_model import build_random_model
from dysl_ros.model import VLAConfig
from dysl_ros.nodes.launcher import LocalLaunch, wait_for
from dysl_ros.nodes.params import defaults
from dysl_ros.nodes.qos import CAMERA_QOS, COMMAND_QOS, INSTRUCTION_QOS, STATUS_QOS
from dysl_ros.nodes.sim_node import PARAMS as SIM_PARAMS
from dysl_ros.nodes.sim_node import SimNode, sim_setup
from dysl_ros.runtime.chunking import ChunkExecutorConfig
from dysl_ros.runtime.messages import time_to_ns
from dysl_ros.sim.expert import run_episode
from dysl_ros.sim.metaworld_suite import ACTION_NAMES, MetaWorldConfig, MetaWorldEnv, make_expert
from dysl_ros.sim.splits import SPLITS
from dysl_ros.sim.suites import get_suite
from test_bags import read_back

pytestmark = pytest.mark.usefixtures('one_torch_thread')

ROOT = Path(__file__).resolve().parents[1]
MT10 = get_suite('metaworld-mt10')
CAMERAS = ('corner', 'gripperPOV')
TOPICS = {'corner': '/corner/image', 'gripperPOV': '/gripperPOV/image'}
TINY = dict(image_size=32, patch_size=8, d_model=32, n_layers=3, n_heads=2, mlp_ratio=2,
            chunk_size=4)
SEED = SPLITS['validation'].start
STEPS = 12
START_NS = 1_700_000_000_000_000_000
DT_NS = 12_500_000  # 80 Hz


@pytest.fixture(scope='module')
def mt10_model(tmp_path_factory):
    cfg = VLAConfig(**TINY, cameras=CAMERAS, action_names=ACTION_NAMES)
    return build_random_model(tmp_path_factory.mktemp('mt10') / 'model', cfg, seed=0)


@pytest.fixture(scope='module')
def tabletop_model(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp('tabletop') / 'model',
                              VLAConfig(**TINY), seed=0)


def cli(*argv):
    return main([str(a) for a in argv])




# ---- the suite's ROS-facing settings ----------------------------------------------------------
def test_suites_carry_their_cameras_rates_limits_and_gripper_convention():
    tabletop, d = get_suite('tabletop').controller_params(), ChunkExecutorConfig()
    assert tabletop == {'joint_names': list(d.joint_names), 'control_rate': d.control_rate,
                        'lower_limits': list(d.lower_limits),
                        'upper_limits': list(d.upper_limits),
                        'absolute_joints': list(d.absolute_joints),
                        'initial_absolute': list(d.initial_absolute)}
    assert MT10.cameras == CAMERAS and MT10.control_hz == 80.0
    assert MT10.controller_params() == {
        'joint_names': ['dx', 'dy', 'dz', 'gripper'], 'control_rate': 80.0,
        'lower_limits': [-1.0] * 4, 'upper_limits': [1.0] * 4,
        'absolute_joints': ['gripper'], 'initial_absolute': [-1.0]}
    np.testing.assert_array_equal(MT10.hold_action(), [0, 0, 0, -1])   # open, before a command
    np.testing.assert_array_equal(MT10.hold_action(np.array([0.5, 0.2, 0.1, 3.0])), [0, 0, 0, 1])
    with pytest.raises(ValueError, match='pick the suite'):
        MT10.check_model(get_suite('tabletop').action_names)


def test_sim_node_parameters_follow_the_suite_or_say_what_does_not_fit():
    values = defaults(SIM_PARAMS)
    assert values['suite'] == 'tabletop' and sim_setup(values)[2] == [
        ('front', 'image'), ('wrist', 'wrist/image')]
    suite, cfg, pairs = sim_setup({**values, 'suite': 'metaworld-mt10'})
    assert suite is MT10 and isinstance(cfg, MetaWorldConfig) and cfg.control_hz == 80.0
    assert pairs == [('corner', 'corner/image'), ('gripperPOV', 'gripperPOV/image')]
    for bad, match in ((dict(control_rate=20.0), r'control_rate=20\.0 .*80 Hz'),
                       (dict(cameras=['front', 'wrist']), r"cameras=\('front', 'wrist'\)"),
                       (dict(max_steps=600), 'max_steps=600'),
                       (dict(image_size=640), 'image_size=640')):
        with pytest.raises(ValueError, match='suite metaworld-mt10: ' + match):
            sim_setup({**values, 'suite': 'metaworld-mt10', **bad})
    with pytest.raises(ValueError, match='one topic per camera'):
        sim_setup({**values, 'suite': 'metaworld-mt10', 'camera_topics': ['image']})


def test_a_sim_node_whose_parameters_do_not_fit_the_suite_exits_with_one_line():
    cmd = [sys.executable, '-m', 'dysl_ros.nodes.sim_node', '--ros-args', '-p',
           'suite:=metaworld-mt10', '-p', 'control_rate:=20.0']
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        'error: suite metaworld-mt10: control_rate=20.0 is invalid: expected 80 Hz, the rate '
        'the metaworld-mt10 suite steps at (or 0 for it)'], result.stderr


# ---- record and replay ------------------------------------------------------------------------
def test_an_expert_mt10_bag_records_the_suites_streams_and_replays_step_locked(
        tmp_path, mt10_model, tabletop_model, capsys):
    bag = tmp_path / 'expert'
    assert cli('record', '--suite', 'metaworld-mt10', '--out', bag, '--tasks', 'drawer_close',
               '--max-steps', STEPS, '--image-size', 32, '--seed', SEED, '--start-ns',
               START_NS, '--quiet') == 0
    info = bag_info(bag)
    assert (info['suite'], info['action_names'], info['control_hz']) == (
        'metaworld-mt10', list(ACTION_NAMES), 80.0)
    assert info['cameras'] == [[c, TOPICS[c]] for c in CAMERAS]
    msgs = read_back(bag)
    assert {t: len(v) for t, (_, v) in msgs.items()} == {
        '/corner/image': STEPS, '/gripperPOV/image': STEPS, '/instruction': 1,
        '/command': STEPS, '/episode_status': STEPS + 1}
    assert msgs['/instruction'][1][0][1].data == 'close the drawer'
    stamps = [time_to_ns(m.header.stamp) for _, m in msgs['/corner/image'][1]]
    assert np.all(np.diff(stamps) == DT_NS)
    # the bag holds what the expert does in the suite's env, action for action, frame for frame
    with MetaWorldEnv(MetaWorldConfig(image_size=32, max_steps=STEPS)) as env:
        ref = run_episode(env, SEED, 'drawer_close', record=True, expert=make_expert)
    commands = np.array([m.data for _, m in msgs['/command'][1]])
    assert commands.shape == (STEPS, 4)
    np.testing.assert_array_equal(commands, ref['actions'].astype(np.float64))
    for camera in CAMERAS:
        frames = msgs[TOPICS[camera]][1]
        assert frames[0][1].header.frame_id == camera
        for k in (0, STEPS - 1):
            rgb = np.frombuffer(frames[k][1].data, np.uint8).reshape(32, 32, 3)
            np.testing.assert_array_equal(rgb, ref['images'][camera][k])
    status = json.loads(msgs['/episode_status'][1][-1][1].data)
    assert status['done'] and status['timeout'] and status['task'] == 'drawer_close'
    # step-locked replay finds the cameras in the bag's record (no --camera needed)
    out = tmp_path / 'report'
    assert cli('replay', bag, '--out', out, '--model', mt10_model, '--reference', 'full',
               '--no-plots', '--quiet') == 0
    s = json.loads((out / 'report.json').read_text())['summary']
    assert s['steps'] == STEPS and s['errors']['full']['compared'] == STEPS
    capsys.readouterr()
    assert cli('replay', bag, '--out', tmp_path / 'refused', '--model', tabletop_model,
               '--quiet') == 2
    assert 'replay it with a model of that suite' in capsys.readouterr().err


def test_a_policy_mt10_bag_replays_its_chunks_exactly(tmp_path, mt10_model, tabletop_model,
                                                       capsys):
    bag, out = tmp_path / 'policy', tmp_path / 'report'
    assert cli('record', '--suite', 'metaworld-mt10', '--source', 'policy', '--model',
               mt10_model, '--out', bag, '--tasks', 'reach', '--max-steps', 8, '--seed', SEED,
               '--start-ns', START_NS, '--quiet') == 0
    msgs = read_back(bag)
    chunks = [m for _, m in msgs['/action_chunk'][1]]
    assert len(chunks) == 8 and list(chunks[0].joint_names) == list(ACTION_NAMES)
    assert [time_to_ns(p.time_from_start) for p in chunks[0].points] == \
        [i * DT_NS for i in range(TINY['chunk_size'])]
    first = np.array(chunks[0].points[0].positions)
    np.testing.assert_array_equal(msgs['/command'][1][0][1].data, np.clip(first, -1, 1))
    assert cli('replay', bag, '--out', out, '--model', mt10_model, '--reference', 'recorded',
               '--no-plots', '--quiet') == 0
    s = json.loads((out / 'report.json').read_text())['summary']
    assert s['errors']['recorded'] == {'compared': 8, 'exact': 8, 'mean_abs': 0.0,
                                       'max_abs': 0.0}
    capsys.readouterr()
    assert cli('record', '--suite', 'metaworld-mt10', '--source', 'policy', '--model',
               tabletop_model, '--out', tmp_path / 'refused', '--max-steps', 2,
               '--quiet') == 2
    assert 'pick the suite the model was trained on' in capsys.readouterr().err


# ---- the sim node -----------------------------------------------------------------------------
class Collector:
    """Stores the messages of one topic."""

    def __init__(self, node, msg_type, topic, qos):
        self.items = []
        node.create_subscription(msg_type, topic, self.items.append, qos)


def _done(status):
    return any(json.loads(m.data)['done'] for m in list(status.items))


def test_sim_node_runs_mt10_with_its_cameras_and_4d_commands():
    import rclpy
    with LocalLaunch() as launch:
        assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
        node = launch.add(lambda **kw: rclpy.create_node('mt10_tester', **kw))
        frames = {c: Collector(node, Image, TOPICS[c][1:], CAMERA_QOS) for c in CAMERAS}
        status = Collector(node, String, 'episode_status', STATUS_QOS)
        sim = launch.add(SimNode, parameter_overrides=[
            Parameter('suite', value='metaworld-mt10'), Parameter('image_size', value=32),
            Parameter('max_steps', value=40)])
        instruction = node.create_publisher(String, 'instruction', INSTRUCTION_QOS)
        commands = node.create_publisher(Float64MultiArray, 'command', COMMAND_QOS)
        launch.start()
        wait_for(lambda: instruction.get_subscription_count() > 0
                 and commands.get_subscription_count() > 0, 10.0, 'the sim node')
        # an episode nobody commands: every step holds (gripper at the suite's -1, open)
        instruction.publish(String(data='reach the red goal'))
        wait_for(lambda: _done(status), 30.0, 'the held episode to end')
        last = json.loads(status.items[-1].data)
        assert (last['task'], last['step'], last['holds']) == ('reach', 40, 40)
        for c in CAMERAS:
            im = frames[c].items[-1]
            assert (im.width, im.height, im.encoding, im.header.frame_id) == (32, 32, 'rgb8', c)
        assert frames['corner'].items[-1].header.stamp in [
            m.header.stamp for m in frames['gripperPOV'].items]
        held = sim._env_thread.submit(sim.env.state).result()['tcp_pos']
        # the next one (the hand starts where it was), commanded in MT10's layout: dx = +1
        # moves the hand 1 cm a step in x; a tabletop (7-D) command is ignored, the step holds
        status.items.clear()
        instruction.publish(String(data='reach the red goal'))
        commands.publish(Float64MultiArray(data=[0.0] * 7))
        while not _done(status):
            commands.publish(Float64MultiArray(data=[1.0, 0.0, 0.0, -1.0]))
            time.sleep(0.005)
        last = json.loads(status.items[-1].data)
        assert last['seed'] == 1 and last['step'] == 40 and last['holds'] < 20
        moved = sim._env_thread.submit(sim.env.state).result()['tcp_pos'] - held
        assert moved[0] > 0.05 and abs(moved[1]) < 0.02, moved


# ---- the demo ---------------------------------------------------------------------------------
def test_demo_runs_mt10_with_the_suites_controller_and_refuses_a_tabletop_model(
        tmp_path, mt10_model, tabletop_model, capsys):
    out = tmp_path / 'demo.json'
    assert cli('demo', '--suite', 'metaworld-mt10', '--model', mt10_model, '--tasks',
               'reach', '--episodes', 1, '--max-steps', 80, '--json', out) == 0
    assert 'suite metaworld-mt10' in capsys.readouterr().out
    (row,) = json.loads(out.read_text())['rows']
    # (a random model may end an episode early by chance: drawer_close once did in 76 steps)
    assert row['task'] == 'reach' and row['steps'] <= 80 and row['chunks'] >= 1, row
    assert row['steps'] == 80 or row['success'], row
    # the controller took the chunks (MT10's joint names): the sim stepped on its commands
    assert 'joint_names' not in row['dropped_by_reason'] and row['holds'] < row['steps'], row
    assert cli('demo', '--suite', 'metaworld-mt10', '--model', tabletop_model) == 2
    err = capsys.readouterr().err
    assert 'pick the suite the model was trained on' in err and len(err.splitlines()) == 1

