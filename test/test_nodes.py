"""The ROS nodes over real rclpy on loopback: each test its own Context (and domain from
conftest.py), a tiny random model saved to a temporary directory."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
import yaml
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dysl_ros.export.random_model import build_random_model
from dysl_ros.model import VLAConfig
from dysl_ros.model.io import load_vla, save_vla
from dysl_ros.nodes import controller_node, sim_node
from dysl_ros.nodes.controller_node import ControllerNode
from dysl_ros.nodes.image_conversion import rgb_to_compressed, rgb_to_image
from dysl_ros.nodes.launcher import LocalLaunch, config_file, wait_for
from dysl_ros.nodes.params import defaults
from dysl_ros.nodes.policy_node import PolicyNode
from dysl_ros.nodes.policy_params import PARAMS as POLICY_PARAMS
from dysl_ros.nodes.qos import (CAMERA_QOS, CHUNK_QOS, COMMAND_QOS, INSTRUCTION_QOS,
                                STATUS_QOS)
from dysl_ros.nodes.sim_node import SimNode

ROOT = Path(__file__).resolve().parents[1]
ACTION_NAMES = ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper']
TINY = VLAConfig(image_size=32, patch_size=8, d_model=32, n_layers=5, n_heads=2, mlp_ratio=2,
                 chunk_size=4)
INSTRUCTION = 'pick up the red block'
CHUNK_TOPIC, INSTRUCTION_TOPIC, COMMAND_TOPIC = 'action_chunk', 'instruction', 'command'
FRONT_TOPIC, WRIST_TOPIC = 'image', 'wrist/image'


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp('tiny') / 'model', TINY, seed=0)


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
    """The tiny model with its ONNX export in model/onnx."""
    return build_random_model(tmp_path_factory.mktemp('tiny_onnx') / 'model', TINY, seed=0,
                              export=True)


@pytest.fixture(scope='module')
def nan_model(tmp_path_factory, tiny_model):
    """The tiny model with a NaN in its action head: every chunk is non-finite."""
    directory = tmp_path_factory.mktemp('nan') / 'model'
    build_random_model(directory, TINY, seed=0)
    vla = load_vla(directory)
    with torch.no_grad():
        vla.head.out.bias[0] = float('nan')
    save_vla(vla, directory)
    return directory


def policy_params(model, **extra):
    values = {'model_path': str(model), 'warmup_steps': 1, 'diagnostics_rate': 20.0,
              'log_throttle': 0.0, **extra}
    return [Parameter(k, value=v) for k, v in values.items()]


class Collector:
    """Stores (receipt time, message) of one topic."""

    def __init__(self, node, msg_type, topic, qos):
        self.items = []
        self.lock = threading.Lock()
        node.create_subscription(msg_type, topic, self._on, qos)

    def _on(self, msg):
        with self.lock:
            self.items.append((time.monotonic(), msg))

    def msgs(self):
        with self.lock:
            return [m for _, m in self.items]

    def clear(self):
        with self.lock:
            self.items.clear()


class Camera:
    """Publishes front + wrist frames with one stamp, like a two-camera rig."""

    def __init__(self, node, size=32):
        self.node = node
        self.front = node.create_publisher(Image, FRONT_TOPIC, CAMERA_QOS)
        self.wrist = node.create_publisher(Image, WRIST_TOPIC, CAMERA_QOS)
        self.rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)

    def matched(self):
        return self.front.get_subscription_count() > 0 and self.wrist.get_subscription_count() > 0

    def publish(self, stamp=None, front=None):
        stamp = stamp or self.node.get_clock().now().to_msg()
        self.wrist.publish(rgb_to_image(self.rgb, stamp=stamp))
        self.front.publish(front or rgb_to_image(self.rgb, stamp=stamp))
        return stamp


def make_tester(context):
    return rclpy.create_node('make_tester', context=context)


def start_policy(launch, model, **extra):
    policy = launch.add(PolicyNode, parameter_overrides=policy_params(model, **extra))
    launch.start()
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return policy


def send_instruction(node, text=INSTRUCTION, subscribers=1):
    pub = node.create_publisher(String, INSTRUCTION_TOPIC, INSTRUCTION_QOS)
    wait_for(lambda: pub.get_subscription_count() >= subscribers, 10.0, 'instruction match')
    pub.publish(String(data=text))
    return pub


def publish_until_chunk(camera, chunks, timeout=20.0):
    """Publish frames every 50 ms until a chunk arrives; returns (stamps sent, chunk)."""
    wait_for(camera.matched, 10.0, 'camera subscriptions')
    sent = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sent.append(camera.publish())
        time.sleep(0.05)
        if chunks.msgs():
            return sent, chunks.msgs()[0]
    raise TimeoutError('no chunk')


def stamp_ns(stamp):
    return Time.from_msg(stamp).nanoseconds


def lifecycle_state(node, client):
    future = client.call_async(GetState.Request())
    wait_for(future.done, 10.0, 'get_state')
    return future.result().current_state.id


# ---- policy node ---------------------------------------------------------------------------
def test_lifecycle_transitions(tiny_model):
    with LocalLaunch() as launch:
        policy = launch.add(PolicyNode, parameter_overrides=policy_params(tiny_model))
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        client = node.create_client(GetState, 'policy_node/get_state')
        launch.start()
        wait_for(client.service_is_ready, 10.0, 'the lifecycle services')
        assert lifecycle_state(node, client) == State.PRIMARY_STATE_UNCONFIGURED
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.policy is not None
        assert lifecycle_state(node, client) == State.PRIMARY_STATE_INACTIVE
        assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert lifecycle_state(node, client) == State.PRIMARY_STATE_ACTIVE
        wait_for(lambda: policy.count_subscribers(CHUNK_TOPIC) > 0, 10.0, 'chunk match')
        assert policy.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: len(chunks.msgs()) > 0, 10.0, 'the hold chunk')
        hold = chunks.msgs()[-1]
        assert hold.points == [] and list(hold.joint_names) == ACTION_NAMES
        assert lifecycle_state(node, client) == State.PRIMARY_STATE_INACTIVE
        assert policy.count_subscribers(CHUNK_TOPIC) >= 1
        assert policy.count_publishers(FRONT_TOPIC) == 0
        assert policy.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert policy.policy is None
        assert lifecycle_state(node, client) == State.PRIMARY_STATE_UNCONFIGURED
        # configure again after cleanup: a fresh model
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.policy is not None


def test_configure_fails_clearly_on_a_missing_model_and_recovers(tiny_model, tmp_path):
    with LocalLaunch() as launch:
        policy = launch.add(PolicyNode, parameter_overrides=policy_params(tmp_path / 'none'))
        node = launch.add(make_tester)
        diagnostics = Collector(node, DiagnosticArray, '/diagnostics', STATUS_QOS)
        launch.start()
        assert policy.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert 'does not exist' in policy.error_text and 'none' in policy.error_text
        wait_for(lambda: any('configure failed' in m.status[0].message
                             for m in diagnostics.msgs()), 10.0, 'an ERROR diagnostic')
        policy.set_parameters([Parameter('model_path', value=str(tiny_model))])
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.error_text == ''


def test_image_in_gives_a_chunk_with_the_image_stamp(tiny_model):
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        steps = Collector(node, String, 'policy_node/step_stats', STATUS_QOS)
        camera = Camera(node)
        policy = start_policy(launch, tiny_model)
        send_instruction(node)
        sent, chunk = publish_until_chunk(camera, chunks)
        assert stamp_ns(chunk.header.stamp) in [stamp_ns(s) for s in sent]
        assert list(chunk.joint_names) == ACTION_NAMES
        assert len(chunk.points) == TINY.chunk_size
        for i, p in enumerate(chunk.points):
            assert len(p.positions) == len(ACTION_NAMES)
            assert np.all(np.isfinite(p.positions))
            assert p.time_from_start.sec * 10**9 + p.time_from_start.nanosec == i * 50_000_000
        wait_for(lambda: steps.msgs(), 10.0, 'step statistics')
        info = json.loads(steps.msgs()[0].data)
        assert info['layers_total'] == TINY.n_layers and 1 <= info['layers_run']
        assert info['stamp'] == pytest.approx(stamp_ns(chunk.header.stamp) * 1e-9)
        assert policy.stats.summary()['steps'] >= 1


def test_compressed_transport_and_a_fixed_inference_rate(tiny_model):
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        front = node.create_publisher(CompressedImage, FRONT_TOPIC + '/compressed', CAMERA_QOS)
        wrist = node.create_publisher(CompressedImage, WRIST_TOPIC + '/compressed', CAMERA_QOS)
        policy = start_policy(launch, tiny_model, image_transport='compressed',
                              inference_rate=4.0, instruction=INSTRUCTION)
        wait_for(lambda: front.get_subscription_count() and wrist.get_subscription_count(),
                 10.0, 'compressed subscriptions')
        rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:  # 20 frames per second, inference at 4 Hz
            stamp = node.get_clock().now().to_msg()
            wrist.publish(rgb_to_compressed(rgb, 'jpeg', stamp=stamp))
            front.publish(rgb_to_compressed(rgb, 'png', stamp=stamp))
            time.sleep(0.05)
        time.sleep(0.3)
        n = len(chunks.msgs())
        assert 1 <= n <= 4.0 * 1.8 + 2, f'{n} chunks in 1.8 s at 4 Hz'
        s = policy.stats.summary()
        assert s['frames_dropped'] >= 10  # frames between two inferences are never used
        timing = {'stale'}  # a late tick on a busy machine may find the frame too old
        assert not {k: v for k, v in s.items() if k.startswith('errors_') and v
                    and k[len('errors_'):] not in timing}


def test_onnxruntime_backend_serves_the_export(tiny_export):
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        camera = Camera(node)
        bad = launch.add(PolicyNode, node_name='bad_policy', parameter_overrides=policy_params(
            tiny_export, backend='onnxruntime', method='deer'))
        policy = start_policy(launch, tiny_export, backend='onnxruntime',
                              instruction=INSTRUCTION)
        assert type(policy.policy.runner).__name__ == 'OnnxRunner'
        sent, chunk = publish_until_chunk(camera, chunks)
        assert len(chunk.points) == TINY.chunk_size
        assert bad.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert 'method' in bad.error_text and 'torch' in bad.error_text


def test_stale_images_give_no_chunk_and_the_controller_holds(tiny_model):
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        commands = Collector(node, Float64MultiArray, COMMAND_TOPIC, COMMAND_QOS)
        launch.add(ControllerNode)
        camera = Camera(node)
        policy = start_policy(launch, tiny_model, max_image_age=0.2)
        send_instruction(node, subscribers=2)
        wait_for(camera.matched, 10.0, 'camera subscriptions')
        old = node.get_clock().now().nanoseconds - 5 * 10**9
        for k in range(10):  # five seconds old, increasing stamps
            t = old + k * 10**7
            camera.publish(Time(nanoseconds=t).to_msg())
            time.sleep(0.05)
        wait_for(lambda: policy.stats.errors['stale'] >= 1, 10.0, 'a stale count')
        commands.clear()
        time.sleep(0.6)
        assert chunks.msgs() == []
        held = commands.msgs()
        assert len(held) >= 3
        for msg in held:
            assert list(msg.data) == [0.0] * 7  # zero deltas, gripper at its initial 0
        # a fresh frame serves again
        publish_until_chunk(camera, chunks)


def test_bad_input_is_counted_and_the_node_keeps_serving(tiny_model):
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        diagnostics = Collector(node, DiagnosticArray, '/diagnostics', STATUS_QOS)
        camera = Camera(node)
        policy = start_policy(launch, tiny_model, image_width=32, image_height=32,
                              max_instruction_length=40)
        pub = send_instruction(node, text='')  # empty: rejected
        pub.publish(String(data='pick up ' * 20))  # too long: rejected
        wait_for(camera.matched, 10.0, 'camera subscriptions')
        bad = rgb_to_image(camera.rgb)
        bad.encoding = 'yuv422'
        small = rgb_to_image(camera.rgb[:16, :16].copy())
        truncated = rgb_to_image(camera.rgb)
        truncated.data = truncated.data[:100]
        base = node.get_clock().now().nanoseconds
        for k, front in enumerate([bad, small, truncated]):
            camera.publish(Time(nanoseconds=base + k * 10**7).to_msg(), front=front)
            time.sleep(0.05)
        wait_for(lambda: policy.stats.errors['encoding'] >= 1
                 and policy.stats.errors['size'] >= 2
                 and policy.stats.errors['instruction'] >= 2, 10.0, 'the error counts')
        assert chunks.msgs() == []  # no instruction accepted yet, no good frame
        pub.publish(String(data=INSTRUCTION))
        wait_for(lambda: policy.session.instruction == INSTRUCTION, 10.0, 'the instruction')
        sent, chunk = publish_until_chunk(camera, chunks)
        # an out-of-order frame is dropped and counted
        camera.publish(Time(nanoseconds=stamp_ns(sent[-1]) - 10**8).to_msg())
        wait_for(lambda: policy.stats.errors['out_of_order'] >= 1, 10.0, 'out of order')

        def reported():
            for m in diagnostics.msgs():
                values = {kv.key: kv.value for kv in m.status[0].values}
                if values.get('errors_encoding', '0') != '0' and \
                        values.get('errors_out_of_order', '0') != '0':
                    assert {'layers_run_mean', 'skip_rate', 'verifications', 'policy_ms_p50',
                            'policy_ms_p90', 'camera_to_chunk_ms_p90', 'frames_dropped',
                            'errors'} <= set(values)
                    assert m.status[0].level == DiagnosticStatus.WARN
                    return True
            return False
        wait_for(reported, 10.0, '/diagnostics with the errors')


def _skipping_only_policy(launch, tiny_model, **params):
    """The tester's collectors and camera, and a started policy node with `params` that has
    refused to configure with method 'full', saying the first parameter needs a skipping
    method."""
    node = launch.add(make_tester)
    chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
    steps = Collector(node, String, 'policy_node/step_stats', STATUS_QOS)
    diagnostics = Collector(node, DiagnosticArray, '/diagnostics', STATUS_QOS)
    camera = Camera(node)
    policy = launch.add(PolicyNode, parameter_overrides=policy_params(
        tiny_model, method='full', **params))
    launch.start()
    assert policy.trigger_configure() == TransitionCallbackReturn.FAILURE
    name, value = next(iter(params.items()))
    assert f'{name}={value} needs a skipping method' in policy.error_text
    return node, chunks, steps, diagnostics, camera, policy


def test_an_unmeetable_latency_budget_warns_with_its_figures(tiny_model):
    """latency_budget_ms is range-checked, refused without skipping, and when no step can meet
    it the threshold shift saturates: ~/step_stats and a WARN on /diagnostics say so."""
    with LocalLaunch() as launch:
        node, chunks, steps, diagnostics, camera, policy = _skipping_only_policy(
            launch, tiny_model, latency_budget_ms=1e-3)
        refused = policy.set_parameters([Parameter('latency_budget_ms', value=-1.0)])[0]
        assert not refused.successful and 'latency_budget_ms' in refused.reason
        policy.set_parameters([Parameter('method', value='dysl')])
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        send_instruction(node)
        publish_until_chunk(camera, chunks)

        def warned():
            camera.publish()
            time.sleep(0.05)
            for m in diagnostics.msgs():
                if 'latency budget unmet' in m.status[0].message:
                    values = {kv.key: kv.value for kv in m.status[0].values}
                    assert m.status[0].level == DiagnosticStatus.WARN
                    assert values['latency_budget_ms'] == '0.001'
                    assert float(values['threshold_shift']) >= 0.3 - 0.02  # at its bound
                    assert float(values['latency_p95_ms']) > 0.001
                    return True
            return False
        wait_for(warned, 20.0, 'a latency budget WARN')
        info = json.loads(steps.msgs()[-1].data)
        assert info['latency_budget_ms'] == 1e-3 and info['latency_budget_unmet']
        model = policy.policy.threshold  # the step's threshold; the figures are after it
        assert model - 0.3 - 1e-9 <= info['threshold'] <= model


def test_the_shadow_check_falls_back_to_full_depth_when_drift_is_forced_over(tiny_model):
    """shadow_every is refused without skipping; with every step shadowed and a threshold no
    drift can stay under, each checked step is followed by shadow_fallback_steps full-depth
    steps, which ~/step_stats flags and /diagnostics reports as a WARN with the figures."""
    with LocalLaunch() as launch:
        node, chunks, steps, diagnostics, camera, policy = _skipping_only_policy(
            launch, tiny_model, shadow_every=1, shadow_fallback_steps=2)
        policy.set_parameters([Parameter('method', value='dysl')])
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        policy.policy.shadow.drift_threshold = -1.0  # forced: every drift is over it
        assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        send_instruction(node)
        publish_until_chunk(camera, chunks)

        def stepped(n):
            camera.publish()
            time.sleep(0.05)
            return len(steps.msgs()) >= n
        wait_for(lambda: stepped(6), 20.0, '6 steps')
        infos = [json.loads(m.data) for m in steps.msgs()[:6]]
        assert [i['shadow_fallback'] for i in infos] == [False, True, True] * 2
        for i in infos:
            if i['shadow_fallback']:
                assert i['layers_run'] == i['layers_total'] and i['shadow_drift'] is None
            else:
                assert i['shadow_drift'] >= 0 and 'shadow' in i['latency_ms']
                assert i['shadow_every'] == 1 and i['shadow_fallback_steps_left'] == 2
                # the shadow pass ran after the step: outside its time
                assert i['latency_ms']['total'] <= i['policy_ms']

        def warned():
            for m in diagnostics.msgs():
                if 'shadow check' in m.status[0].message:
                    values = {kv.key: kv.value for kv in m.status[0].values}
                    assert m.status[0].level == DiagnosticStatus.WARN
                    assert float(values['shadow_last_drift']) >= 0
                    assert int(values['shadow_fallbacks']) >= 1
                    return True
            return False
        wait_for(warned, 10.0, 'a shadow check WARN')


def test_non_finite_model_output_gives_no_chunk(nan_model):
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        camera = Camera(node)
        broken = launch.add(PolicyNode, node_name='broken_policy',
                            parameter_overrides=policy_params(nan_model, warmup_steps=1))
        policy = start_policy(launch, nan_model, warmup_steps=0)
        assert broken.trigger_configure() == TransitionCallbackReturn.FAILURE  # warm-up: NaN
        assert 'non-finite' in broken.error_text
        send_instruction(node)
        wait_for(camera.matched, 10.0, 'camera subscriptions')
        end = time.monotonic() + 10.0
        while policy.stats.errors['non_finite'] < 2 and time.monotonic() < end:
            camera.publish()
            time.sleep(0.05)
        assert policy.stats.errors['non_finite'] >= 2  # it keeps trying, frame after frame
        assert chunks.msgs() == []


def test_reset_and_instruction_start_new_episodes(tiny_model):
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        steps = Collector(node, String, 'policy_node/step_stats', STATUS_QOS)
        camera = Camera(node)
        client = node.create_client(Trigger, 'policy_node/reset')
        start_policy(launch, tiny_model, instruction=INSTRUCTION)
        publish_until_chunk(camera, chunks)
        wait_for(lambda: steps.msgs(), 10.0, 'step statistics')
        first = json.loads(steps.msgs()[-1].data)['episode']
        wait_for(client.service_is_ready, 10.0, 'the reset service')
        future = client.call_async(Trigger.Request())
        wait_for(future.done, 10.0, 'the reset response')
        assert future.result().success
        chunks.clear()
        steps.clear()
        publish_until_chunk(camera, chunks)
        wait_for(lambda: steps.msgs(), 10.0, 'step statistics')
        second = json.loads(steps.msgs()[-1].data)['episode']
        assert second > first
        send_instruction(node, 'open the drawer')
        time.sleep(0.2)
        chunks.clear()
        steps.clear()
        publish_until_chunk(camera, chunks)
        wait_for(lambda: steps.msgs(), 10.0, 'step statistics')
        assert json.loads(steps.msgs()[-1].data)['episode'] > second


# ---- controller node -----------------------------------------------------------------------
def test_controller_executes_a_chunk_at_its_rate_then_holds():
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        commands = Collector(node, Float64MultiArray, COMMAND_TOPIC, COMMAND_QOS)
        controller = launch.add(ControllerNode)
        pub = node.create_publisher(JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
        launch.start()
        wait_for(lambda: pub.get_subscription_count() > 0 and commands.msgs(), 10.0, 'match')
        actions = np.zeros((4, 7))
        actions[:, 0] = [0.001, 0.002, 0.003, 0.004]
        actions[:, 6] = 0.75
        msg = JointTrajectory(joint_names=ACTION_NAMES)
        msg.header.stamp = node.get_clock().now().to_msg()
        for i, a in enumerate(actions):
            msg.points.append(JointTrajectoryPoint(
                positions=a.tolist(), time_from_start=Duration(nanosec=i * 50_000_000)))
        commands.clear()
        t0 = time.monotonic()
        pub.publish(msg)
        time.sleep(1.0)
        with commands.lock:
            items = [(t, np.array(m.data)) for t, m in commands.items if t >= t0]
        assert 10 <= len(items) <= 30, f'{len(items)} commands in 1 s at 20 Hz'
        executed = [a for _, a in items if a[0] != 0.0]
        start = int(round(executed[0][0] * 1000)) - 1  # 0, or 1 if it arrived a period late
        assert start in (0, 1)
        np.testing.assert_allclose(executed, actions[start:])
        tail = [a for _, a in items][-5:]
        for a in tail:  # after the chunk: zero deltas, gripper held at 0.75
            np.testing.assert_allclose(a, [0, 0, 0, 0, 0, 0, 0.75])
        labels = [m.layout.dim[0].label for t, m in commands.items if t >= t0]
        assert labels.count('action') == len(executed) and labels[-1] == 'hold'
        assert controller.chunks.stats.accepted == 1


# ---- sim node ------------------------------------------------------------------------------
def test_sim_node_steps_on_commands_and_reports_the_episode():
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        images = Collector(node, Image, FRONT_TOPIC, CAMERA_QOS)
        wrist = Collector(node, Image, WRIST_TOPIC, CAMERA_QOS)
        status = Collector(node, String, 'episode_status', STATUS_QOS)
        launch.add(SimNode, parameter_overrides=[Parameter('max_steps', value=6),
                                                 Parameter('image_size', value=32)])
        commands = node.create_publisher(Float64MultiArray, COMMAND_TOPIC, COMMAND_QOS)
        launch.start()
        send_instruction(node, 'open the drawer')
        wait_for(lambda: any(json.loads(m.data)['done'] for m in status.msgs()), 20.0,
                 'the episode to end')
        wait_for(lambda: commands.get_subscription_count() > 0, 10.0, 'command match')
        reports = [json.loads(m.data) for m in status.msgs()]
        assert reports[0]['step'] == 0 and reports[0]['task'] == 'open_drawer'
        assert reports[-1]['step'] == 6 and reports[-1]['timeout'] and not reports[-1]['success']
        assert reports[-1]['holds'] == 6  # nobody commanded: every step held
        frame = images.msgs()[-1]
        assert (frame.width, frame.height, frame.encoding) == (32, 32, 'rgb8')
        assert frame.header.frame_id == 'front'
        assert frame.header.stamp in [m.header.stamp for m in wrist.msgs()]
        # a second episode, now with commands: fewer holds
        status.clear()
        send_instruction(node, 'open the drawer')
        for _ in range(12):
            commands.publish(Float64MultiArray(data=[0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 1.0]))
            time.sleep(0.03)
        wait_for(lambda: any(json.loads(m.data)['done'] for m in status.msgs()), 20.0,
                 'the second episode to end')
        last = json.loads(status.msgs()[-1].data)
        assert last['seed'] == 1 and last['holds'] < 6
        # an unknown instruction is reported, not fatal
        status.clear()
        send_instruction(node, 'dance')
        wait_for(lambda: any(json.loads(m.data)['error'] for m in status.msgs()), 10.0,
                 'the error status')


# ---- processes, parameters, the demo -------------------------------------------------------
def test_policy_node_in_another_process_talks_over_dds(tiny_model):
    cmd = [sys.executable, '-m', 'dysl_ros.nodes.policy_node', '--ros-args',
           '-p', f'model_path:={tiny_model}', '-p', 'autostart:=true', '-p', 'warmup_steps:=0',
           '-p', f'instruction:={INSTRUCTION}']
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with LocalLaunch() as launch:
            node = launch.add(make_tester)
            chunks = Collector(node, JointTrajectory, CHUNK_TOPIC, CHUNK_QOS)
            camera = Camera(node)
            launch.start()
            wait_for(camera.matched, 90.0, 'the policy process to subscribe')
            sent, chunk = publish_until_chunk(camera, chunks, timeout=60.0)
            assert stamp_ns(chunk.header.stamp) in [stamp_ns(s) for s in sent]
            assert len(chunk.points) == TINY.chunk_size
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert 'configured: torch backend' in out


def test_parameter_files_hold_the_declared_defaults():
    policy = (('policy_node', POLICY_PARAMS), ('controller_node', controller_node.PARAMS))
    for path, nodes in [(config_file('policy.yaml'), policy),
                        (config_file('sim.yaml'), (('sim_node', sim_node.PARAMS),))]:
        data = yaml.safe_load(path.read_text())
        for name, params in nodes:
            values = data[f'/**/{name}']['ros__parameters']
            declared = defaults(params)
            assert values == declared, f'{path} {name}'
            for p in params:
                assert p.description
                numeric = isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
                assert not numeric or (p.low is not None and p.high is not None), p.name


def test_parameters_load_from_the_files_and_carry_descriptors():
    with LocalLaunch([config_file('policy.yaml')]) as launch:
        controller = launch.add(ControllerNode)
        policy = launch.add(PolicyNode, namespace='robot1')
        d = policy.describe_parameter('max_image_age')
        assert d.description and d.floating_point_range[0].to_value == 60.0
        assert policy.describe_parameter('backend').additional_constraints
        assert controller.describe_parameter('control_rate').read_only
        assert controller.get_parameter('upper_limits').value[-1] == 1.0
        assert policy.get_fully_qualified_name() == '/robot1/policy_node'


def run_demo_command(model, tmp_path, *extra):
    """`python -m dysl_ros demo` on `model` for pick_red: (stdout and stderr merged in the
    order they came, JSON rows)."""
    out_json = tmp_path / 'demo.json'
    cmd = [sys.executable, '-m', 'dysl_ros', 'demo', '--model', str(model), '--tasks',
           'pick_red', '--json', str(out_json), *extra]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=150)
    assert result.returncode == 0, result.stdout
    return result.stdout, json.loads(out_json.read_text())['rows']


def assert_clean_table(out, rows):
    """The demo's table: its header, one line per row, then the summary; no log line and no
    progress bar (stdout is not a terminal) anywhere."""
    lines = out.splitlines()
    assert '\r' not in out and not any(line.startswith(('[INFO]', '[WARN]', '[DEBUG]'))
                                       for line in lines), out
    h = next(i for i, line in enumerate(lines) if line.split()[:2] == ['ep', 'task'])
    assert lines[h].split()[8:10] == ['dropped', 'stale'], out
    for n, row in enumerate(rows):
        cells = lines[h + 1 + n].split()
        assert len(cells) == 12 and cells[:2] == [str(n), row['task']], out
        assert cells[8:10] == [str(row['dropped_chunks']), str(row['stale_frames'])], out
    assert lines[h + 1 + len(rows)].startswith('success: '), out


def test_demo_entry_point_completes_an_episode(tiny_model, tmp_path):
    out, rows = run_demo_command(tiny_model, tmp_path, '--episodes', '1', '--max-steps', '40')
    assert len(rows) == 1 and rows[0]['task'] == 'pick_red' and rows[0]['steps'] == 40
    assert rows[0]['chunks'] >= 1, out  # the loop closed
    for key in ('dropped_chunks', 'stale_frames'):
        assert isinstance(rows[0][key], int) and rows[0][key] >= 0, rows[0]
    assert sum(rows[0]['dropped_by_reason'].values()) == rows[0]['dropped_chunks']
    assert_clean_table(out, rows)


@pytest.mark.parametrize('node', ['controller_node', 'policy_node'])
def test_demo_counts_each_episodes_drops(tiny_model, tmp_path, node):
    # 1 ms: every chunk is too old when it reaches the controller; nearly every frame is
    # when the policy would step on it
    limit = {'controller_node': 'max_chunk_age', 'policy_node': 'max_image_age'}[node]
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({f'/**/{node}': {'ros__parameters': {limit: 0.001}}}))
    out, rows = run_demo_command(tiny_model, tmp_path, '--episodes', '2', '--max-steps', '10',
                                 '--params-file', str(params))
    assert len(rows) == 2
    for i, row in enumerate(rows):  # this episode's own counts, not running totals
        if node == 'controller_node':  # every chunk dropped; a chunk of the episode before,
            # still in flight at the reset, may be dropped (and counted) in this one
            late = 0 if i == 0 else 1
            assert row['chunks'] >= 1, out
            assert row['chunks'] <= row['dropped_chunks'] <= row['chunks'] + late, out
            assert row['dropped_by_reason'].get('stale', 0) >= 1, row
        else:  # each frame (the reset's, one per step) refused as stale or stepped on
            assert 1 <= row['stale_frames'] <= row['steps'] + 1 - row['chunks'], out
    assert_clean_table(out, rows)  # the node warned of each drop, out of sight
    assert 'chunks dropped by the controller: ' in out


def test_overhead_bench_times_camera_to_chunk_against_the_step(tiny_model, tmp_path):
    import argparse
    from dysl_ros.nodes import overhead_bench
    parser = argparse.ArgumentParser()
    overhead_bench.add_arguments(parser)
    out = tmp_path / 'overhead.json'
    args = parser.parse_args(['--model', str(tiny_model), '--frames', '6', '--warmup', '1',
                              '--width', '48', '--height', '40', '--json', str(out)])
    assert overhead_bench.run(args) == 0
    data = json.loads(out.read_text())
    samples = data['samples_ms']
    c2c, in_node = samples['camera -> chunk'], samples['policy.step in the node']
    assert len(c2c) == len(in_node) == len(samples['policy.step, no ROS']) == 6
    assert all(c >= s > 0 for c, s in zip(c2c, in_node))  # the chunk waits for the step
    assert data['figures']['camera -> chunk']['p50_ms'] >= \
        data['figures']['policy.step in the node']['p50_ms']
