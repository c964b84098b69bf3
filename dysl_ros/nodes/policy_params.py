"""The policy node's parameters: the PARAMS table (what `ros2 param describe` shows; defaults
as config/policy.yaml), PolicyNodeConfig that checks them together at configure, and the
policy they load. The node (dysl_ros.nodes.policy_node) only reads them.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..paths import default_model_dir
from ..runtime.budget import LatencyBudget
from ..runtime.engine_build import PRECISIONS
from ..runtime.loading import BACKENDS, EXPORT_METHODS, PolicyOptions, open_policy
from ..runtime.messages import ImageConversionError
from ..runtime.schedule import MODES as SCHEDULES, InferenceSchedule
from ..runtime.shadow import ShadowCheck
from .params import Param
from .qos import CAMERA_QOS, SENSOR_QOS

TRANSPORTS = ('raw', 'compressed')
CAMERA_QOS_CHOICES = {'reliable': CAMERA_QOS, 'best_effort': SENSOR_QOS}
WARMUP_INSTRUCTION = 'pick up the red block'


def _directory_problem(path: str) -> Optional[str]:
    return None if not path or Path(path).is_dir() else 'the directory does not exist'


def _torch_device_problem(device: str) -> Optional[str]:
    """Why `device` is not a usable torch device here ('cpu', 'cuda', 'cuda:N')."""
    if device == 'cpu':
        return None
    match = re.fullmatch(r'cuda(?::(\d+))?', device)
    if match is None:
        return "expected 'cpu', 'cuda' or 'cuda:N'"
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(match.group(1) or 0) >= count:
        return f'this machine has {count} CUDA devices'
    return None


PARAMS = (
    Param('model_path', '', 'torch: a model directory (vla.json + dysl.json); onnxruntime / '
          'tensorrt: an export directory (manifest.json) or a model directory holding onnx/; '
          'empty: the package\'s models/default', check=_directory_problem),
    Param('backend', 'torch', 'inference backend', choices=BACKENDS),
    Param('method', 'dysl', 'dysl (layer skipping) or full (full depth) on every backend; on '
          'torch also a baseline / ablation name of dysl_ros.runtime.methods'),
    Param('device', 'cpu', 'torch backend: torch device (cpu, cuda, cuda:0, ...)',
          check=_torch_device_problem),
    Param('torch_threads', 1, 'torch backend: intra-op CPU threads, 0 = torch\'s default (one '
          'per core); 1 leaves the other cores to ROS and the cameras (measured: two OpenMP '
          'threads on 2 cores stretched p99 steps from 16 to 900 ms)', 0, 256),
    Param('ort_threads', 0, 'onnxruntime backend: intra-op threads, 0 = one per core', 0, 256),
    Param('precision', 'fp16', 'tensorrt backend: engine precision', choices=PRECISIONS),
    Param('engine_cache', '', 'tensorrt backend: engine cache directory; empty: the runner\'s '
          'default'),
    Param('build_engines', True, 'tensorrt backend: build missing or stale engines (false: '
          'refuse to configure instead)'),
    Param('warmup_steps', 3, 'policy steps run on blank frames at configure', 0, 100),
    Param('executed_actions', 1, 'actions of each chunk the robot executes before the next '
          'chunk replaces it; only those enter the continuity history (0: the model\'s stored '
          'setting); schedules sync and async time the next step by them', 0, 1000),
    Param('camera_names', ['front', 'wrist'], 'model camera names, in the order of '
          'camera_topics; must be the model\'s cameras; the first is the primary camera whose '
          'frames trigger inference and stamp the chunks'),
    Param('camera_topics', ['image', 'wrist/image'], 'image topic per camera name'),
    Param('image_transport', 'raw', 'raw: sensor_msgs/Image on each topic; compressed: '
          'sensor_msgs/CompressedImage on <topic>/compressed', choices=TRANSPORTS),
    Param('camera_qos', 'reliable', 'reliable: depth-1 reliable camera subscriptions (large '
          'frames arrive across processes; matches reliable publishers only); best_effort: '
          'matches every publisher, but FastDDS loses most frames over ~0.5 MB',
          choices=tuple(CAMERA_QOS_CHOICES)),
    Param('image_width', 0, 'expected image width in pixels; 0 accepts any (images are '
          'resized to the model input)', 0, 8192),
    Param('image_height', 0, 'expected image height in pixels; 0 accepts any', 0, 8192),
    Param('max_image_age', 0.5, 'seconds; an older frame is stale: no chunk is produced',
          0.001, 60.0),
    Param('max_camera_skew', 0.02, 'seconds; frames of the cameras stamped this close are of '
          'one moment: after a primary frame the step waits this long at most for the other '
          'cameras\' frames of its moment, then steps on the newest it has', 0.0, 1.0),
    Param('max_future_stamp', 0.25, 'seconds; a frame stamped further ahead of this node\'s '
          'clock is refused (its sender\'s clock is wrong)', 0.0, 60.0),
    Param('inference_rate', 0.0, 'Hz (schedule frame); 0 infers on every new primary frame '
          'once the previous step finished, > 0 infers at this rate from the newest frame',
          0.0, 1000.0),
    Param('schedule', 'frame', 'when to infer. frame: on new frames as inference_rate says; '
          'sync: the robot waits for each chunk, which holds its first executed_actions actions '
          'only, and the next step is due executed_actions control periods after a chunk is '
          'published, on a frame stamped then or later; async: the '
          'next step runs while the chunk executes, due at its observation stamp + '
          'executed_actions periods - the camera-to-chunk p95 (last stats_window chunks) - '
          'schedule_margin, on the newest frame. sync and async need executed_actions >= 1 '
          'and inference_rate 0; every episode\'s first step is due at once',
          choices=SCHEDULES),
    Param('schedule_margin', 0.05, 'seconds (schedule async): how long before the current '
          'chunk\'s executed_actions run out the next chunk should land, beyond the latency '
          'p95; about one control period absorbs the jitter', 0.0, 10.0),
    Param('prefix_history', False, 'schedule async: the continuity history takes from each '
          'chunk the actions the controller runs, from index floor(p95 / dt) (the ones '
          'elapsed during the step are dropped) to ceil((executed_actions * dt - '
          'schedule_margin) / dt) (where the next chunk takes over), instead of the first '
          'executed_actions; methods without guidance ignore it'),
    Param('extra_latency_ms', 0.0, 'ms slept by every step before its chunk is published, '
          'counted in the latencies reported: a benchmarking knob that stands in for a '
          'bigger model or a slower computer (0: off)', 0.0, 60000.0),
    Param('control_rate', 20.0, 'Hz of the actions in a chunk: time_from_start of point i is '
          'i / control_rate', 0.1, 1000.0),
    Param('latency_budget_ms', 0.0, 'ms; 0 = off. The policy step p95 to hold: while steps '
          'run over it the controllers\' threshold comes down (more skipping), by 0.3 at most '
          'and never on a step whose guidance protects a continuity drop; /diagnostics says '
          'WARN when it still cannot be met. Needs a skipping method (dysl)', 0.0, 60000.0),
    Param('shadow_every', 0, 'steps; 0 = off. Every n-th guided step\'s observation also runs '
          'at full depth after its chunk is published (delaying the next step, not the '
          'chunk); the chunk drift (normalised L1: mean |a - b| / action std) goes to '
          '~/step_stats and /diagnostics. Needs a skipping method (dysl)', 0, 1000000),
    Param('shadow_drift_threshold', 0.1, 'normalised L1 chunk drift above which the policy '
          'runs at full depth for shadow_fallback_steps steps (shadow_every > 0)', 0.0, 1e6),
    Param('shadow_fallback_steps', 10, 'full-depth steps after a shadow check drifted over '
          'shadow_drift_threshold', 1, 1000000),
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
    torch_threads: int
    ort_threads: int
    precision: str
    engine_cache: str
    build_engines: bool
    warmup_steps: int
    executed_actions: int
    camera_names: tuple[str, ...]
    camera_topics: tuple[str, ...]
    image_transport: str
    camera_qos: str
    image_width: int
    image_height: int
    max_image_age: float
    max_camera_skew: float
    max_future_stamp: float
    inference_rate: float
    schedule: str
    schedule_margin: float
    prefix_history: bool
    extra_latency_ms: float
    control_rate: float
    latency_budget_ms: float
    shadow_every: int
    shadow_drift_threshold: float
    shadow_fallback_steps: int
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
        if self.schedule != 'frame' and (self.executed_actions < 1 or self.inference_rate):
            raise ValueError(f'schedule={self.schedule!r} needs executed_actions >= 1 (the '
                             'actions run per chunk time the next step) and inference_rate 0, '
                             f'got executed_actions={self.executed_actions}, inference_rate='
                             f'{self.inference_rate} (set them, or schedule to frame)')
        if self.prefix_history and self.schedule != 'async':
            raise ValueError(f'prefix_history=True needs schedule=\'async\', got schedule='
                             f'{self.schedule!r} (set schedule to async, or prefix_history to '
                             'false)')

    @property
    def model_dir(self) -> Path:
        return Path(self.model_path) if self.model_path else default_model_dir()

    @property
    def dt(self) -> float:
        return 1.0 / self.control_rate

    @property
    def subscribed_topics(self) -> list[str]:
        """The topic of each camera, with the image transport's suffix."""
        suffix = '/compressed' if self.image_transport == 'compressed' else ''
        return [t + suffix for t in self.camera_topics]

    def inference_schedule(self) -> InferenceSchedule:
        """The schedule these parameters ask for (dysl_ros.runtime.schedule)."""
        return InferenceSchedule(self.schedule, self.executed_actions, self.dt,
                                 self.schedule_margin, self.stats_window)

    def check_size(self, rgb: np.ndarray) -> np.ndarray:
        """`rgb` itself if it is image_width x image_height (0: any); ImageConversionError
        ('size') otherwise."""
        h, w = rgb.shape[:2]
        if (self.image_width and w != self.image_width) or \
                (self.image_height and h != self.image_height):
            raise ImageConversionError(
                'size', f'{w}x{h} image, expected {self.image_width or "any"}x'
                f'{self.image_height or "any"} (image_width, image_height)')
        return rgb

    def policy_options(self, log: Any = print) -> PolicyOptions:
        """What open_policy reads of these parameters (each backend its own)."""
        return PolicyOptions(
            device=self.device, threads=self.ort_threads,
            engine_cache=Path(self.engine_cache) if self.engine_cache else None,
            precision=self.precision, build_engines=self.build_engines, log=log,
            guidance={'executed_actions': self.executed_actions} if self.executed_actions
            else None)


def load_policy(cfg: PolicyNodeConfig, log: Any = print) -> Any:
    """The Policy (dysl_ros.runtime.policy.Policy) the parameters ask for."""
    if not cfg.model_dir.exists():
        raise FileNotFoundError(f'model directory {cfg.model_dir} does not exist (set the '
                                'model_path parameter, or train the default model)')
    return open_policy(cfg.model_dir, cfg.backend, cfg.method, cfg.policy_options(log))


def configure_policy(cfg: PolicyNodeConfig, log: Any = print) -> Any:
    """What configure runs on the model thread: torch_threads, load_policy, a check of the
    model's cameras against camera_names, warmup_steps steps on blank frames, a reset, then
    the latency budget (after the warmup, whose first steps are slow) and the shadow check."""
    t0 = time.perf_counter()
    if cfg.backend == 'torch' and cfg.torch_threads:
        import torch
        torch.set_num_threads(cfg.torch_threads)  # process-wide
    policy = load_policy(cfg, log)
    cams = tuple(policy.spec.cameras)
    if set(cfg.camera_names) != set(cams):
        raise ValueError(f'camera_names={list(cfg.camera_names)} do not match the model\'s '
                         f'cameras {list(cams)} (set camera_names and camera_topics)')
    size = policy.spec.image_size
    blank = {c: np.zeros((size, size, 3), np.uint8) for c in cams}
    for _ in range(cfg.warmup_steps):
        policy.step(blank, WARMUP_INSTRUCTION)
    policy.reset()
    if cfg.latency_budget_ms:
        if not getattr(policy, 'skipping', False):
            raise ValueError(f'latency_budget_ms={cfg.latency_budget_ms} needs a skipping '
                             f'method: method={cfg.method!r} has no threshold to move (set '
                             'method to dysl, or latency_budget_ms to 0)')
        policy.budget = LatencyBudget(cfg.latency_budget_ms, window=cfg.stats_window)
    if cfg.shadow_every:
        if not getattr(policy, 'skipping', False) or not hasattr(policy, 'shadow_pass'):
            raise ValueError(f'shadow_every={cfg.shadow_every} needs a skipping method: '
                             f'method={cfg.method!r} already runs at full depth (set method to '
                             'dysl, or shadow_every to 0)')
        policy.shadow = ShadowCheck(cfg.shadow_every, cfg.shadow_drift_threshold,
                                    cfg.shadow_fallback_steps)
    log(f'model loaded and warmed up ({cfg.warmup_steps} steps) in '
        f'{time.perf_counter() - t0:.1f} s')
    return policy
