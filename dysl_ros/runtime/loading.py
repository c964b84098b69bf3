"""The runner factory: the one place that picks a backend by name.

    policy = open_policy('models/default/onnx', 'onnxruntime')   # an export
    policy = open_policy('models/default', 'torch', 'deer')      # a model directory, any method
    runner = make_runner('torch', 'models/default')               # the runner alone

A model directory holds vla.json + dysl.json (safetensors weights); an export directory
holds manifest.json + ONNX units (python -m dysl_ros export). PyTorch runs model
directories; ONNX Runtime and TensorRT run exports, built from the manifest alone.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from ..guidance import GuidanceConfig
from ..paths import DYSL_JSON, VLA_JSON, default_model_dir
from .manifest import MANIFEST_NAME, Manifest, guidance_config
from .policy import GuidedPolicy, ModelSpec, Policy
from .runner import Runner

if TYPE_CHECKING:  # torch loads only for the torch backend: exports run without it
    from ..model.dysl import DySL
    from ..model.vla import VLA

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')  # the one list of backends; load_model maps them
RUNS_EXPORT = {'torch': False, 'onnxruntime': True, 'tensorrt': True}  # else: torch modules


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


def export_source(source: Path) -> Path:
    """Where an export is: `source` itself, or <source>/onnx for a model directory with its
    export inside (and no manifest of its own)."""
    if source.is_dir() and not (source / MANIFEST_NAME).is_file() and \
            (source / 'onnx' / MANIFEST_NAME).is_file():
        return source / 'onnx'
    return source


def model_interface(source: Path | str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(action names, cameras) a model directory or an export declares, read from its JSON
    (no weights, no torch)."""
    path = export_source(Path(source))
    if source_kind(path) == 'export':
        manifest = Manifest.load(path)
        return manifest.action_names, manifest.cameras
    cfg = json.loads((path / VLA_JSON).read_text())['config']
    return tuple(cfg['action_names']), tuple(cfg['cameras'])


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


EXPORT_METHODS = ('dysl', 'full')  # what an export holds; torch runs every method


@dataclass(frozen=True)
class PolicyOptions:
    """How open_policy loads and runs a policy; each backend reads its own fields.

    device: torch ('cpu', 'cuda', 'cuda:N'). threads, providers: ONNX Runtime (intra-op
    threads, 0 = one per core; execution providers, None = the runner's default).
    engine_cache, precision, build_engines, log: TensorRT (see TensorRTRunner).
    guidance: settings (executed_actions, tau, ...) that replace the stored ones.
    profile: time every stage of a step (StepStats.latency_ms), for benchmarks.
    """

    device: str = 'cpu'
    threads: int = 0
    providers: Optional[tuple[str, ...]] = None
    engine_cache: Optional[Path] = None
    precision: str = 'fp16'
    build_engines: bool = True
    log: Callable[[str], Any] = print
    guidance: Optional[Mapping[str, Any]] = None
    profile: bool = False


def open_policy(model_path: Optional[Path | str], backend: str = 'torch',
                method: str = 'dysl', options: PolicyOptions = PolicyOptions()) -> Policy:
    """The Policy a node, bag tool or benchmark runs: torch runs any method (see
    runtime.methods) from a model directory; the exported backends run dysl or full from an
    export (its folder, its manifest, or <model>/onnx). model_path None: models/default."""
    source = Path(model_path) if model_path else default_model_dir()
    if backend not in BACKENDS:
        raise ValueError(f'backend={backend!r} is invalid: expected one of {BACKENDS}')
    if not source.exists():
        raise FileNotFoundError(f'model {source} does not exist')
    if backend == 'torch':
        from .methods import make_policy
        return make_policy(method, source, device=options.device, guidance=options.guidance,
                           profile=options.profile)
    if method not in EXPORT_METHODS:
        raise ValueError(f'method={method!r} is invalid for backend {backend}: exports run '
                         f'{list(EXPORT_METHODS)}')
    source = export_source(source)
    if backend == 'onnxruntime':
        runner_options: dict[str, Any] = {
            'threads': options.threads,
            'providers': None if options.providers is None else list(options.providers)}
    else:
        runner_options = {'engine_cache': options.engine_cache, 'precision': options.precision,
                          'build_engines': options.build_engines, 'log': options.log}
    loaded = load_model(backend, source, **runner_options)
    cfg = dataclasses.replace(loaded.guidance, **dict(options.guidance or {}))
    return GuidedPolicy(loaded.runner, loaded.spec, cfg, skipping=method == 'dysl',
                        profile=options.profile)
