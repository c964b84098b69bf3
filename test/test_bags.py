"""rosbag2 record / replay / bag2demos with real rosbags files, real MuJoCo, a tiny saved model
and, for live replay, a real policy node over rclpy on loopback (domain from conftest.py)."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from rosbags.rosbag2 import Reader

from dysl_ros.bags import convert, record
from dysl_ros.bags.bagfile import BagError
from dysl_ros.bags.episodes import load_bag
from dysl_ros.runtime.loading import PolicyOptions, open_policy
from dysl_ros.bags.record import RecordConfig, default_topics
from dysl_ros.bags.replay import ReplayConfig, replay_step_locked
from dysl_ros.bags.topics import TopicMap, deserialize
from dysl_ros.runtime.messages import time_to_ns
from dysl_ros.cli import main
from dysl_ros.datasets import FORMAT, iter_episodes, load_stats, read_index
from dysl_ros.export.random_model import build_random_model
from dysl_ros.model import VLAConfig
from dysl_ros.model.io import load_dysl, load_vla, save_dysl, save_vla
from dysl_ros.nodes.bag_player import LiveConfig, replay_live
from dysl_ros.sim import SimConfig, TabletopEnv
from dysl_ros.sim.expert import run_episode

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TINY = VLAConfig(image_size=32, patch_size=8, d_model=32, n_layers=5, n_heads=2, mlp_ratio=2,
                 chunk_size=4)
STEPS, EPISODES, HZ = 12, 2, 20.0
START_NS = 1_700_000_000_000_000_000
# Full-depth reference: the tiny model's dynamic layers have their residual branches scaled
# by 0.05, so a chunk predicted with skipping stays within this of the full-depth chunk
# (mean and max |error| in action units; measured max about 0.009).
FULL_DEPTH_TOL = 0.02
ACTION_NAMES = ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper']


def cli(command, argv):
    """Run `python -m dysl_ros <command> argv` in this process; its exit status."""
    return main([command] + [str(a) for a in argv])


def tiny_model(directory, export=False, **guidance):
    """The tiny random model with weak dynamic layers and controllers that always want to
    skip (so the guidance alone decides), guidance settings overridden; export=True adds
    its ONNX export in directory/onnx."""
    build_random_model(directory, TINY, seed=0)
    vla = load_vla(directory)
    dysl, stored = load_dysl(directory, vla)
    with torch.no_grad():
        for j in dysl.layout.dynamic:
            for lin in (vla.blocks[j].attn.proj, vla.blocks[j].mlp.proj):
                lin.weight.mul_(0.05)
                lin.bias.mul_(0.05)
        for c in dysl.controllers.values():
            c.out.bias.fill_(2.0)
    save_vla(vla, directory)
    save_dysl(dysl, directory, {**stored, **guidance})
    if export:
        from dysl_ros.export.onnx_export import export_model
        export_model(vla, dysl, directory / 'onnx', {**stored, **guidance}, check=False,
                     progress=False)
    return directory


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp('tiny') / 'model')


@pytest.fixture(scope='module')
def policy_bag(tmp_path_factory, model):
    """Two 12-step policy episodes, MCAP, recorded through the CLI."""
    bag = tmp_path_factory.mktemp('bags') / 'policy'
    assert cli('record', ['--out', bag, '--source', 'policy', '--model', model, '--tasks',
                        'pick_red', 'open_drawer', '--max-steps', STEPS, '--seed', 3,
                        '--start-ns', START_NS, '--quiet']) == 0
    return bag


@pytest.fixture(scope='module')
def expert_bag(tmp_path_factory):
    """Two 30-step expert episodes, sqlite3."""
    bag = tmp_path_factory.mktemp('bags') / 'expert'
    cfg = RecordConfig(source='expert', tasks=('pick_red',), episodes=2, seed=5,
                       start_ns=START_NS)
    topics = TopicMap()
    with TabletopEnv(SimConfig(image_size=32, cameras=topics.camera_names,
                               max_steps=30)) as env:
        summary = record.record(bag, cfg, topics, env, storage='sqlite3', progress=False)
    assert summary['steps'] == 60 and summary['chunks'] == 0
    return bag


def read_back(bag):
    """topic -> (type, [(log_ns, message)]) through rosbags directly."""
    out = {}
    with Reader(bag) as reader:
        for conn, log_ns, raw in reader.messages():
            entry = out.setdefault(conn.topic, (conn.msgtype, []))
            entry[1].append((log_ns, deserialize(raw, conn.msgtype)))
    return out


# ---- record -------------------------------------------------------------------------------------
def test_recorded_policy_bag_has_the_ros_types_and_counts(policy_bag):
    meta = yaml.safe_load((policy_bag / 'metadata.yaml').read_text())
    meta = meta['rosbag2_bagfile_information']
    assert meta['version'] == 8 and meta['storage_identifier'] == 'mcap'
    qos = {t['topic_metadata']['name']: yaml.safe_load(t['topic_metadata']
                                                        ['offered_qos_profiles'])
           for t in meta['topics_with_message_count']}
    # reliable (1): `ros2 bag play` then matches the policy node's reliable camera subscription
    assert qos['/image'][0]['reliability'] == 1 and qos['/action_chunk'][0]['reliability'] == 1
    msgs = read_back(policy_bag)
    types = {t: m for t, (m, _) in msgs.items()}
    assert types == {'/image': 'sensor_msgs/msg/Image', '/wrist/image': 'sensor_msgs/msg/Image',
                     '/instruction': 'std_msgs/msg/String',
                     '/action_chunk': 'trajectory_msgs/msg/JointTrajectory',
                     '/command': 'std_msgs/msg/Float64MultiArray',
                     '/episode_status': 'std_msgs/msg/String',
                     '/policy_node/step_stats': 'std_msgs/msg/String'}
    n = STEPS * EPISODES
    counts = {t: len(v) for t, (_, v) in msgs.items()}
    assert counts == {'/image': n, '/wrist/image': n, '/instruction': EPISODES,
                      '/action_chunk': n, '/command': n, '/episode_status': n + EPISODES,
                      '/policy_node/step_stats': n}
    assert [m.data for _, m in msgs['/instruction'][1]] == ['pick up the red block',
                                                            'open the drawer']
    image_stamps = [time_to_ns(m.header.stamp) for _, m in msgs['/image'][1]]
    assert image_stamps[0] == START_NS + 100_000_000
    assert np.all(np.diff(image_stamps[:STEPS]) == 50_000_000)
    img = msgs['/image'][1][0][1]
    assert (img.encoding, img.height, img.width, img.step) == ('rgb8', 32, 32, 96)
    for (log_ns, chunk), stamp in zip(msgs['/action_chunk'][1], image_stamps):
        assert time_to_ns(chunk.header.stamp) == stamp and log_ns > stamp
        assert list(chunk.joint_names) == ACTION_NAMES and len(chunk.points) == TINY.chunk_size
        assert [time_to_ns(p.time_from_start) for p in chunk.points] == \
            [i * 50_000_000 for i in range(TINY.chunk_size)]
    stats = [json.loads(m.data) for _, m in msgs['/policy_node/step_stats'][1]]
    assert [s['stamp_ns'] for s in stats] == image_stamps
    assert all(s['layers_total'] == TINY.n_layers and 'guidance' in s for s in stats)
    # the command applied is the chunk's first action, clipped as the controller clips
    first = np.array(msgs['/action_chunk'][1][0][1].points[0].positions)
    lower = np.array([-0.02] * 3 + [-0.1] * 3 + [0.0])
    upper = np.array([0.02] * 3 + [0.1] * 3 + [1.0])
    assert np.array_equal(msgs['/command'][1][0][1].data, np.clip(first, lower, upper))
    status = [json.loads(m.data) for _, m in msgs['/episode_status'][1]]
    assert status[STEPS]['done'] and status[STEPS]['task'] == 'pick_red'
    assert status[0]['phase'] == 'reach'


def test_expert_bag_converts_to_the_expert_demonstration(expert_bag, tmp_path):
    msgs = read_back(expert_bag)
    assert (expert_bag / 'expert.db3').is_file()
    assert '/action_chunk' not in msgs and len(msgs['/command'][1]) == 60
    out = tmp_path / 'demos'
    assert cli('bag2demos', [expert_bag, '--out', out, '--keep-failed', '--quiet']) == 0
    index = json.loads((out / 'index.json').read_text())
    assert index['format'] == FORMAT and index['cameras'] == ['front', 'wrist']
    assert index['image_size'] == 32 and index['control_hz'] == pytest.approx(HZ)
    episodes = list(iter_episodes(out))
    assert [e.seed for e in episodes] == [5, 6] and load_stats(out)['mean'].shape == (7,)
    with TabletopEnv(SimConfig(image_size=32, max_steps=30)) as env:
        ref = run_episode(env, 5, 'pick_red', record=True)
    ep = episodes[0]
    assert ep.length == ref['length'] == 30 and ep.instruction == ref['instruction']
    np.testing.assert_array_equal(ep.actions, ref['actions'])
    for camera in ('front', 'wrist'):
        np.testing.assert_array_equal(ep.images[camera], ref['images'][camera])
    assert list(ep.phases) == list(ref['phases'])
    # without --keep-failed the time-limited (unsuccessful) episodes are dropped
    with pytest.raises(ValueError, match='no episode with commands'):
        convert.bags_to_demos([expert_bag], tmp_path / 'none', progress=False)


# ---- step-locked replay -------------------------------------------------------------------------
def test_step_locked_replay_reproduces_the_recorded_chunks(policy_bag, model, tmp_path):
    out = tmp_path / 'report'
    assert cli('replay', [policy_bag, '--out', out, '--model', model, '--reference', 'recorded',
                        'full', '--quiet']) == 0
    report = json.loads((out / 'report.json').read_text())
    s = report['summary']
    assert s['steps'] == STEPS * EPISODES and s['episodes'] == EPISODES
    assert s['errors']['recorded'] == {'compared': 24, 'exact': 24, 'mean_abs': 0.0,
                                       'max_abs': 0.0}
    assert s['skips_match'] == {'compared': 24, 'matched': 24}
    assert s['guidance_match'] == {'compared': 24, 'matched': 24}
    skipped = 0
    for e in report['episodes']:
        for step in e['steps']:
            full = step['errors']['full']
            if step['verified'] or all(j is None for j in step['skipped_at']):
                assert full['exact']
            else:
                skipped += 1
                assert 0 < full['mean_abs'] <= full['max_abs'] <= FULL_DEPTH_TOL
    assert skipped > 0  # the comparison measured skipping, not only full-depth steps
    assert report['episodes'][0]['instruction'] == 'pick up the red block'
    assert report['episodes'][0]['steps'][0]['phase'] == 'reach'
    for name in ('episode_000.png', 'episode_001.png', 'action_error.png', 'latency.png'):
        assert (out / name).read_bytes()[:4] == b'\x89PNG'
    arrays = np.load(out / 'chunks.npz')
    assert arrays['chunks'].shape == (24, TINY.chunk_size, 7)
    np.testing.assert_array_equal(arrays['chunks'], arrays['reference_recorded'])


def test_a_bag_recorded_with_several_actions_per_chunk_replays_its_guidance(tmp_path):
    """`record --execute 2` puts two actions of each chunk into the continuity history, and
    the replay reads that from the bag, so its ring buffer and skips are the recorded ones."""
    tight = tiny_model(tmp_path / 'tight', tau=0.015)
    bag, out = tmp_path / 'bag', tmp_path / 'report'
    assert cli('record', ['--out', bag, '--source', 'policy', '--model', tight, '--tasks',
                        'pick_red', '--max-steps', 12, '--seed', 3, '--execute', 2,
                        '--start-ns', START_NS, '--quiet']) == 0
    stats = [json.loads(m.data) for _, m in read_back(bag)['/policy_node/step_stats'][1]]
    assert len(stats) == 6
    assert [len(s['guidance']['buffer']) for s in stats[:3]] == [0, 2, 4]
    assert cli('replay', [bag, '--out', out, '--model', tight, '--reference', 'recorded',
                        '--no-plots', '--quiet']) == 0
    s = json.loads((out / 'report.json').read_text())['summary']
    assert s['guidance_match'] == {'compared': 6, 'matched': 6}
    assert s['skips_match'] == {'compared': 6, 'matched': 6}
    with TabletopEnv(SimConfig(image_size=32, max_steps=4)) as env, \
            pytest.raises(ValueError, match='execute=2 run'):
        record.record(tmp_path / 'refused', RecordConfig(source='policy', execute=2),
                      default_topics(('front', 'wrist')), env, open_policy(tight),
                      progress=False)


def test_restored_guidance_reproduces_skips_of_a_cut_bag(tmp_path):
    """A bag whose first chunk's frames are gone: the replay's history differs from the
    recording's until the recorded ring buffer and allow points are restored before each
    step."""
    tight = tiny_model(tmp_path / 'tight', tau=0.005)  # the allow points move in episode 1
    four = PolicyOptions(guidance={'executed_actions': 4})  # as recorded: 4 actions a chunk
    policy = open_policy(tight, options=four)
    topics = default_topics(policy.spec.cameras)
    with TabletopEnv(SimConfig(image_size=32, cameras=topics.camera_names,
                               max_steps=32)) as env:
        record.record(tmp_path / 'bag', RecordConfig(source='policy', tasks=('pick_red',),
                                                     seed=3, execute=4, start_ns=START_NS),
                      topics, env, policy, progress=False)
    data = load_bag(tmp_path / 'bag', topics)
    data.episodes[0].observations = data.episodes[0].observations[4:]
    plain, _ = replay_step_locked(data, open_policy(tight, options=four), progress=False)
    first = plain[0]['steps'][0]
    assert first['guidance_match'] is False and first['skips_match'] is False
    restored, _ = replay_step_locked(data, open_policy(tight, options=four),
                                     ReplayConfig(restore_guidance=True), progress=False)
    steps = restored[0]['steps']
    assert len(steps) == 7
    assert all(s['guidance_match'] and s['skips_match'] and s['errors']['recorded']['exact']
               for s in steps)


# ---- live replay --------------------------------------------------------------------------------
def test_live_replay_through_a_policy_node_gives_one_chunk_per_inference(policy_bag, model,
                                                                          tmp_path):
    data = load_bag(policy_bag)
    episodes, arrays, meta = replay_live(data, tmp_path, LiveConfig(rate=2.0, timeout=30.0),
                                         model=model, progress=False)
    msgs = read_back(tmp_path / 'live_bag')
    chunks, stats = msgs['/action_chunk'][1], msgs['/policy_node/step_stats'][1]
    assert 1 <= len(chunks) == len(stats) == meta['chunks_received'] <= STEPS * EPISODES
    frame_stamps = {time_to_ns(m.header.stamp) for _, m in msgs['/image'][1]}
    assert len(frame_stamps) == STEPS * EPISODES == meta['frames_published'] // 2
    chunk_stamps = [time_to_ns(m.header.stamp) for _, m in chunks]
    assert set(chunk_stamps) <= frame_stamps  # original stamps through DDS and back
    assert chunk_stamps == [json.loads(m.data)['stamp_ns'] for _, m in stats]
    assert sum(len(e['steps']) for e in episodes) == len(chunks)
    # the live bag replays step-locked to exactly the node's chunks
    live = load_bag(tmp_path / 'live_bag')
    again, _ = replay_step_locked(live, open_policy(model), progress=False)
    assert all(s['errors']['recorded']['exact'] for e in again for s in e['steps'])
    assert sum(len(e['steps']) for e in again) == len(chunks)
    if len(chunks) == STEPS * EPISODES:  # the node inferred on every frame: as recorded
        assert all(s['errors']['recorded']['exact'] for e in episodes for s in e['steps'])


def test_live_replay_into_an_already_running_node(policy_bag, model, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from dysl_ros.nodes.launcher import LocalLaunch
    from dysl_ros.nodes.policy_node import PolicyNode
    params = {'model_path': str(model), 'warmup_steps': 1, 'use_sim_time': True}
    with LocalLaunch() as launch:  # the robot's node, in a context of its own
        node = launch.add(PolicyNode, parameter_overrides=[Parameter(k, value=v)
                                                           for k, v in params.items()])
        launch.start()
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        episodes, _, meta = replay_live(load_bag(policy_bag), tmp_path,
                                        LiveConfig(launch=False, rate=2.0, timeout=30.0),
                                        progress=False)
    assert meta['node'] == 'external /policy_node'
    assert 1 <= meta['chunks_received'] == meta['step_stats_received'] <= STEPS * EPISODES
    steps = [s for e in episodes for s in e['steps']]
    assert len(steps) == meta['chunks_received']
    assert all(s['layers_total'] == TINY.n_layers and s['latency_ms']['total'] > 0
               for s in steps)


# ---- other robots' bags -------------------------------------------------------------------------
def test_a_robot_bag_with_other_topics_and_encodings_converts(tmp_path, capsys):
    """bgr8 and PNG-compressed cameras, a 60 Hz command stream and no episode status."""
    import cv2

    from dysl_ros.bags.bagfile import BagWriter
    from dysl_ros.bags.topics import command_msg, header, string_msg, typestore
    types = typestore().types
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 2, 24, 24, 3), np.uint8)  # (T, camera, H, W, 3)
    commands = rng.normal(size=(10, 7))
    bag = tmp_path / 'robot'
    with BagWriter(bag, 'mcap') as w:
        w.write('/task', 'std_msgs/msg/String', START_NS, string_msg('stack the cups'))
        for t in range(5):
            ns = START_NS + (t + 1) * 33_000_000
            front, wrist = frames[t]
            w.write('/cam/wrist/image/compressed', 'sensor_msgs/msg/CompressedImage', ns,
                    types['sensor_msgs/msg/CompressedImage'](
                        header=header(ns), format='png',
                        data=cv2.imencode('.png', wrist[..., ::-1])[1].reshape(-1)))
            w.write('/cam/front/image_raw', 'sensor_msgs/msg/Image', ns,
                    types['sensor_msgs/msg/Image'](
                        header=header(ns), height=24, width=24, encoding='bgr8',
                        is_bigendian=0, step=72, data=front[..., ::-1].reshape(-1).copy()))
            if t < 4:  # the last frame gets no command: dropped
                for k in range(2):
                    w.write('/arm/cmd', 'std_msgs/msg/Float64MultiArray',
                            ns + (k + 1) * 16_000_000, command_msg(commands[2 * t + k]))
    args = [bag, '--out', tmp_path / 'demos', '--camera', 'front=/cam/front/image_raw',
            '--camera', 'wrist=/cam/wrist/image/compressed', '--instruction-topic', '/task',
            '--command-topic', '/arm/cmd', '--quiet']
    assert cli('bag2demos', args[:-3] + ['--quiet']) == 2  # the default command topic is absent
    assert 'topic /command (command) is not in the bag' in capsys.readouterr().err
    assert cli('bag2demos', args) == 0
    (ep,) = list(iter_episodes(tmp_path / 'demos'))
    assert ep.instruction == 'stack the cups' and ep.task == 'stack_the_cups'
    assert ep.length == 4 and list(ep.phases) == ['unknown'] * 4
    np.testing.assert_array_equal(ep.actions, commands[0::2][:4].astype(np.float32))
    np.testing.assert_array_equal(ep.images['front'], frames[:4, 0])
    np.testing.assert_array_equal(ep.images['wrist'], frames[:4, 1])


def test_a_chunk_logged_after_the_next_instruction_stays_with_its_image(tmp_path):
    """Live inference can publish the chunk of an episode's last frame after the next
    instruction: it belongs to the episode of the image it was computed from."""
    from dysl_ros.bags.bagfile import BagWriter
    from dysl_ros.bags.topics import MSG_CHUNK, MSG_IMAGE, chunk_msg, image_msg, string_msg
    t = TopicMap()
    rgb = np.zeros((8, 8, 3), np.uint8)
    stamps = [START_NS + 10, START_NS + 20]
    with BagWriter(tmp_path / 'late', 'mcap') as w:
        w.write(t.instruction, 'std_msgs/msg/String', START_NS, string_msg('pick'))
        for stamp in stamps:
            for _, topic in t.cameras:
                w.write(topic, MSG_IMAGE, stamp, image_msg(rgb, stamp))
        w.write(t.instruction, 'std_msgs/msg/String', START_NS + 30, string_msg('push'))
        for k, stamp in enumerate(stamps):  # both logged after 'push'
            w.write(t.chunk, MSG_CHUNK, START_NS + 40 + k,
                    chunk_msg(np.full((2, 7), k, np.float32), ['a'] * 7, stamp, 0.05))
    first, second = load_bag(tmp_path / 'late').episodes
    assert sorted(first.chunks) == stamps and not second.chunks
    assert [o.stamp_ns for o in first.observations] == stamps


# ---- errors -------------------------------------------------------------------------------------
def test_missing_topic_wrong_type_and_corrupt_bags_give_clear_errors(expert_bag, policy_bag,
                                                                      tmp_path):
    with pytest.raises(BagError, match=r'topic /robot/camera \(camera .front.\) is not in'):
        load_bag(expert_bag, TopicMap(cameras=(('front', '/robot/camera'),)))
    with pytest.raises(BagError, match=r'/action_chunk \(chunk\) is not in the bag'):
        load_bag(expert_bag, need=('cameras', 'instruction', 'chunk'))
    with pytest.raises(BagError, match='/image .* has message type sensor_msgs/msg/Image, '
                                       'expected std_msgs/msg/String'):
        load_bag(expert_bag, TopicMap(cameras=(('front', '/wrist/image'),),
                                      instruction='/image'))
    with pytest.raises(BagError, match='no chunks on /action_chunk'):
        replay_step_locked(load_bag(expert_bag), None, ReplayConfig(references=('recorded',)))
    for bag, name in ((policy_bag, 'policy.mcap'), (expert_bag, 'expert.db3')):
        cut = tmp_path / bag.name
        shutil.copytree(bag, cut)
        data = (cut / name).read_bytes()
        (cut / name).write_bytes(data[:len(data) // 2])
        with pytest.raises(BagError, match=str(cut)):
            load_bag(cut)
    with pytest.raises(BagError, match='no such bag'):
        load_bag(tmp_path / 'nothing')


# ---- bag2demos of another suite -----------------------------------------------------------------
MT10_ACTIONS = ['dx', 'dy', 'dz', 'gripper']
MT10_TOPICS = {'corner': '/corner/image', 'gripperPOV': '/gripperPOV/image'}


@pytest.fixture(scope='module')
def mt10_bag(tmp_path_factory):
    """One 12-step Meta-World MT10 expert episode (drawer_close, time-limited), MCAP, recorded
    through the CLI."""
    bag = tmp_path_factory.mktemp('bags') / 'mt10'
    assert cli('record', ['--suite', 'metaworld-mt10', '--out', bag, '--tasks', 'drawer_close',
                        '--max-steps', STEPS, '--image-size', 32, '--start-ns', START_NS,
                        '--quiet']) == 0
    return bag


def test_an_mt10_bag_converts_in_the_actions_and_cameras_it_names(mt10_bag, tmp_path):
    out = tmp_path / 'demos'
    assert cli('bag2demos', [mt10_bag, '--out', out, '--keep-failed', '--quiet']) == 0
    index = read_index(out)
    assert (index['suite'], index['action_names'], index['cameras']) == (
        'metaworld-mt10', MT10_ACTIONS, list(MT10_TOPICS))
    assert index['image_size'] == 32 and index['control_hz'] == pytest.approx(80.0)
    (ep,) = list(iter_episodes(out))
    assert ep.task == 'drawer_close' and ep.instruction == 'close the drawer'
    msgs = read_back(mt10_bag)
    commands = np.array([m.data for _, m in msgs['/command'][1]])  # (T, 4)
    assert ep.actions.shape == commands.shape == (STEPS, 4)
    np.testing.assert_array_equal(ep.actions, commands.astype(np.float32))
    for camera, topic in MT10_TOPICS.items():
        frames = [np.frombuffer(m.data, np.uint8).reshape(32, 32, 3) for _, m in msgs[topic][1]]
        np.testing.assert_array_equal(ep.images[camera], np.stack(frames))
    assert load_stats(out)['mean'].shape == (4,)
    # train-bc builds its model for the demos' actions and cameras, as on gen-demos output
    assert cli('train-bc', ['--demos', out, '--out', tmp_path / 'bc', '--steps', 2,
                            '--batch-size', 4, '--d-model', 32, '--n-layers', 2, '--n-heads', 2,
                            '--quiet']) == 0
    cfg = load_vla(tmp_path / 'bc').cfg
    assert cfg.action_names == tuple(MT10_ACTIONS) and cfg.cameras == tuple(MT10_TOPICS)


def test_bags_of_two_suites_or_other_action_names_are_refused_in_one_line(mt10_bag, expert_bag,
                                                                          tmp_path, capsys):
    mixed = tmp_path / 'mixed'
    assert cli('bag2demos', [expert_bag, mt10_bag, '--out', mixed, '--keep-failed',
                             '--quiet']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'bags of different layouts in one dataset' in err, err
    assert 'tabletop, actions dx dy dz droll dpitch dyaw gripper, cameras front wrist' in err
    assert 'metaworld-mt10, actions dx dy dz gripper, cameras corner gripperPOV' in err
    assert not mixed.exists()  # refused before anything is written
    assert cli('bag2demos', [mt10_bag, '--out', mixed, '--keep-failed', '--quiet',
                             '--action-names'] + ACTION_NAMES) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'recorded in actions dx dy dz gripper' in err, err


# ---- bag2demos -> distill -----------------------------------------------------------------------
def test_bag2demos_output_trains_with_distill(expert_bag, policy_bag, model, tmp_path):
    out = tmp_path / 'demos'
    summary = convert.bags_to_demos([expert_bag, policy_bag], out, keep_failed=True,
                                    progress=False)
    assert summary['episodes'] == 4 and summary['steps'] == 60 + STEPS * EPISODES
    model_dir = tmp_path / 'model'
    shutil.copytree(model, model_dir)
    assert cli('distill', ['--model-dir', model_dir, '--demos', out, '--out', tmp_path / 'dysl',
                         '--stage1-steps', 2, '--stage2-steps', 2, '--batch-size', 4,
                         '--batches-per-pass', 2, '--device', 'cpu', '--quiet']) == 0
    calib = json.loads((model_dir / 'calibration.json').read_text())
    assert calib['guidance']['tau'] > 0
    assert (tmp_path / 'dysl' / 'dysl.safetensors').is_file()
    vla = load_vla(model_dir)
    dysl, guidance = load_dysl(tmp_path / 'dysl', vla)
    assert guidance['tau'] == calib['guidance']['tau']
    assert dysl.layout.num_layers == TINY.n_layers


# ---- other backends -----------------------------------------------------------------------------
def test_onnxruntime_bag_replays_exactly_on_onnxruntime_and_closely_on_torch(tmp_path):
    """Last in the file: an ONNX export slows later torch work in the same process."""
    directory = tiny_model(tmp_path / 'model', export=True)
    one = {'executed_actions': 1}  # as the recording runs: one action per chunk
    on_ort = PolicyOptions(threads=1, guidance=one)
    policy = open_policy(directory, 'onnxruntime', options=on_ort)
    topics = default_topics(policy.spec.cameras)
    with TabletopEnv(SimConfig(image_size=32, cameras=topics.camera_names,
                               max_steps=6)) as env:
        record.record(tmp_path / 'bag', RecordConfig(source='policy', tasks=('pick_blue',),
                                                     start_ns=START_NS),
                      topics, env, policy, progress=False)
    data = load_bag(tmp_path / 'bag', topics)
    same, _ = replay_step_locked(data, open_policy(directory, 'onnxruntime', options=on_ort),
                                 progress=False)
    assert [s['errors']['recorded']['exact'] for s in same[0]['steps']] == [True] * 6
    on_torch = PolicyOptions(guidance=one)
    torch_steps = replay_step_locked(data, open_policy(directory, options=on_torch),
                                     progress=False)[0][0]['steps']
    assert all(s['skips_match'] for s in torch_steps)
    assert max(s['errors']['recorded']['max_abs'] for s in torch_steps) < 1e-5
