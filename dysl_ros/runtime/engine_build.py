"""TensorRT engines from ONNX graphs: the build settings and the build (TensorRT 10 API).

Builds parse the ONNX bytes that were just checked against the manifest, log every input
and output, fail loudly with the parser's errors, report progress through an
IProgressMonitor, and share one persisted timing cache per TensorRT version and device.
fp16 is the default precision (I/O tensors keep the ONNX dtypes); in fp16 engines the
RMSNorm chains (square, mean, + eps, sqrt / reciprocal, the normalising product) stay in
fp32 under OBEY_PRECISION_CONSTRAINTS, since squaring a large fp16 activation overflows.
A segment graph's `If` nodes become IIfConditionals whose branch layers are layers of the
network too: its adapters' and controllers' RMSNorms are found and pinned there alike.

The engine cache (runtime/engine_cache.py) builds through build_engine when an engine is
missing or stale; `python -m dysl_ros engines` (export/tensorrt_build.py) fills it ahead of
time.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

PRECISIONS = ('fp16', 'fp32')
# Bump when build_engine changes what it builds from the same ONNX and settings: engines of
# an older recipe are then rebuilt, never reused.
BUILD_RECIPE = 2
DEFAULT_WORKSPACE_GB = 2.0
DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's default (0-5: higher searches longer)
FP32_LAYERS = ('', 'norms')  # which layers an engine keeps in fp32 ('norms': RMSNorm chains)
Log = Callable[[str], None]


class EngineError(RuntimeError):
    """An engine is missing, stale, corrupt or cannot be built."""


def require_tensorrt() -> Any:
    """The tensorrt module (10.x), or an ImportError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(f'the tensorrt backend needs TensorRT 10 (import tensorrt failed: '
                          f'{e}); on Jetson it comes with JetPack 6') from None
    major = int(trt.__version__.split('.')[0])
    if major < 10:
        raise ImportError(f'TensorRT {trt.__version__} is too old: the runner uses the '
                          'TensorRT 10 name-based API')
    return trt


@dataclass(frozen=True)
class BuildSettings:
    """Everything build_engine sets on the builder config, as plain values.

    Args:
        precision: 'fp16' or 'fp32' (what the flags below amount to).
        workspace_bytes: the builder's workspace memory pool limit.
        optimization_level: builder optimisation level, 0-5.
        set_flags: BuilderFlag names set on the config.
        cleared_flags: BuilderFlag names cleared (defaults TensorRT turns on, e.g. TF32).
        fp32_layers: '' or 'norms' (RMSNorm chains pinned to fp32; see norm_layers).
    """

    precision: str
    workspace_bytes: int
    optimization_level: int
    set_flags: tuple[str, ...]
    cleared_flags: tuple[str, ...]
    fp32_layers: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision={self.precision!r} is invalid: expected one of '
                             f'{PRECISIONS}')
        if self.workspace_bytes <= 0:
            raise ValueError(f'workspace={self.workspace_bytes} bytes is invalid: expected > 0')
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f'optimization_level={self.optimization_level} is invalid: '
                             'expected 0-5')
        if self.fp32_layers not in FP32_LAYERS:
            raise ValueError(f'fp32_layers={self.fp32_layers!r} is invalid: expected one of '
                             f'{FP32_LAYERS}')
        object.__setattr__(self, 'set_flags', tuple(self.set_flags))
        object.__setattr__(self, 'cleared_flags', tuple(self.cleared_flags))

    @classmethod
    def for_precision(cls, precision: str, workspace_gb: float = DEFAULT_WORKSPACE_GB,
                      optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
                      ) -> 'BuildSettings':
        """The settings engines of `precision` are built with."""
        if precision not in PRECISIONS:
            raise ValueError(f'precision={precision!r} is invalid: expected one of '
                             f'{PRECISIONS}')
        if not workspace_gb > 0:
            raise ValueError(f'workspace_gb={workspace_gb!r} is invalid: expected > 0')
        workspace = int(workspace_gb * (1 << 30))
        if precision == 'fp16':  # the norms stay fp32, and TensorRT must obey that
            return cls('fp16', workspace, optimization_level,
                       ('FP16', 'OBEY_PRECISION_CONSTRAINTS'), (), 'norms')
        # fp32 means fp32: TF32 tensor-core math is on by default
        return cls('fp32', workspace, optimization_level, (), ('TF32',), '')


# -- layers kept in fp32 -------------------------------------------------------------------

@dataclass(frozen=True)
class LayerView:
    """What norm_layers reads of one network layer (TensorRT names, no TensorRT objects)."""

    name: str
    kind: str  # LayerType name: 'ELEMENTWISE', 'REDUCE', 'UNARY', ...
    op: str  # its ElementWiseOperation / ReduceOperation / UnaryOperation name, else ''
    inputs: tuple[str, ...]  # tensor names
    outputs: tuple[str, ...]


# Steps from the mean of squares to the scale: + eps, sqrt, 1 / ., reciprocal, ^ -0.5.
_SCALE_STEPS = {('ELEMENTWISE', 'SUM'), ('ELEMENTWISE', 'POW'), ('ELEMENTWISE', 'DIV'),
                ('UNARY', 'SQRT'), ('UNARY', 'RECIP')}


def norm_layers(layers: Sequence[LayerView]) -> list[int]:
    """Indices of the layers of every RMSNorm chain (and of a decomposed LayerNorm's
    variance): x^2 (POW, or x * x) -> mean over the last axis (REDUCE AVG) -> steps of
    _SCALE_STEPS -> x * scale (PROD) or x / scale (DIV). A chain that does not end by
    normalising the squared tensor x is left alone."""
    producer = {t: i for i, layer in enumerate(layers) for t in layer.outputs}
    consumers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for t in layer.inputs:
            consumers.setdefault(t, []).append(i)
    found: set[int] = set()
    for i, mean in enumerate(layers):
        if (mean.kind, mean.op) != ('REDUCE', 'AVG') or not mean.inputs or \
                mean.inputs[0] not in producer:
            continue
        sq_index = producer[mean.inputs[0]]
        sq = layers[sq_index]
        squares = (sq.kind == 'ELEMENTWISE' and
                   (sq.op == 'POW' or (sq.op == 'PROD' and len(set(sq.inputs)) == 1)))
        if not squares:
            continue
        x = sq.inputs[0]
        chain, tensors = [sq_index, i], mean.outputs
        for _ in range(8):
            nxt = [c for t in tensors for c in consumers.get(t, [])]
            if len(nxt) != 1:
                break
            step = layers[nxt[0]]
            chain.append(nxt[0])
            if ((step.kind, step.op) == ('ELEMENTWISE', 'PROD') and x in step.inputs) or \
                    ((step.kind, step.op) == ('ELEMENTWISE', 'DIV') and step.inputs[0] == x):
                found.update(chain)  # x * rsqrt(mean(x^2) + eps), or x / sqrt(...)
                break
            if (step.kind, step.op) not in _SCALE_STEPS:
                break
            tensors = step.outputs
    return sorted(found)


def layer_views(trt: Any, network: Any) -> list[LayerView]:
    """The layers of a parsed INetworkDefinition as LayerViews."""
    typed = {trt.LayerType.ELEMENTWISE: trt.IElementWiseLayer,
             trt.LayerType.REDUCE: trt.IReduceLayer, trt.LayerType.UNARY: trt.IUnaryLayer}
    views = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        op = ''
        if layer.type in typed:
            layer.__class__ = typed[layer.type]  # get_layer returns the base ILayer
            op = layer.op.name
        inputs = [layer.get_input(k) for k in range(layer.num_inputs)]
        views.append(LayerView(layer.name, layer.type.name, op,
                               tuple(t.name for t in inputs if t is not None),
                               tuple(layer.get_output(k).name
                                     for k in range(layer.num_outputs))))
    return views


def keep_in_fp32(trt: Any, network: Any, indices: Sequence[int]) -> list[str]:
    """Pin layers (their math and outputs) to fp32; their names."""
    names = []
    for i in indices:
        layer = network.get_layer(i)
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
        names.append(layer.name)
    return names


def trt_logger(log: Log) -> Any:
    """A TensorRT ILogger that passes messages at WARNING and above to `log`."""
    trt = require_tensorrt()

    class Logger(trt.ILogger):
        """TensorRT messages at WARNING and above go to `log`."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                log(f'[TensorRT {severity.name}] {msg}')

    return Logger()


def _monitor(log: Log, name: str) -> Any:
    trt = require_tensorrt()

    class Monitor(trt.IProgressMonitor):
        """Logs each top-level build phase with its duration (TensorRT calls from threads)."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._start: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int
                        ) -> None:
            with self._lock:
                self._start[phase_name] = time.perf_counter()
            if parent_phase is None:
                log(f'  {name}: {phase_name} ({num_steps} steps)')

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                t0 = self._start.pop(phase_name, None)
            if t0 is not None and time.perf_counter() - t0 > 5.0:
                log(f'  {name}: {phase_name} done in {time.perf_counter() - t0:.1f} s')

    return Monitor()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file: readers never see half a file."""
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)


def apply_settings(trt: Any, config: Any, settings: BuildSettings) -> None:
    """Set `settings` on an IBuilderConfig: everything the engine key says, nothing else."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    for flag in settings.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in settings.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))


def build_engine(onnx_bytes: bytes, name: str, settings: BuildSettings, timing_cache: Path,
                 log: Log = print) -> bytes:
    """Parse one ONNX graph and build a serialised engine (the plan bytes) with `settings`."""
    trt = require_tensorrt()
    logger = trt_logger(log)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f'{name}: TensorRT cannot parse the ONNX graph:\n  '
                          + '\n  '.join(errors))
    for i in range(network.num_inputs):
        t = network.get_input(i)
        log(f'  {name}: input  {t.name} {tuple(t.shape)} {t.dtype.name}')
    for i in range(network.num_outputs):
        t = network.get_output(i)
        log(f'  {name}: output {t.name} {tuple(t.shape)} {t.dtype.name}')
    if settings.fp32_layers == 'norms':
        pinned = keep_in_fp32(trt, network, norm_layers(layer_views(trt, network)))
        if pinned:
            log(f'  {name}: {len(pinned)} norm layers kept in fp32')
    config = builder.create_builder_config()
    apply_settings(trt, config, settings)
    data = timing_cache.read_bytes() if timing_cache.is_file() else b''
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log(f'{timing_cache}: unreadable timing cache, starting a new one')
        cache = config.create_timing_cache(b'')
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _monitor(log, name)  # referenced until the build returns
    config.progress_monitor = monitor
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f'{name}: TensorRT failed to build an engine (see the messages above)')
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    log(f'  {name}: built {settings.precision} engine in {time.perf_counter() - t0:.1f} s')
    return bytes(plan)
