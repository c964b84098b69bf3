"""What ROS adds to the policy's latency: camera-to-chunk against the policy step alone.

In one run, on the same frames, model and backend (in-process: frame by frame alternately,
so that a machine whose load changes affects both alike; with --process the direct steps
come first, since the idle spinning of this process's OpenMP threads would otherwise slow
the other process down):

1. policy only: `policy.step` of a second copy of the policy called directly, no ROS;
2. through ROS: a camera node publishes both camera frames (one stamp), the policy node
   (in this process, or with --process in its own process) converts them, steps and publishes
   the chunk; the camera node receives it. One frame is in flight at a time, so nothing
   queues. camera -> chunk = chunk received - image stamp; the node's own step time and
   publish time come from its ~/step_stats, so the ROS overhead per frame = camera -> chunk
   - that step, split by the node's stages_ms (frame in: stamp to the camera callback;
   conversion; wake and pairing: to the step's start; chunk message and publish) and chunk
   out (published to received here).

    python -m dysl_ros bench ros-overhead --frames 200 [--process] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from ..runtime.messages import StepStats

INSTRUCTION = 'pick up the red block'


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --backend, --method, --device: the policy node's model (benches of the node)."""
    parser.add_argument('--model', metavar='DIR', help='model or export directory (default: '
                        'models/default, or a random default-size model while that is absent)')
    parser.add_argument('--backend', default='torch',
                        choices=('torch', 'onnxruntime', 'tensorrt'), help='default torch')
    parser.add_argument('--method', default='dysl', help='dysl (default) or full')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_arguments(parser)
    parser.add_argument('--frames', type=int, default=200, help='measured frames (default 200)')
    parser.add_argument('--warmup', type=int, default=10, help='unmeasured frames (default 10)')
    parser.add_argument('--width', type=int, default=64, help='camera width (default 64)')
    parser.add_argument('--height', type=int, default=64, help='camera height (default 64)')
    parser.add_argument('--process', action='store_true',
                        help='run the policy node in its own process (default: this process)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the frames (default 0)')
    parser.add_argument('--json', metavar='PATH', help='also write the figures as JSON')


def run(args: argparse.Namespace) -> int:
    from .launcher import ros_environment
    ros_environment()  # before rclpy loads anything
    if args.frames < 1 or args.warmup < 0:
        print('error: --frames must be >= 1 and --warmup >= 0')
        return 2
    with tempfile.TemporaryDirectory(prefix='dysl_bench_') as tmp:
        model = _model(args, Path(tmp))
        rng = np.random.default_rng(args.seed)
        frame = rng.integers(0, 256, (args.height, args.width, 3), np.uint8)
        ros = _measure(args, model, frame)
    if ros is None:
        return 1
    c2c, in_node = np.array(ros['camera_to_chunk_ms']), np.array(ros['node_step_ms'])
    published = np.array(ros['published_ms'])
    rows = {'policy.step, no ROS': np.array(ros['direct_ms']),
            'policy.step in the node': in_node,
            'camera -> chunk': c2c,
            'ROS overhead (camera -> chunk - step in node)': c2c - in_node,
            **{f'  {k}': np.array(v) for k, v in ros['stages_ms'].items() if k != 'step'},
            '  chunk out: published -> received': c2c - published}
    where = 'its own process' if args.process else 'this process'
    print(f'ROS overhead: {args.backend} / {args.method}, {args.width}x{args.height} rgb8 x 2 '
          f'cameras, {args.frames} frames, policy node in {where}, ROS_DOMAIN_ID '
          f'{os.environ["ROS_DOMAIN_ID"]}')
    print(f'mean layers run: {np.mean(ros["direct_layers"]):.1f} without ROS, '
          f'{np.mean(ros["node_layers"]):.1f} in the node')
    print(f'{"":<46} {"p50 ms":>8} {"p99 ms":>8} {"mean ms":>8}')
    figures = {}
    for name, v in rows.items():
        p50, p99 = float(np.percentile(v, 50)), float(np.percentile(v, 99))
        figures[name] = {'p50_ms': p50, 'p99_ms': p99, 'mean_ms': float(v.mean())}
        print(f'{name:<46} {p50:>8.2f} {p99:>8.2f} {v.mean():>8.2f}')
    if args.json:
        Path(args.json).write_text(json.dumps({
            'backend': args.backend, 'method': args.method, 'model': str(model),
            'width': args.width, 'height': args.height, 'frames': args.frames,
            'process': args.process, 'figures': figures,
            'samples_ms': {k: v.tolist() for k, v in rows.items()}}, indent=2))
    return 0


def _model(args: argparse.Namespace, tmp: Path) -> Path:
    from ..export.random_model import build_random_model_apart
    from ..model.io import VLA_JSON
    from ..paths import default_model_dir
    if args.model:
        return Path(args.model)
    model = default_model_dir()
    if not (model / VLA_JSON).is_file():
        print(f'note: no trained model in {model}; timing a random default-size model')
        model = build_random_model_apart(tmp / 'random', seed=args.seed,
                                         export=args.backend != 'torch')
    return model


def _node_values(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    from .params import defaults
    from .policy_params import PARAMS
    return {**defaults(PARAMS), 'model_path': str(model), 'backend': args.backend,
            'method': args.method, 'device': args.device, 'instruction': INSTRUCTION,
            'max_image_age': 60.0, 'warmup_steps': args.warmup}


def _measure(args: argparse.Namespace, model: Path, frame: np.ndarray
             ) -> Optional[dict[str, list[float]]]:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from .launcher import LocalLaunch, wait_for
    from .policy_node import PolicyNode
    from .policy_params import PolicyNodeConfig, load_policy

    values = _node_values(args, model)
    direct = load_policy(PolicyNodeConfig(**values))
    images = {c: frame for c in direct.spec.cameras}

    layers: list[int] = []

    def step() -> float:
        t0 = time.perf_counter()
        _, stats = direct.step(images, INSTRUCTION)
        layers.append(stats.layers_run)
        return (time.perf_counter() - t0) * 1e3
    proc = None
    times: list[float] = []
    if args.process:
        for _ in range(args.warmup):
            step()
        direct.reset()
        layers.clear()
        times = [step() for _ in tqdm(range(args.frames), desc='policy only', leave=False)]
    with LocalLaunch() as launch:
        camera = launch.add(_Camera, frame=frame)
        if args.process:
            cmd = [sys.executable, '-m', 'dysl_ros.nodes.policy_node', '--ros-args', '-p',
                   'autostart:=true'] + [a for k, v in values.items() if k != 'autostart'
                                         for a in ('-p', f'{k}:={_arg(v)}')]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        else:
            policy = launch.add(PolicyNode, parameter_overrides=[
                Parameter(k, value=v) for k, v in values.items()])
        launch.start()
        try:
            if proc is None and policy.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                print(f'error: the policy node did not configure: {policy.error_text}')
                return None
            if proc is None:
                policy.trigger_activate()
            wait_for(camera.matched, 120.0, 'the policy node to connect')
            interleave = not args.process
            for _ in tqdm(range(args.warmup), desc='warm-up', leave=False):
                if interleave:
                    step()
                camera.ping()
            camera.results.clear()
            if interleave:
                direct.reset()  # the node reset its policy after its warm-up too
                layers.clear()
            for _ in tqdm(range(args.frames), desc='frames', leave=False):
                if interleave:
                    times.append(step())
                camera.ping()
            # statistics arrive on their own topic, possibly after the chunk; the warm-up's
            # are in node_step too, so wait for these frames' stamps, not for a count
            wait_for(lambda: all(s in camera.node_step for s, _ in camera.results), 5.0,
                     'the step statistics')
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
    c2c = [ms for _, ms in camera.results]
    steps = [camera.node_step[stamp] for stamp, _ in camera.results]
    node_layers = [camera.node_layers[stamp] for stamp, _ in camera.results]
    published = [camera.node_published[stamp] for stamp, _ in camera.results]
    stages = [camera.node_stages[stamp] for stamp, _ in camera.results]
    return {'direct_ms': times, 'camera_to_chunk_ms': c2c, 'node_step_ms': steps,
            'published_ms': published,
            'stages_ms': {k: [s[k] for s in stages] for k in stages[0]},
            'direct_layers': layers, 'node_layers': node_layers}


def _arg(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, list):
        return '[' + ','.join(str(v) for v in value) + ']'
    return str(value) if value != '' else "''"


def _Camera(context: Any, frame: np.ndarray) -> Any:
    """A node publishing both camera topics and timing the chunk that answers each frame."""
    from rclpy.node import Node
    from rclpy.time import Time
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from .image_conversion import rgb_to_image
    from .qos import CAMERA_QOS, CHUNK_QOS, STATUS_QOS

    class Camera(Node):
        def __init__(self) -> None:
            super().__init__('overhead_camera', context=context)
            self.front = self.create_publisher(Image, 'image', CAMERA_QOS)
            self.wrist = self.create_publisher(Image, 'wrist/image', CAMERA_QOS)
            self.create_subscription(JointTrajectory, 'action_chunk', self._on_chunk, CHUNK_QOS)
            self.create_subscription(String, 'policy_node/step_stats', self._on_step,
                                     STATUS_QOS)
            self.results: list[tuple[int, float]] = []  # (stamp ns, camera -> chunk ms)
            self.node_step: dict[int, float] = {}
            self.node_published: dict[int, float] = {}  # image stamp -> chunk published
            self.node_layers: dict[int, int] = {}
            self.node_stages: dict[int, dict[str, float]] = {}
            self._pending: Optional[int] = None
            # built once: the stamp is taken when a frame is sent, not before its bytes exist
            self._msgs = [rgb_to_image(frame) for _ in range(2)]
            self._answered = threading.Event()

        def matched(self) -> bool:
            return (self.front.get_subscription_count() > 0 and
                    self.wrist.get_subscription_count() > 0 and
                    self.count_publishers('action_chunk') > 0)

        def ping(self, timeout: float = 30.0) -> None:
            """Publish one frame pair and wait for its chunk (re-sent if a frame is lost)."""
            for _ in range(3):
                now = self.get_clock().now()
                self._pending = now.nanoseconds
                self._answered.clear()
                for msg in self._msgs:
                    msg.header.stamp = now.to_msg()
                self.wrist.publish(self._msgs[1])
                self.front.publish(self._msgs[0])
                if self._answered.wait(timeout):
                    return
            raise TimeoutError('no chunk for three frames in a row')

        def _on_chunk(self, msg: JointTrajectory) -> None:
            received = self.get_clock().now().nanoseconds
            stamp = Time.from_msg(msg.header.stamp).nanoseconds
            if msg.points and stamp == self._pending:
                self.results.append((stamp, (received - stamp) * 1e-6))
                self._answered.set()

        def _on_step(self, msg: String) -> None:
            info = StepStats.from_json(msg.data)
            self.node_step[info.stamp_ns] = info.policy_ms
            self.node_published[info.stamp_ns] = info.camera_to_chunk_ms
            self.node_layers[info.stamp_ns] = info.layers_run
            self.node_stages[info.stamp_ns] = info.stages_ms

    return Camera()
