"""Every method of the benchmark behind one Policy interface: `make_policy(name, model_dir)`.

Methods (dysl-method.md section 4):

    full              the base VLA at full depth (GuidedPolicy, skipping off)
    dysl              DySL: static layers, controllers, adapters, prior-post guidance
    dysl-no-preskip   ablation: allow points fixed at S_k + 1 (GuidanceConfig.pre_skip=False)
    dysl-no-verify    ablation: no post-skip verification (GuidanceConfig.verify=False)
    dysl-joint        ablation: DySL parts trained jointly (no stage 1)
    dysl-no-static    ablation: DySL parts on a layout with only layer 0 static
    random-skip       DySL's walk with controllers = Bernoulli(q) coins, adapters = identity,
                      pre-skip and verification off; q matched to DySL's mean layers
    random-skip-adapters
                      as random-skip with DySL's trained adapters (isolates the controllers)
    always-skip       DySL's walk and adapters, every segment skipped at its first dynamic
                      layer, no guidance (isolates controllers + guidance); no training
    flexidepth        per-layer router + adapter on every layer, no static layers; its
                      budget weight alpha chosen on validation seeds to run DySL's layers
    deer              early exits every 2 layers, an adapter per exit under the VLA's head,
                      thresholds eta_i
    static-depth      k fixed layers (lowest s_l), fine-tuned; k matched to DySL's mean layers

The trained baselines get DySL's distillation budget (steps x batch) and DySL's part sizes
(adapter rank, controller width) from `train-baselines`.

Model directory (all safetensors + JSON, no pickle):

    <model_dir>/vla.json, vla.safetensors          base VLA (model.io.save_vla)
    <model_dir>/dysl.json, dysl.safetensors        DySL parts + layout + guidance (save_dysl)
    <model_dir>/ablations/<name>/dysl.{json,safetensors}
                                                   dysl-joint, dysl-no-static (save_dysl)
    <model_dir>/baselines/<name>/baseline.{json,safetensors}
                                                   flexidepth, deer, static-depth
                                                   (model.baselines.save_baseline)
    <model_dir>/baselines/random-skip{,-adapters}/baseline.json
                                                   q, seed, layout (no weights)

Every optional part is made by `python -m dysl_ros train-baselines --model-dir <model_dir>`
(dysl_ros.train.baselines); make_policy names the missing file and that command.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from ..guidance import GuidanceConfig
from ..layout import Layout
from ..model.baselines import BASELINE_JSON, Inference, load_baseline
from ..model.config import from_dict
from ..model.io import DYSL_JSON, VLA_JSON, load_dysl, load_vla, read_json
from ..model.vla import VLA
from ..paths import DISTILL_JSON
from .policy import GuidedPolicy, ModelSpec, Policy, StepStats, Clock
from .runner import Runner, RunnerWrapper
from .torch_runner import TorchRunner

@dataclass(frozen=True)
class Method:
    """One method of the benchmark: where its parts live, what makes them, how it loads.

    parts: 'base' (vla.* only), 'dysl' (the main DySL parts), 'ablation' or 'baseline' (its
    own directory under <model_dir>/ablations or /baselines). maker: for the parts that
    `train-baselines` makes, 'module:function' of its maker in dysl_ros.train.baselines,
    resolved by name there (training sits above the runtime: it is never imported here).
    """

    name: str
    parts: str
    maker: Optional[str] = None
    guidance: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fixed overrides


def _baseline(name: str, module: str) -> Method:
    return Method(name, 'baseline', f'{module}:make')


def _ablation(name: str) -> Method:
    return Method(name, 'ablation', 'ablations:make')


# The one registry: every name the benchmark, the node, the bag tools and training accept.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method('full', 'base'),
    Method('dysl', 'dysl'),
    Method('dysl-no-preskip', 'dysl', guidance={'pre_skip': False}),
    Method('dysl-no-verify', 'dysl', guidance={'verify': False}),
    _ablation('dysl-joint'),
    _ablation('dysl-no-static'),
    _baseline('random-skip', 'random_skip'),
    _baseline('random-skip-adapters', 'random_skip'),
    Method('always-skip', 'dysl'),
    _baseline('flexidepth', 'flexidepth'),
    _baseline('deer', 'deer'),
    _baseline('static-depth', 'static_depth'),
)}
TRAINABLE = tuple(name for name, m in METHODS.items() if m.maker)  # what train-baselines makes
RANDOM_SKIP_FORMAT = 1
COIN_METHODS = ('random-skip', 'random-skip-adapters')  # coins for controllers, q stored

SUMMARY_JSON = 'summary.json'  # <model_dir>/baselines/: what train-baselines made, and its cost
TRAIN_COMMAND = 'python -m dysl_ros train-baselines --model-dir {model_dir} --methods {name}'
# The command that distils the main DySL parts into <model_dir>.
DYSL_COMMAND = 'python -m dysl_ros distill --model-dir {model_dir} --demos DEMOS'


def training_cost(name: str, model_dir: Path) -> dict[str, Any]:
    """What method `name`'s parts cost to train: trainable_parameters and train_seconds (None
    where not recorded), from distill.json for the methods built on the main DySL parts
    (their controllers or adapters) and from baselines/summary.json for the others."""
    model_dir = Path(model_dir)
    parts = METHODS[name].parts
    if parts == 'base':
        return {'trainable_parameters': 0, 'train_seconds': 0.0}
    if parts == 'dysl' or name == 'random-skip-adapters':
        path = model_dir / DISTILL_JSON
        entry = read_json(path) if path.is_file() else {}
    else:
        path = model_dir / 'baselines' / SUMMARY_JSON
        entry = read_json(path).get('methods', {}).get(name, {}) if path.is_file() else {}
    return {k: entry.get(k) for k in ('trainable_parameters', 'train_seconds')}


def parts_dir(model_dir: Path, name: str) -> Path:
    """Where method `name` keeps its trained parts (the model directory for base and dysl)."""
    parts = METHODS[name].parts
    if parts in ('ablation', 'baseline'):
        return Path(model_dir) / f'{parts}s' / name
    return Path(model_dir)


class RandomSkipRunner(RunnerWrapper):
    """Wraps a runner: every controller is a Bernoulli(q) coin from a seeded generator and,
    unless trained_adapters, every adapter is the identity (walk and layers unchanged)."""

    def __init__(self, base: Runner, q: float, seed: int = 0, trained_adapters: bool = False):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f'q={q!r} is invalid: expected a probability in [0, 1]')
        super().__init__(base, f'{base.name}+random-skip')
        self.q = float(q)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.trained_adapters = trained_adapters

    def adapter(self, j: int, x: Any) -> Any:
        return self.inner.adapter(j, x) if self.trained_adapters else x

    def controller(self, j: int, x: Any) -> float:
        return 1.0 if self.rng.random() < self.q else 0.0


class BaselinePolicy:
    """A torch baseline module (FlexiDepth, DeeR, static depth) behind the Policy interface.

    `module.infer(x)` returns an Inference; `head` maps its hidden state to a normalised
    chunk when the module did not compute one. No segments, no guidance: skipped_at and
    allow_points are empty and nothing is ever verified.
    """

    def __init__(self, vla: VLA, module: Any, head: Callable[[torch.Tensor], torch.Tensor],
                 name: str, profile: bool = False):
        self.name = name
        self.profile = profile  # per-stage latency, as GuidedPolicy's
        self.runner = TorchRunner(vla)
        self.module = module.eval()
        self.head = head
        self.spec = ModelSpec.from_model(vla)

    def reset(self) -> None:
        """Stateless between steps: nothing to clear."""

    def step(self, images: Mapping[str, np.ndarray], instruction: str
             ) -> tuple[np.ndarray, StepStats]:
        t = Clock(self.runner, self.profile)
        pixels, tokens = self.spec.prepare(images, instruction)
        t.lap('prepare')
        x0 = self.runner.embed(pixels, tokens)
        t.lap('embed')
        out: Inference = self.module.infer(x0)
        t.lap('backbone')
        with torch.inference_mode():
            chunk = out.chunk if out.chunk is not None else self.head(out.hidden)  # (1, H, D)
            chunk = chunk[0].float().cpu().numpy()  # (H, D)
        t.lap('head')
        stats = StepStats(layers_run=len(out.layer_ids),
                          layers_total=self.spec.layout.num_layers,
                          layer_ids=list(out.layer_ids), skipped_at=[], verified=False,
                          allow_points=[], latency_ms=t.total())
        return self.spec.unnormalise(chunk), stats


def make_policy(name: str, model_dir: Path, device: str = 'cpu', seed: Optional[int] = None,
                vla: Optional[VLA] = None, guidance: Optional[Mapping[str, Any]] = None,
                profile: bool = False) -> Policy:
    """The policy of method `name` from `model_dir` (see the module docstring for the files).

    seed overrides random-skip's stored seed; vla reuses an already loaded base model
    (policies built from one VLA share its weights, which no method changes); guidance holds
    settings (executed_actions, tau, ...) that replace the stored ones of the DySL methods;
    profile=True times every stage of a step (StepStats.latency_ms), for benchmarks.
    """
    policy = _make_policy(name, model_dir, device, seed, vla, guidance)
    policy.profile = profile
    return policy


def _make_policy(name: str, model_dir: Path, device: str, seed: Optional[int],
                 vla: Optional[VLA], guidance: Optional[Mapping[str, Any]]
                 ) -> GuidedPolicy | BaselinePolicy:
    if name not in METHODS:
        raise ValueError(f'unknown method {name!r}; expected one of {tuple(METHODS)}')
    method = METHODS[name]
    model_dir = Path(model_dir)
    if vla is None:
        _need(model_dir / VLA_JSON, 'behaviour cloning of the base VLA (save_vla)')
        vla = load_vla(model_dir, map_location=device)
    if method.parts == 'base':
        return GuidedPolicy(TorchRunner(vla), ModelSpec.from_model(vla), GuidanceConfig(),
                            skipping=False)
    if name == 'always-skip':  # coins that always land on skip, DySL's adapters
        _need(model_dir / DYSL_JSON, DYSL_COMMAND.format(model_dir=model_dir))
        return coin_policy(vla, 1.0, 0, load_dysl(model_dir, vla)[0])
    directory = parts_dir(model_dir, name)
    how = (TRAIN_COMMAND.format(model_dir=model_dir, name=name) if method.maker
           else DYSL_COMMAND.format(model_dir=model_dir))
    if method.parts in ('dysl', 'ablation'):
        _need(directory / DYSL_JSON, how)
        return _dysl_policy(vla, directory, {**(guidance or {}), **method.guidance})
    _need(directory / BASELINE_JSON, how)
    if name in COIN_METHODS:
        meta = read_random_skip(directory, name)
        seed = meta['seed'] if seed is None else seed
        if name == 'random-skip':
            return coin_policy(vla, meta['q'], seed, layout=Layout.from_dict(meta['layout']))
        _need(model_dir / DYSL_JSON, DYSL_COMMAND.format(model_dir=model_dir))
        dysl, _ = load_dysl(model_dir, vla)
        if dysl.layout.to_dict() != meta['layout']:
            raise ValueError(f'{directory / BASELINE_JSON}: q was solved for layout '
                             f'{meta["layout"]}, DySL has {dysl.layout.to_dict()}; rerun: '
                             f'{TRAIN_COMMAND.format(model_dir=model_dir, name=name)}')
        return coin_policy(vla, meta['q'], seed, dysl)
    module, _ = load_baseline(directory, vla)
    head = vla.head if name == 'flexidepth' else getattr(module, 'head', None)
    return BaselinePolicy(vla, module, head, name)


def coin_policy(vla: VLA, q: float, seed: int = 0, dysl: Optional[Any] = None,
                layout: Optional[Layout] = None) -> GuidedPolicy:
    """DySL's segment walk with Bernoulli(q) coins for controllers, pre-skip and
    verification off: with `dysl`, its layout and trained adapters; without, identity
    adapters on `layout` (random skip)."""
    runner = RandomSkipRunner(TorchRunner(vla, dysl), q, seed, trained_adapters=dysl is not None)
    return GuidedPolicy(runner, ModelSpec.from_model(vla, dysl.layout if dysl else layout),
                        GuidanceConfig(pre_skip=False, verify=False))


def read_random_skip(directory: Path, name: str = 'random-skip') -> dict:
    """A coin method's JSON (random-skip, random-skip-adapters): q, seed, layout (validated)."""
    path = Path(directory) / BASELINE_JSON
    meta = read_json(path)
    if meta.get('format') != RANDOM_SKIP_FORMAT or meta.get('method') != name:
        raise ValueError(f'{path}: not a {name} baseline of format {RANDOM_SKIP_FORMAT}')
    missing = sorted({'q', 'seed', 'layout'} - set(meta))
    if missing:
        raise ValueError(f'{path}: missing keys {missing}')
    return meta


def _dysl_policy(vla: VLA, directory: Path, flags: dict) -> GuidedPolicy:
    dysl, guidance = load_dysl(directory, vla)
    try:
        gcfg = dataclasses.replace(from_dict(GuidanceConfig, guidance), **flags)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{directory / DYSL_JSON}: bad guidance entry ({e})') from None
    spec = ModelSpec.from_model(vla, dysl.layout, dysl.cfg.skip_threshold)
    return GuidedPolicy(TorchRunner(vla, dysl), spec, gcfg)


def _need(path: Path, how: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing; make it with: {how}')
