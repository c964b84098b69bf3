"""The policy node (lifecycle): camera frames + instruction -> action chunks.

Topics (relative names; remap freely):

    subscribes  camera_topics[i]   sensor_msgs/Image (SENSOR_QOS), one per model camera, or
                                   <topic>/compressed sensor_msgs/CompressedImage when
                                   image_transport = 'compressed'
                instruction        std_msgs/String (INSTRUCTION_QOS)
    publishes   action_chunk       trajectory_msgs/JointTrajectory (CHUNK_QOS): header.stamp =
                                   the primary camera's image stamp, joint_names = the model's
                                   action names, point i = action i, time_from_start = i * dt
                ~/step_stats       std_msgs/String, one JSON object per chunk (provenance:
                                   stamp, episode, layers run, skipped at, verified, latency)
                /diagnostics       diagnostic_msgs/DiagnosticArray at diagnostics_rate
    services    ~/reset            std_srvs/Trigger: start a new episode

Lifecycle: configure loads the model on the chosen backend and warms it up; activate starts
the subscriptions and publishing; deactivate stops them and publishes an empty chunk (no
points), which tells the controller to hold; cleanup frees the model.

When it infers (the policy decides how many actions of each chunk run, the controller only
executes): with inference_rate = 0 (default) it infers as soon as a new primary-camera frame
is there and the previous step has finished, so the newest chunk is always from the newest
frame and a slow step never queues frames; with inference_rate > 0 it infers at that rate
from the newest frame, if a new one arrived. Camera callbacks only store the latest frame;
inference runs in its own mutually exclusive callback group (use a MultiThreadedExecutor).
The model itself lives on one dedicated thread from load to free (CUDA / TensorRT contexts
belong to the thread that made them; executor threads vary).

Episodes: every instruction message and every ~/reset call starts a new episode: the action
history (continuity ring buffer) is cleared before the next step and frames received before
are discarded. Bad input (unsupported encoding, wrong size, empty or too long instruction,
stale or out-of-order frames, non-finite model output) is logged (throttled), counted in
/diagnostics, and never stops the node; a stale frame yields no chunk, so the controller holds.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..paths import default_model_dir
from ..runtime.policy import NonFiniteOutput
from .image_conversion import ImageConversionError, msg_to_rgb
from .params import Param, declare_params, read_params
from .qos import CHUNK_QOS, INSTRUCTION_QOS, SENSOR_QOS, STATUS_QOS
from .spin import spin_node
from .stats import PolicyStats, StepRecord

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')
PRECISIONS = ('fp16', 'fp32')
EXPORT_METHODS = ('dysl', 'full')
TRANSPORTS = ('raw', 'compressed')
WARMUP_INSTRUCTION = 'pick up the red block'

PARAMS = (
    Param('model_path', '', 'torch: a model directory (vla.json + dysl.json); onnxruntime / '
          'tensorrt: an export directory (manifest.json) or a model directory holding onnx/; '
          'empty: the package\'s models/default'),
    Param('backend', 'torch', 'inference backend', choices=BACKENDS),
    Param('method', 'dysl', 'dysl (layer skipping) or full (full depth) on every backend; on '
          'torch also a baseline / ablation name of dysl_ros.runtime.methods'),
    Param('device', 'cpu', 'torch backend: torch device (cpu, cuda, cuda:0, ...)'),
    Param('ort_threads', 0, 'onnxruntime backend: intra-op threads, 0 = one per core', 0, 256),
    Param('precision', 'fp16', 'tensorrt backend: engine precision', choices=PRECISIONS),
    Param('engine_cache', '', 'tensorrt backend: engine cache directory; empty: the runner\'s '
          'default'),
    Param('build_engines', True, 'tensorrt backend: build missing or stale engines (false: '
          'refuse to configure instead)'),
    Param('warmup_steps', 3, 'policy steps run on blank frames at configure', 0, 100),
    Param('executed_actions', 1, 'actions of each chunk the robot executes before the next '
          'chunk replaces it; only those enter the continuity history (0: the model\'s stored '
          'setting)', 0, 1000),
    Param('camera_names', ['front', 'wrist'], 'model camera names, in the order of '
          'camera_topics; must be the model\'s cameras; the first is the primary camera whose '
          'frames trigger inference and stamp the chunks'),
    Param('camera_topics', ['image', 'wrist/image'], 'image topic per camera name'),
    Param('image_transport', 'raw', 'raw: sensor_msgs/Image on each topic; compressed: '
          'sensor_msgs/CompressedImage on <topic>/compressed', choices=TRANSPORTS),
    Param('image_width', 0, 'expected image width in pixels; 0 accepts any (images are '
          'resized to the model input)', 0, 8192),
    Param('image_height', 0, 'expected image height in pixels; 0 accepts any', 0, 8192),
    Param('max_image_age', 0.5, 'seconds; an older frame is stale: no chunk is produced',
          0.001, 60.0),
    Param('inference_rate', 0.0, 'Hz; 0 infers on every new primary frame once the previous '
          'step finished, > 0 infers at this rate from the newest frame', 0.0, 1000.0),
    Param('control_rate', 20.0, 'Hz of the actions in a chunk: time_from_start of point i is '
          'i / control_rate', 0.1, 1000.0),
    Param('instruction', '', 'instruction to start with; empty waits for the instruction '
          'topic'),
    Param('max_instruction_length', 256, 'longer instructions are rejected (characters)',
          1, 100000),
    Param('diagnostics_rate', 1.0, 'Hz of /diagnostics', 0.01, 100.0),
    Param('stats_window', 100, 'steps over which /diagnostics figures are computed', 1,
          100000),
    Param('log_throttle', 5.0, 'seconds between two log lines about the same problem', 0.0,
          3600.0),
    Param('autostart', False, 'configure and activate on start (main() only)'),
)


@dataclass(frozen=True)
class PolicyNodeConfig:
    """The policy node's parameters, checked together once per configure."""

    model_path: str
    backend: str
    method: str
    device: str
    ort_threads: int
    precision: str
    engine_cache: str
    build_engines: bool
    warmup_steps: int
    executed_actions: int
    camera_names: tuple[str, ...]
    camera_topics: tuple[str, ...]
    image_transport: str
    image_width: int
    image_height: int
    max_image_age: float
    inference_rate: float
    control_rate: float
    instruction: str
    max_instruction_length: int
    diagnostics_rate: float
    stats_window: int
    log_throttle: float
    autostart: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, 'camera_names', tuple(self.camera_names))
        object.__setattr__(self, 'camera_topics', tuple(self.camera_topics))
        if not self.camera_names or len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f'camera_names={list(self.camera_names)} is invalid: expected '
                             'distinct names')
        if len(self.camera_topics) != len(self.camera_names) or not all(self.camera_topics):
            raise ValueError(f'camera_topics={list(self.camera_topics)} is invalid: expected '
                             f'one topic per camera of {list(self.camera_names)}')
        if self.backend != 'torch' and self.method not in EXPORT_METHODS:
            raise ValueError(f'method={self.method!r} is invalid for backend={self.backend!r}: '
                             f'exports run {list(EXPORT_METHODS)}; baselines run on torch')

    @property
    def model_dir(self) -> Path:
        return Path(self.model_path) if self.model_path else default_model_dir()

    @property
    def dt(self) -> float:
        return 1.0 / self.control_rate


def load_policy(cfg: PolicyNodeConfig, log: Any = print) -> Any:
    """The Policy (dysl_ros.runtime.policy.Policy) the parameters ask for."""
    from ..runtime.loading import open_policy
    if not cfg.model_dir.exists():
        raise FileNotFoundError(f'model directory {cfg.model_dir} does not exist (set the '
                                'model_path parameter, or train the default model)')
    options: dict[str, Any] = {}
    if cfg.backend == 'onnxruntime':
        options = {'threads': cfg.ort_threads}
    elif cfg.backend == 'tensorrt':
        options = {'engine_cache': Path(cfg.engine_cache) if cfg.engine_cache else None,
                   'precision': cfg.precision, 'build_engines': cfg.build_engines, 'log': log}
    guidance = {'executed_actions': cfg.executed_actions} if cfg.executed_actions else None
    return open_policy(cfg.model_dir, cfg.backend, cfg.method, cfg.device, guidance,
                       **options)


@dataclass
class _Frame:
    rgb: np.ndarray
    stamp: Time
    used: bool = False


class PolicyNode(LifecycleNode):
    """Lifecycle node around a Policy; see the module docstring for its interface."""

    def __init__(self, node_name: str = 'policy_node', **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self._values = declare_params(self, PARAMS)
        self.cfg: Optional[PolicyNodeConfig] = None
        self.policy: Any = None
        self.stats = PolicyStats(int(self._values['stats_window']))
        self._lock = threading.Lock()  # frames, instruction, episode, active flag
        self._frames: dict[str, _Frame] = {}
        self._last_stamp: dict[str, Time] = {}
        self._instruction = ''
        self._episode = 0
        self._policy_episode = -1  # the episode the policy's history belongs to
        self._active = False
        self._seq = 0
        self._error_text = ''
        self._last_log: dict[str, float] = {}
        self._inference_group = MutuallyExclusiveCallbackGroup()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._subs: list[Any] = []
        self._model_thread: Optional[ThreadPoolExecutor] = None
        self._trigger: Any = None
        self._rate_timer: Any = None
        self._chunk_pub: Any = None
        self._stats_pub: Any = None
        self._reset_srv: Any = None
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', STATUS_QOS)
        self._diag_timer = self.create_timer(1.0 / float(self._values['diagnostics_rate']),
                                             self._publish_diagnostics)

    @property
    def error_text(self) -> str:
        """Why the last configure failed ('' when it did not)."""
        return self._error_text

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.cfg = PolicyNodeConfig(**read_params(self, PARAMS))
            self._model_thread = ThreadPoolExecutor(max_workers=1,
                                                    thread_name_prefix='policy_model')
            self.policy = self._model_thread.submit(self._load, self.cfg).result()
        except Exception as e:  # a bad parameter or model: say what, stay unconfigured
            self._error_text = f'configure failed: {e}'
            self.get_logger().error(self._error_text)
            self._free()
            return TransitionCallbackReturn.FAILURE
        self._error_text = ''
        self.stats = PolicyStats(self.cfg.stats_window)
        self._chunk_pub = self.create_lifecycle_publisher(JointTrajectory, 'action_chunk',
                                                          CHUNK_QOS)
        self._stats_pub = self.create_lifecycle_publisher(String, '~/step_stats', STATUS_QOS)
        self._reset_srv = self.create_service(Trigger, '~/reset', self._on_reset,
                                              callback_group=self._input_group)
        with self._lock:
            self._instruction = self.cfg.instruction.strip()
            self._episode += 1
        spec = self.policy.spec
        self.get_logger().info(
            f'configured: {self.cfg.backend} backend, method {self.cfg.method}, model '
            f'{self.cfg.model_dir}, cameras {dict(zip(self.cfg.camera_names, self._topics()))}, '
            f'chunk {spec.chunk_size} x {list(spec.action_names)}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.cfg
        msg_type = CompressedImage if cfg.image_transport == 'compressed' else Image
        for camera, topic in zip(cfg.camera_names, self._topics()):
            self._subs.append(self.create_subscription(
                msg_type, topic, lambda msg, c=camera: self._on_image(c, msg), SENSOR_QOS,
                callback_group=self._input_group))
        self._subs.append(self.create_subscription(
            String, 'instruction', self._on_instruction, INSTRUCTION_QOS,
            callback_group=self._input_group))
        if cfg.inference_rate > 0:
            self._rate_timer = self.create_timer(1.0 / cfg.inference_rate, self._infer,
                                                 callback_group=self._inference_group)
        else:
            self._trigger = self.create_guard_condition(self._infer,
                                                        callback_group=self._inference_group)
        with self._lock:
            self._active = True
            self._frames.clear()
        self.get_logger().info('active: waiting for frames' + (
            '' if self._instruction else ' and an instruction'))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        with self._lock:  # no chunk can follow the hold: chunks are published under the lock
            self._active = False
            self._chunk_pub.publish(JointTrajectory(joint_names=self._action_names()))
        self.get_logger().info('inactive: published a hold (empty chunk)')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        self.get_logger().info('cleaned up: model freed')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        with self._lock:
            self._active = False
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        with self._lock:
            self._active = False
        self._free()
        return TransitionCallbackReturn.SUCCESS

    # ---- inputs ------------------------------------------------------------------------------
    def _on_image(self, camera: str, msg: Any) -> None:
        cfg = self.cfg
        stamp = Time.from_msg(msg.header.stamp, clock_type=self.get_clock().clock_type)
        last = self._last_stamp.get(camera)  # only this callback (one group) writes it
        if last is not None and stamp <= last:
            self._complain('out_of_order', f'camera {camera!r}: frame stamped '
                           f'{_seconds(stamp):.3f} is not newer than the last one '
                           f'({_seconds(last):.3f}): dropped')
            return
        try:
            rgb = msg_to_rgb(msg)
            h, w = rgb.shape[:2]
            if (cfg.image_width and w != cfg.image_width) or \
                    (cfg.image_height and h != cfg.image_height):
                raise ImageConversionError(
                    'size', f'{w}x{h} image, expected {cfg.image_width or "any"}x'
                    f'{cfg.image_height or "any"} (image_width, image_height)')
        except ImageConversionError as e:
            self._complain(e.kind, f'camera {camera!r}: frame rejected: {e}')
            return
        with self._lock:
            old = self._frames.get(camera)
            self.stats.frame(dropped_previous=old is not None and not old.used)
            self._frames[camera] = _Frame(rgb, stamp)
            self._last_stamp[camera] = stamp
        if camera == cfg.camera_names[0] and self._trigger is not None:
            self._trigger.trigger()

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        limit = self.cfg.max_instruction_length
        if not text:
            self._complain('instruction', 'empty instruction ignored; keeping '
                           f'{self._instruction!r}')
            return
        if len(text) > limit:
            self._complain('instruction', f'instruction of {len(text)} characters ignored: '
                           f'longer than max_instruction_length={limit}')
            return
        unknown = self._unknown_words(text)
        if unknown:
            self._complain('', f'instruction words unknown to the model: {unknown}', 'warn')
        self._new_episode(text)
        self.get_logger().info(f'new episode {self._episode}: {text!r}')

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        self._new_episode(None)
        response.success = True
        response.message = f'episode {self._episode} started: action history cleared'
        return response

    def _new_episode(self, instruction: Optional[str]) -> None:
        with self._lock:
            if instruction is not None:
                self._instruction = instruction
            self._episode += 1
            self._frames.clear()  # frames of the previous episode are not observations of this
        self.stats.new_episode()

    # ---- inference ---------------------------------------------------------------------------
    def _infer(self) -> None:
        cfg, primary = self.cfg, self.cfg.camera_names[0]
        with self._lock:
            frames = dict(self._frames)
            first = frames.get(primary)
            if not self._active or first is None or first.used:
                return
            if len(frames) < len(cfg.camera_names) or not self._instruction:
                waiting = [c for c in cfg.camera_names if c not in frames]
                self._complain('', 'waiting for ' + (f'cameras {waiting}' if waiting
                                                     else 'an instruction'), 'info')
                return
            for f in frames.values():
                f.used = True
            instruction, episode = self._instruction, self._episode
        now = self.get_clock().now()
        ages = {c: (now - f.stamp).nanoseconds * 1e-9 for c, f in frames.items()}
        stale = {c: round(a, 3) for c, a in ages.items() if a > cfg.max_image_age}
        if stale:
            self._complain('stale', f'stale frames (age s) {stale} > max_image_age='
                           f'{cfg.max_image_age}: no chunk')
            return
        reset = self._policy_episode != episode
        self._policy_episode = episode
        t0 = time.perf_counter()
        try:
            chunk, step = self._model_thread.submit(
                self._step, {c: f.rgb for c, f in frames.items()}, instruction, reset).result()
        except NonFiniteOutput:
            self._non_finite()
            return
        except Exception as e:  # the node survives a failing step and says why
            self._complain('inference', f'policy step failed: {type(e).__name__}: {e}')
            return
        policy_ms = (time.perf_counter() - t0) * 1e3
        msg = self._chunk_msg(first.stamp, chunk)
        with self._lock:
            if not self._active or self._episode != episode:
                return  # deactivated or a new episode began during the step
            self._chunk_pub.publish(msg)
            c2c_ms = (self.get_clock().now() - first.stamp).nanoseconds * 1e-6
            self._seq += 1
            seq = self._seq
        self.stats.step(StepRecord(
            episode=episode, layers_run=step.layers_run, layers_guided=len(step.layer_ids),
            layers_total=step.layers_total, verified=bool(step.verified), policy_ms=policy_ms,
            camera_to_chunk_ms=c2c_ms))
        self._stats_pub.publish(String(data=json.dumps({
            'seq': seq, 'episode': episode, 'stamp': _seconds(first.stamp),
            'stamp_ns': first.stamp.nanoseconds,
            'layers_run': step.layers_run, 'layers_total': step.layers_total,
            'layer_ids': list(step.layer_ids), 'skipped_at': list(step.skipped_at),
            'verified': bool(step.verified), 'allow_points': list(step.allow_points),
            'policy_ms': policy_ms, 'camera_to_chunk_ms': c2c_ms,
            'latency_ms': dict(step.latency_ms)})))

    def _chunk_msg(self, stamp: Time, chunk: np.ndarray) -> JointTrajectory:
        msg = JointTrajectory(joint_names=self._action_names())
        msg.header.stamp = stamp.to_msg()
        dt_ns = int(round(self.cfg.dt * 1e9))
        for i, action in enumerate(np.asarray(chunk, dtype=np.float64)):  # (H, D)
            t = i * dt_ns
            msg.points.append(JointTrajectoryPoint(
                positions=action.tolist(),
                time_from_start=Duration(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000)))
        return msg

    def _non_finite(self) -> None:
        self._policy_episode = -1  # start the action history over at the next step
        self._complain('non_finite', 'non-finite values in the model output: no chunk, '
                       'action history cleared')

    # ---- helpers -----------------------------------------------------------------------------
    def _step(self, images: dict, instruction: str, reset: bool) -> tuple[np.ndarray, Any]:
        """One policy step on the model thread (reset first: a new episode)."""
        if reset:
            self.policy.reset()
        return self.policy.step(images, instruction)

    def _load(self, cfg: PolicyNodeConfig) -> Any:
        t0 = time.perf_counter()
        policy = load_policy(cfg, log=self.get_logger().info)
        cams = tuple(policy.spec.cameras)
        if set(cfg.camera_names) != set(cams):
            raise ValueError(f'camera_names={list(cfg.camera_names)} do not match the model\'s '
                             f'cameras {list(cams)} (set camera_names and camera_topics)')
        size = policy.spec.image_size
        blank = {c: np.zeros((size, size, 3), np.uint8) for c in cams}
        for _ in range(cfg.warmup_steps):
            policy.step(blank, WARMUP_INSTRUCTION)
        policy.reset()
        self.get_logger().info(f'model loaded and warmed up ({cfg.warmup_steps} steps) in '
                               f'{time.perf_counter() - t0:.1f} s')
        return policy

    def _free(self) -> None:
        self._stop_inputs()
        for pub in (self._chunk_pub, self._stats_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        if self._reset_srv is not None:
            self.destroy_service(self._reset_srv)
        self._chunk_pub = self._stats_pub = self._reset_srv = None
        if self._model_thread is not None:  # free the model on the thread that made it
            self._model_thread.submit(setattr, self, 'policy', None).result()
            self._model_thread.shutdown()
            self._model_thread = None
        self.policy = None
        self._policy_episode = -1

    def _stop_inputs(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._trigger is not None:
            self.destroy_guard_condition(self._trigger)
            self._trigger = None
        if self._rate_timer is not None:
            self.destroy_timer(self._rate_timer)
            self._rate_timer = None

    def _topics(self) -> list[str]:
        suffix = '/compressed' if self.cfg.image_transport == 'compressed' else ''
        return [t + suffix for t in self.cfg.camera_topics]

    def _action_names(self) -> list[str]:
        return list(self.policy.spec.action_names) if self.policy is not None else []

    def _unknown_words(self, text: str) -> list[str]:
        tokenizer = getattr(self.policy.spec, 'tokenizer', None) if self.policy else None
        return tokenizer.unknown_words(text) if tokenizer is not None else []

    def _complain(self, kind: str, message: str, level: str = 'warn') -> None:
        """Count an error of `kind` ('' counts nothing) and log it, at most once per
        log_throttle seconds per kind and level."""
        if kind:
            self.stats.error(kind)
        key = f'{kind}:{level}'
        now = time.monotonic()
        throttle = self.cfg.log_throttle if self.cfg is not None else 5.0
        if now - self._last_log.get(key, -1e9) < throttle:
            return
        self._last_log[key] = now
        log = {'warn': self.get_logger().warning, 'info': self.get_logger().info}[level]
        log(message)

    def _publish_diagnostics(self) -> None:
        s = self.stats.summary()
        with self._lock:
            active, episode = self._active, self._episode
        if self._error_text:
            level, text = DiagnosticStatus.ERROR, self._error_text
        elif not active:
            level, text = DiagnosticStatus.WARN, 'inactive' if self.policy else 'unconfigured'
        elif s['errors']:
            level, text = DiagnosticStatus.WARN, f'active, {s["errors"]} errors'
        else:
            level, text = DiagnosticStatus.OK, 'active'
        backend = self.cfg.backend if self.cfg is not None else self._values['backend']
        status = DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: policy', message=text,
            hardware_id=backend,
            values=[KeyValue(key=k, value=_fmt(v)) for k, v in {**s, 'episode': episode}.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def _seconds(t: Time) -> float:
    return t.nanoseconds * 1e-9


def _fmt(value: Any) -> str:
    if value is None:
        return 'n/a'
    return f'{value:.3f}' if isinstance(value, float) else str(value)


def _autostart(node: 'PolicyNode') -> None:
    """Configure and activate at start when the autostart parameter says so."""
    if node.get_parameter('autostart').value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()


def main(args: Optional[list[str]] = None) -> None:
    """Run the policy node alone (`ros2 run dysl_ros policy_node`, or python -m)."""
    spin_node(PolicyNode, args, on_start=_autostart)


if __name__ == '__main__':
    main()
