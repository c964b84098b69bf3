"""TensorRT engines from the ONNX units: build, cache on disk, validate (TensorRT 10 API).

One engine per unit, cached as `<cache>/<unit>.<digest>.engine` with a sidecar
`<unit>.<digest>.json` holding the key and the engine's sha256. The key is the unit's ONNX
sha256 + TensorRT version + GPU name + compute capability + precision, so an engine is never
used on another TensorRT, another GPU or for another ONNX file. A lookup that misses says
why (which key field differs from the engines that are there); a corrupt engine (sha256
mismatch, or TensorRT refuses to deserialise it) is rebuilt when building is allowed, and
refused with a message naming the file and the command to run otherwise. Nothing reaches
the first inference unchecked.

Builds parse the ONNX bytes that were just checked against the manifest, log every input
and output, fail loudly with the parser's errors, report progress through an
IProgressMonitor, and share one persisted timing cache per TensorRT version and GPU.
fp16 is the default precision (I/O tensors keep the ONNX dtypes).

`python -m dysl_ros engines --export DIR` builds them ahead of time (on the robot: once per
JetPack / TensorRT upgrade). The GPU identity comes from torch.cuda, which also owns the
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
from typing import Any, Callable, Optional

from .manifest import Manifest, Unit, sha256_bytes

PRECISIONS = ('fp16', 'fp32')
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
class EngineKey:
    """What an engine was built from and for."""

    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str

    def digest(self) -> str:
        return sha256_bytes(json.dumps(asdict(self), sort_keys=True).encode())[:16]

    def differences(self, other: dict) -> list[str]:
        """'field: cached -> here' for every field where `other` (a stored key) differs."""
        return [f'{k}: {other.get(k)!r} cached, {v!r} here' for k, v in asdict(self).items()
                if other.get(k) != v]


def device_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of a CUDA device."""
    import torch
    if not torch.cuda.is_available():
        raise EngineError('TensorRT engines need a CUDA GPU, and torch sees none')
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f'{major}.{minor}'


def engine_key(unit: Unit, precision: str, device: int = 0) -> EngineKey:
    trt = require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f'precision={precision!r} is invalid: expected one of {PRECISIONS}')
    gpu, cc = device_identity(device)
    return EngineKey(unit.sha256, trt.__version__, gpu, cc, precision)


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


def build_engine(onnx_bytes: bytes, name: str, precision: str, timing_cache: Path,
                 workspace_gb: float = 2.0, log: Log = print) -> bytes:
    """Parse one ONNX unit and build a serialised engine (the plan bytes)."""
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
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == 'fp16':
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # fp32 means fp32: TF32 tensor-core math is on by default
        config.clear_flag(trt.BuilderFlag.TF32)
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
    log(f'  {name}: built {precision} engine in {time.perf_counter() - t0:.1f} s')
    return bytes(plan)


class EngineCache:
    """Engines of one export on this GPU, in `directory` (default: <export>/engines)."""

    def __init__(self, manifest: Manifest, directory: Optional[Path] = None,
                 precision: str = 'fp16', device: int = 0, workspace_gb: float = 2.0,
                 log: Log = print):
        self.trt = require_tensorrt()
        if precision not in PRECISIONS:
            raise ValueError(f'precision={precision!r} is invalid: expected one of {PRECISIONS}')
        self.manifest = manifest
        self.directory = Path(directory) if directory else manifest.directory / 'engines'
        self.precision, self.device, self.workspace_gb, self.log = (precision, device,
                                                                    workspace_gb, log)
        gpu, cc = device_identity(device)
        tag = f'{self.trt.__version__}-{gpu}-{cc}'.replace(' ', '_').replace('/', '_')
        self.timing_cache = self.directory / f'timing-{tag}.cache'
        self.builds = 0  # engines built by this instance

    def paths(self, unit: Unit, key: EngineKey) -> tuple[Path, Path]:
        stem = f'{unit.name}.{key.digest()}'
        return self.directory / f'{stem}.engine', self.directory / f'{stem}.json'

    def _why_missing(self, unit: Unit, key: EngineKey) -> str:
        others = []
        for meta in sorted(self.directory.glob(f'{unit.name}.*.json')):
            try:
                others.append(key.differences(json.loads(meta.read_text()).get('key', {})))
            except (OSError, ValueError, AttributeError):
                continue
        if not others:
            return f'no engine for {unit.name} in {self.directory}'
        return (f'the engines for {unit.name} in {self.directory} were built for something '
                f'else ({"; ".join(others[0])})')

    def lookup(self, unit: Unit, key: EngineKey) -> tuple[Optional[bytes], str]:
        """(plan, '') for a valid cached engine, else (None, why not)."""
        engine_path, meta_path = self.paths(unit, key)
        if not engine_path.is_file() or not meta_path.is_file():
            return None, self._why_missing(unit, key)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            return None, f'{meta_path}: unreadable ({e})'
        diff = key.differences(meta.get('key', {}))
        if diff:
            return None, f'{meta_path}: key mismatch ({"; ".join(diff)})'
        plan = engine_path.read_bytes()
        if sha256_bytes(plan) != meta.get('engine_sha256'):
            return None, f'{engine_path}: corrupt (sha256 does not match {meta_path.name})'
        return plan, ''

    def engine(self, runtime: Any, unit: Unit, build: bool = True) -> tuple[Any, Path]:
        """A deserialised ICudaEngine for `unit` (cached, or built when allowed)."""
        onnx_bytes = self.manifest.read(unit)  # the ONNX file still matches its sha256
        key = engine_key(unit, self.precision, self.device)
        engine_path, meta_path = self.paths(unit, key)
        plan, why = self.lookup(unit, key)
        if plan is not None:
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is not None:
                return engine, engine_path
            why = f'{engine_path}: TensorRT cannot deserialise it (corrupt or incompatible)'
        if not build:
            raise EngineError(f'{why}. Build the engines on this device first: python -m '
                              f'dysl_ros engines --export {self.manifest.directory} '
                              f'--cache {self.directory} --precision {self.precision}')
        self.log(f'{unit.name}: {why}; building')
        plan = build_engine(onnx_bytes, unit.name, self.precision, self.timing_cache,
                            self.workspace_gb, self.log)
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(engine_path, plan)
        meta_path.write_text(json.dumps({'key': asdict(key), 'unit': unit.name,
                                         'engine_sha256': sha256_bytes(plan)}, indent=2) + '\n')
        self.builds += 1
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f'{engine_path}: TensorRT cannot deserialise the engine it just '
                              'built')
        return engine, engine_path


# -- command line ------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--export', type=Path, required=True,
                        help='export directory (manifest.json + ONNX units)')
    parser.add_argument('--cache', type=Path, default=None,
                        help='engine cache directory (default: <export>/engines)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp16',
                        help='engine precision (default fp16)')
    parser.add_argument('--workspace-gb', type=float, default=2.0,
                        help='builder workspace limit in GiB (default 2; lower it on small '
                             'Jetsons if builds run out of memory)')
    parser.add_argument('--device', type=int, default=0, help='CUDA device index (default 0)')


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    manifest = Manifest.load(args.export)
    cache = EngineCache(manifest, args.cache, args.precision, args.device, args.workspace_gb,
                        log=tqdm.write)
    trt = cache.trt
    logger = _logger(tqdm.write)  # must outlive the runtime
    runtime = trt.Runtime(logger)
    gpu, cc = device_identity(args.device)
    print(f'TensorRT {trt.__version__} on {gpu} (compute {cc}), {args.precision}, '
          f'cache {cache.directory}')
    t0 = time.perf_counter()
    for unit in tqdm(manifest.units, desc='engines', unit='unit'):
        cache.engine(runtime, unit, build=True)
    print(f'{len(manifest.units)} engines ready ({cache.builds} built) in '
          f'{time.perf_counter() - t0:.1f} s; timing cache {cache.timing_cache}')
    return 0
