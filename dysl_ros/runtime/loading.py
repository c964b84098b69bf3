"""The runner factory: the one place that picks a backend by name.

    policy = load_guided_policy('onnxruntime', 'models/default/onnx')   # an export
    policy = load_guided_policy('torch', 'models/default')              # a model directory

A model directory holds vla.json + dysl.json (safetensors weights); an export directory
holds manifest.json + ONNX units (python -m dysl_ros export). PyTorch runs model
directories; ONNX Runtime and TensorRT run exports, built from the manifest alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ..guidance import GuidanceConfig
from .manifest import MANIFEST_NAME, Manifest, guidance_config
from .policy import GuidedPolicy, ModelSpec, Policy
from .runner import Runner

if TYPE_CHECKING:  # torch loads only for the torch backend: exports run without it
    from ..model.dysl import DySL
    from ..model.vla import VLA

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')
RUNS_EXPORT = {'torch': False, 'onnxruntime': True, 'tensorrt': True}  # else: torch modules
VLA_JSON, DYSL_JSON = 'vla.json', 'dysl.json'  # as written by model.io


@dataclass
class LoadedModel:
    """A runner with the spec and guidance settings of the model it runs."""

    runner: Runner
    spec: ModelSpec
    guidance: GuidanceConfig
    source: Optional[Path]  # None for in-memory torch modules


def source_kind(source: Path | str) -> str:
    """'export' (manifest.json, or a directory holding one) or 'model' (vla.json)."""
    path = Path(source)
    if path.is_file() and path.suffix == '.json' and path.name != VLA_JSON:
        return 'export'
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return 'export'
    if path.is_dir() and (path / VLA_JSON).is_file():
        return 'model'
    raise FileNotFoundError(f'{path}: neither a model directory ({VLA_JSON}, {DYSL_JSON}) nor '
                            f'an export ({MANIFEST_NAME})')


def load_torch_model(directory: Path | str, device: str = 'cpu'
                     ) -> tuple['VLA', Optional['DySL'], GuidanceConfig]:
    """VLA + DySL parts (None when the directory has no dysl.json) + guidance settings."""
    from ..model.io import load_dysl, load_vla
    directory = Path(directory)
    vla = load_vla(directory, map_location=device)
    if not (directory / DYSL_JSON).is_file():
        return vla, None, GuidanceConfig()
    dysl, guidance = load_dysl(directory, vla)
    return vla, dysl, guidance_config(guidance, str(directory / DYSL_JSON))


def load_model(backend: str, source: Any, *, device: str = 'cpu',
               providers: Optional[list[str]] = None, threads: int = 0,
               engine_cache: Optional[Path] = None, precision: str = 'fp16',
               build_engines: bool = True, log: Any = print) -> LoadedModel:
    """Load `source` on `backend` ('torch', 'onnxruntime' or 'tensorrt').

    source: a model directory or an export directory / manifest path (see RUNS_EXPORT), or,
    for torch, an in-memory (vla, dysl) pair (stored guidance: the defaults).
    device: torch only ('cpu', 'cuda'). providers, threads: ONNX Runtime only.
    engine_cache, precision, build_engines, log: TensorRT only (see TensorRTRunner).
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend={backend!r} is invalid: expected one of {BACKENDS}')
    if backend == 'torch':
        from .torch_runner import TorchRunner
        if isinstance(source, tuple):
            (vla, dysl), guidance, path = source, GuidanceConfig(), None
        else:
            path = Path(source)
            if source_kind(path) != 'model':
                raise ValueError(f'{path}: the torch backend runs a model directory '
                                 f'({VLA_JSON} + {DYSL_JSON}), not an export')
            vla, dysl, guidance = load_torch_model(path, device)
        layout = None if dysl is None else dysl.layout
        threshold = 0.5 if dysl is None else dysl.cfg.skip_threshold
        return LoadedModel(TorchRunner(vla, dysl), ModelSpec.from_model(vla, layout, threshold),
                           guidance, path)
    path = Path(source)
    if source_kind(path) != 'export':
        raise ValueError(f'{path}: the {backend} backend runs an export; make one with '
                         f'python -m dysl_ros export --model {path}')
    manifest = Manifest.load(path)
    if backend == 'onnxruntime':
        from .onnx_runner import OnnxRunner
        runner: Runner = OnnxRunner(manifest, providers=providers, threads=threads)
    else:
        from .tensorrt_runner import TensorRTRunner
        runner = TensorRTRunner(manifest, cache_dir=engine_cache, precision=precision,
                                build=build_engines, log=log)
    return LoadedModel(runner, manifest.spec(), manifest.guidance_config(), path)


def make_runner(backend: str, source: Any, **options: Any) -> Runner:
    """A runner for `source` on `backend`; options as for load_model."""
    return load_model(backend, source, **options).runner


def load_guided_policy(backend: str, source: Any, *, skipping: bool = True,
                       guidance: Optional[Mapping[str, Any]] = None,
                       **options: Any) -> GuidedPolicy:
    """The DySL policy (skipping=False: full depth) on `backend`; guidance holds settings
    (tau, executed_actions, ...) that replace the stored ones."""
    loaded = load_model(backend, source, **options)
    cfg = dataclasses.replace(loaded.guidance, **dict(guidance or {}))
    return GuidedPolicy(loaded.runner, loaded.spec, cfg, skipping)


EXPORT_METHODS = ('dysl', 'full')  # what an export holds; torch runs every method


def open_policy(model: Path, backend: str = 'torch', method: str = 'dysl',
                device: str = 'cpu', guidance: Optional[Mapping[str, Any]] = None,
                **options: Any) -> Policy:
    """The Policy a node or tool runs: torch runs any method from a model directory; the
    exported backends run dysl or full from an export (its folder, or <model>/onnx).
    guidance replaces stored guidance settings; options go to the runner (onnxruntime:
    threads; tensorrt: engine_cache, precision, ...)."""
    source = Path(model)
    if not source.exists():
        raise FileNotFoundError(f'model {source} does not exist')
    if backend == 'torch':
        from .methods import make_policy
        return make_policy(method, source, device=device, guidance=guidance)
    if method not in EXPORT_METHODS:
        raise ValueError(f'method={method!r} is invalid for backend {backend}: exports run '
                         f'{list(EXPORT_METHODS)}')
    if source.is_dir() and not (source / MANIFEST_NAME).is_file() and \
            (source / 'onnx' / MANIFEST_NAME).is_file():
        source = source / 'onnx'  # a model directory with its export inside
    return load_guided_policy(backend, source, skipping=method == 'dysl', guidance=guidance,
                              **options)

