"""TensorRT engines from the ONNX units: build, cache on disk, validate (TensorRT 10 API).

One engine per unit, cached as `<cache>/<unit>.<digest>.engine` with a sidecar
`<unit>.<digest>.json` holding the key and the engine's sha256. The key (EngineKey) is
everything the plan depends on, as plain values: the unit's ONNX sha256, the TensorRT
version, the build recipe of this code (BUILD_RECIPE), the device (GPU name, compute
capability, SM count, total memory: every Orin reports 'Orin' and 8.7, so the SM count
and memory tell a Nano from an NX or an AGX) and every builder setting (BuildSettings:
precision, flags set and cleared, workspace limit, optimisation level, which layers are
kept in fp32). An engine is never used on another TensorRT, device, build recipe or
settings, or for another ONNX file. A lookup that misses says why (which key field
differs from the engines that are there); a corrupt engine (sha256 mismatch, or TensorRT
refuses to deserialise it) is rebuilt when building is allowed, and refused with a message
naming the file and the command to run otherwise. Nothing reaches the first inference
unchecked. The files themselves (EngineStore) and the key are plain Python, testable
without TensorRT.

Builds parse the ONNX bytes that were just checked against the manifest, log every input
and output, fail loudly with the parser's errors, report progress through an
IProgressMonitor, and share one persisted timing cache per TensorRT version and device.
fp16 is the default precision (I/O tensors keep the ONNX dtypes); in fp16 engines the
RMSNorm chains (square, mean, + eps, sqrt / reciprocal, the normalising product) stay in
fp32 under OBEY_PRECISION_CONSTRAINTS, since squaring a large fp16 activation overflows.

`python -m dysl_ros engines --export DIR` builds them ahead of time (on the robot: once per
JetPack / TensorRT upgrade). The device identity comes from torch.cuda, which also owns the
device buffers of the runner (runtime/tensorrt_runner.py).
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .manifest import Manifest, Unit, sha256_bytes

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
class DeviceInfo:
    """The CUDA device an engine is built for."""

    name: str
    compute_capability: str  # 'major.minor'
    multiprocessors: int  # SM count
    total_memory: int  # bytes


def device_info(device: int = 0) -> DeviceInfo:
    """The properties of CUDA device `device` that an engine depends on (via torch.cuda)."""
    import torch
    if not torch.cuda.is_available():
        raise EngineError('TensorRT engines need a CUDA GPU, and torch sees none')
    p = torch.cuda.get_device_properties(device)
    return DeviceInfo(p.name, f'{p.major}.{p.minor}', int(p.multi_processor_count),
                      int(p.total_memory))


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


@dataclass(frozen=True)
class EngineKey:
    """What an engine was built from, with and for; plain values only."""

    onnx_sha256: str
    tensorrt: str
    recipe: int
    gpu: str
    compute_capability: str
    multiprocessors: int
    total_memory: int
    precision: str
    workspace_bytes: int
    optimization_level: int
    set_flags: tuple[str, ...]
    cleared_flags: tuple[str, ...]
    fp32_layers: str

    @classmethod
    def make(cls, onnx_sha256: str, tensorrt: str, device: DeviceInfo,
             settings: BuildSettings, recipe: int = BUILD_RECIPE) -> 'EngineKey':
        """The key of an ONNX unit built by TensorRT `tensorrt` for `device` with `settings`."""
        return cls(onnx_sha256=onnx_sha256, tensorrt=tensorrt, recipe=recipe,
                   gpu=device.name, compute_capability=device.compute_capability,
                   multiprocessors=device.multiprocessors, total_memory=device.total_memory,
                   **asdict(settings))

    def fields(self) -> dict:
        """The key as stored in the sidecar JSON (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.fields(), sort_keys=True).encode())[:16]

    def differences(self, other: dict) -> list[str]:
        """'field: cached -> here' for every field where `other` (a stored key) differs."""
        return [f'{k}: {other.get(k)!r} cached, {v!r} here' for k, v in self.fields().items()
                if other.get(k) != v]


def engine_key(unit: Unit, settings: BuildSettings, device: int = 0) -> EngineKey:
    """The key of `unit` built with `settings` by this TensorRT for CUDA device `device`."""
    trt = require_tensorrt()
    return EngineKey.make(unit.sha256, trt.__version__, device_info(device), settings)


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


def _logger(log: Log) -> Any:
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


def _atomic_write(path: Path, data: bytes) -> None:
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
    """Parse one ONNX unit and build a serialised engine (the plan bytes) with `settings`."""
    trt = require_tensorrt()
    logger = _logger(log)
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
    _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    log(f'  {name}: built {settings.precision} engine in {time.perf_counter() - t0:.1f} s')
    return bytes(plan)


class EngineStore:
    """The engine files of one cache directory: `<unit>.<digest>.engine` and its sidecar
    `<unit>.<digest>.json` (key + the engine's sha256). Bytes and keys only: no TensorRT."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def paths(self, name: str, key: EngineKey) -> tuple[Path, Path]:
        stem = f'{name}.{key.digest()}'
        return self.directory / f'{stem}.engine', self.directory / f'{stem}.json'

    def _why_missing(self, name: str, key: EngineKey) -> str:
        others = []
        for meta in sorted(self.directory.glob(f'{name}.*.json')):
            try:
                others.append(key.differences(json.loads(meta.read_text()).get('key', {})))
            except (OSError, ValueError, AttributeError):
                continue
        if not others:
            return f'no engine for {name} in {self.directory}'
        return (f'the engines for {name} in {self.directory} were built for something '
                f'else ({"; ".join(others[0])})')

    def lookup(self, name: str, key: EngineKey) -> tuple[Optional[bytes], str]:
        """(plan, '') for a valid cached engine, else (None, why not)."""
        engine_path, meta_path = self.paths(name, key)
        if not engine_path.is_file() or not meta_path.is_file():
            return None, self._why_missing(name, key)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            return None, f'{meta_path}: unreadable ({e})'
        if not isinstance(meta, dict) or not isinstance(meta.get('key'), dict):
            return None, f'{meta_path}: unreadable (not an engine sidecar)'
        diff = key.differences(meta['key'])
        if diff:
            return None, f'{meta_path}: key mismatch ({"; ".join(diff)})'
        plan = engine_path.read_bytes()
        if sha256_bytes(plan) != meta.get('engine_sha256'):
            return None, f'{engine_path}: corrupt (sha256 does not match {meta_path.name})'
        return plan, ''

    def save(self, name: str, key: EngineKey, plan: bytes) -> Path:
        """Store `plan` under `key`; the engine's path."""
        engine_path, meta_path = self.paths(name, key)
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(engine_path, plan)
        _atomic_write(meta_path, (json.dumps({'key': key.fields(), 'unit': name,
                                              'engine_sha256': sha256_bytes(plan)},
                                             indent=2) + '\n').encode())
        return engine_path

    def rebuild(self, name: str, key: EngineKey, why: str,
                build: Optional[Callable[[], bytes]], refusal: str, log: Log = print
                ) -> bytes:
        """A new plan from build(), stored under `key`; without build, EngineError(why)."""
        if build is None:
            raise EngineError(f'{why}. {refusal}')
        log(f'{name}: {why}; building')
        plan = build()
        self.save(name, key, plan)
        return plan

    def plan(self, name: str, key: EngineKey, build: Optional[Callable[[], bytes]],
             refusal: str, log: Log = print) -> tuple[bytes, bool]:
        """(plan, built): the cached plan when its key and sha256 match, else a rebuilt one
        (build=None: EngineError saying why, then `refusal`)."""
        plan, why = self.lookup(name, key)
        if plan is not None:
            return plan, False
        return self.rebuild(name, key, why, build, refusal, log), True


class EngineCache:
    """Engines of one export on this GPU, in `directory` (default: <export>/engines)."""

    def __init__(self, manifest: Manifest, directory: Optional[Path] = None,
                 precision: str = 'fp16', device: int = 0,
                 workspace_gb: float = DEFAULT_WORKSPACE_GB, log: Log = print,
                 optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL):
        self.trt = require_tensorrt()
        self.settings = BuildSettings.for_precision(precision, workspace_gb, optimization_level)
        self.manifest = manifest
        self.directory = Path(directory) if directory else manifest.directory / 'engines'
        self.store = EngineStore(self.directory)
        self.precision, self.device, self.workspace_gb, self.log = (precision, device,
                                                                    workspace_gb, log)
        self.device_info = device_info(device)
        d = self.device_info
        tag = (f'{self.trt.__version__}-{d.name}-{d.compute_capability}-{d.multiprocessors}sm'
               .replace(' ', '_').replace('/', '_'))
        self.timing_cache = self.directory / f'timing-{tag}.cache'
        self.builds = 0  # engines built by this instance

    def key(self, unit: Unit) -> EngineKey:
        return EngineKey.make(unit.sha256, self.trt.__version__, self.device_info, self.settings)

    def paths(self, unit: Unit, key: EngineKey) -> tuple[Path, Path]:
        return self.store.paths(unit.name, key)

    def lookup(self, unit: Unit, key: EngineKey) -> tuple[Optional[bytes], str]:
        """(plan, '') for a valid cached engine, else (None, why not)."""
        return self.store.lookup(unit.name, key)

    def engine(self, runtime: Any, unit: Unit, build: bool = True) -> tuple[Any, Path]:
        """A deserialised ICudaEngine for `unit` (cached, or built when allowed)."""
        onnx_bytes = self.manifest.read(unit)  # the ONNX file still matches its sha256
        key = self.key(unit)
        engine_path, _ = self.paths(unit, key)
        refusal = (f'Build the engines on this device first: python -m dysl_ros engines '
                   f'--export {self.manifest.directory} --cache {self.directory} '
                   f'--precision {self.precision}')
        builder = (lambda: self._build(onnx_bytes, unit.name)) if build else None
        plan, built = self.store.plan(unit.name, key, builder, refusal, self.log)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None and not built:
            why = f'{engine_path}: TensorRT cannot deserialise it (corrupt or incompatible)'
            plan = self.store.rebuild(unit.name, key, why, builder, refusal, self.log)
            engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f'{engine_path}: TensorRT cannot deserialise the engine it just '
                              'built')
        return engine, engine_path

    def _build(self, onnx_bytes: bytes, name: str) -> bytes:
        plan = build_engine(onnx_bytes, name, self.settings, self.timing_cache, self.log)
        self.builds += 1
        return plan


# -- command line ------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--export', type=Path, required=True,
                        help='export directory (manifest.json + ONNX units)')
    parser.add_argument('--cache', type=Path, default=None,
                        help='engine cache directory (default: <export>/engines)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp16',
                        help='engine precision (default fp16; RMSNorm layers stay fp32)')
    parser.add_argument('--workspace-gb', type=float, default=DEFAULT_WORKSPACE_GB,
                        help='builder workspace limit in GiB (default 2; lower it on small '
                             'Jetsons if builds run out of memory)')
    parser.add_argument('--optimization-level', type=int, default=DEFAULT_OPTIMIZATION_LEVEL,
                        choices=range(6), metavar='{0-5}',
                        help='builder optimisation level (default 3, TensorRT\'s)')
    parser.add_argument('--device', type=int, default=0, help='CUDA device index (default 0)')


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    manifest = Manifest.load(args.export)
    cache = EngineCache(manifest, args.cache, args.precision, args.device, args.workspace_gb,
                        log=tqdm.write, optimization_level=args.optimization_level)
    trt = cache.trt
    logger = _logger(tqdm.write)  # must outlive the runtime
    runtime = trt.Runtime(logger)
    d = cache.device_info
    print(f'TensorRT {trt.__version__} on {d.name} (compute {d.compute_capability}, '
          f'{d.multiprocessors} SMs, {d.total_memory / (1 << 30):.1f} GiB), '
          f'{args.precision}, optimisation level {args.optimization_level}, '
          f'cache {cache.directory}')
    t0 = time.perf_counter()
    for unit in tqdm(manifest.units, desc='engines', unit='unit'):
        cache.engine(runtime, unit, build=True)
    print(f'{len(manifest.units)} engines ready ({cache.builds} built) in '
          f'{time.perf_counter() - t0:.1f} s; timing cache {cache.timing_cache}')
    return 0
