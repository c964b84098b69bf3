"""The TensorRT engine cache: engines keyed by what they were built from, on disk.

One engine per ONNX graph of the manifest, whatever its kind (per segment export: embed,
segment_<k> with its conditionals, head; per unit export: every layer, adapter, controller),
cached as `<cache>/<unit>.<digest>.engine` with a sidecar `<unit>.<digest>.json` holding the
key and the engine's sha256. The key (EngineKey) is everything the plan depends on, as
plain values: the graph's ONNX sha256, the TensorRT version, the build recipe of this code
(BUILD_RECIPE), the device (GPU name, compute capability, SM count, total memory: every Orin
reports 'Orin' and 8.7, so the SM count and memory tell a Nano from an NX or an AGX) and
every builder setting (BuildSettings: precision, flags set and cleared, workspace limit,
optimisation level, which layers are kept in fp32). An engine is never used on another
TensorRT, device, build recipe or settings, or for another ONNX file. A lookup that misses
says why (which key field differs from the engines that are there); a corrupt engine (sha256
mismatch, or TensorRT refuses to deserialise it) is rebuilt (runtime/engine_build.py) when
building is allowed, and refused with a message naming the file and the command to run
otherwise. Nothing reaches the first inference unchecked. The files themselves
(EngineStore) and the key are plain Python, testable without TensorRT.

`python -m dysl_ros engines --export DIR` (export/tensorrt_build.py) builds them ahead of
time (on the robot: once per JetPack / TensorRT upgrade). The device identity comes from
torch.cuda, which also owns the device buffers of the runner (runtime/tensorrt_runner.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .engine_build import (BUILD_RECIPE, DEFAULT_OPTIMIZATION_LEVEL, DEFAULT_WORKSPACE_GB,
                           BuildSettings, EngineError, Log, atomic_write, build_engine,
                           require_tensorrt)
from .manifest import Manifest, Unit, sha256_bytes


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
        atomic_write(engine_path, plan)
        atomic_write(meta_path, (json.dumps({'key': key.fields(), 'unit': name,
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
        """A deserialised ICudaEngine for `unit`, any kind (cached, or built when allowed)."""
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
