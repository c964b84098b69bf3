"""Every baseline and ablation of a model from its demos: their makers (named by the method
registry, runtime.methods.METHODS) and the target they match (DySL's mean executed layers)."""
from __future__ import annotations

import dataclasses
import importlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ...datasets import Episode
from ...guidance import GuidanceConfig, calibrate_tau
from ...layout import Layout
from ...model.config import DySLConfig
from ...model.io import DYSL_JSON, load_vla, read_json, write_json
from ...model.vla import VLA
from ...runtime.methods import METHODS, SUMMARY_JSON, TRAINABLE, make_policy, parts_dir
from ...runtime.policy import Policy
from ..calibrate import layer_similarity, select_static
from ..dataset import DemoDataset, EmbeddedBatches
from ..distill import DistillConfig
from .common import BaselineTrainConfig, Job

Maker = Callable[[Job, str, Path], dict[str, Any]]
# Methods whose makers match DySL's mean executed layers.
BUDGETED = frozenset({'random-skip', 'random-skip-adapters', 'deer',
                      'static-depth'})


def maker(name: str) -> Maker:
    """The function that trains / calibrates method `name` and writes its parts where
    runtime.methods.make_policy loads them: named by the method registry, resolved here."""
    module, function = METHODS[name].maker.split(':')
    return getattr(importlib.import_module(f'{__package__}.{module}'), function)


def mean_layers_run(policy: Policy, episodes: Sequence[Episode],
                    max_steps: Optional[int] = None) -> float:
    """Open-loop mean of StepStats.layers_run (verification re-runs included) over the
    observations of demonstration episodes, the guidance reset at each episode start."""
    counts = []
    for ep in tqdm(episodes, desc='mean layers run', leave=False):
        policy.reset()
        n = ep.length if max_steps is None else min(max_steps, ep.length)
        for t in range(n):
            _, stats = policy.step({c: v[t] for c, v in ep.images.items()}, ep.instruction)
            counts.append(stats.layers_run)
    if not counts:
        raise ValueError('no steps to measure: the episodes are empty')
    return float(np.mean(counts))


def train_all_baselines(model_dir: Path, episodes: Sequence[Episode],
                        methods: Sequence[str] = TRAINABLE,
                        cfg: BaselineTrainConfig = BaselineTrainConfig(),
                        distill_cfg: DistillConfig = DistillConfig(),
                        target_layers: Optional[float] = None, device: str = 'cpu',
                        batch_size: int = 32, batches: Optional[int] = None,
                        measure_episodes: Optional[int] = None, seed: int = 0
                        ) -> dict[str, Any]:
    """Make every requested baseline / ablation of the model in `model_dir` from demos.

    target_layers, DySL's mean executed layers per step (what the BUDGETED methods match),
    is measured open-loop with the 'dysl' policy over the first measure_episodes episodes
    when not given. Training batches are random demo samples,
    embedded by the frozen VLA, with their normalised action chunks (batches per pass:
    one epoch by default). Writes the parts (see dysl_ros.runtime.methods) and
    <model_dir>/baselines/summary.json (with each method's trainable_parameters and
    train_seconds); returns that summary.
    """
    unknown = sorted(set(methods) - set(TRAINABLE))
    if unknown:
        raise ValueError(f'unknown methods {unknown}; trainable: {TRAINABLE}')
    model_dir = Path(model_dir)
    torch.manual_seed(seed)
    vla = load_vla(model_dir, map_location=device)
    stats = {'mean': vla.action_mean.cpu().numpy(), 'std': vla.action_std.cpu().numpy()}
    dataset = DemoDataset.for_model(episodes, stats, vla)  # the model's normalisation
    n_batches = batches or max(1, math.ceil(len(dataset) / batch_size))
    pairs = EmbeddedBatches(vla, dataset, batch_size, n_batches, seed, with_actions=True)
    hidden = EmbeddedBatches(vla, dataset, batch_size, n_batches, seed)
    summary: dict[str, Any] = {'methods': {}, 'samples': len(dataset)}
    if target_layers is None and set(methods) & BUDGETED:
        if not (model_dir / DYSL_JSON).is_file():
            raise FileNotFoundError(f'{model_dir / DYSL_JSON} is missing: distil DySL first, '
                                    'or pass target_layers (--target-layers)')
        target_layers = mean_layers_run(make_policy('dysl', model_dir, vla=vla),
                                        episodes[:measure_episodes])
    summary['target_layers'] = target_layers
    layout, dysl_cfg, guidance = _dysl_parts(vla, model_dir, hidden, dataset)
    job = Job(model_dir, vla, pairs, hidden, cfg, distill_cfg, target_layers, layout, dysl_cfg,
              guidance, seed)
    for name in methods:
        out_dir = parts_dir(model_dir, name)
        start = time.perf_counter()
        info = maker(name)(job, name, out_dir)
        summary['methods'][name] = {'dir': str(out_dir), **_brief(info),
                                    'train_seconds': time.perf_counter() - start}
    path = model_dir / 'baselines' / SUMMARY_JSON
    if path.is_file():  # methods made by an earlier call keep their entries
        summary['methods'] = {**read_json(path).get('methods', {}), **summary['methods']}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, summary)
    return summary


def _dysl_parts(vla: VLA, model_dir: Path, hidden: Iterable[torch.Tensor],
                dataset: DemoDataset) -> tuple[Layout, DySLConfig, dict[str, Any]]:
    """The main DySL's layout, config and guidance; calibrated here when it is absent."""
    if (model_dir / DYSL_JSON).is_file():
        meta = read_json(model_dir / DYSL_JSON)
        return (Layout.from_dict(meta['layout']), DySLConfig.from_dict(meta['config']),
                dict(meta['guidance']))
    cfg = DySLConfig()
    layout = select_static(layer_similarity(vla.blocks, hidden), cfg.static_ratio,
                           cfg.first_layer_static)
    tau = calibrate_tau(dataset.episode_actions(normalised=True), GuidanceConfig().history)
    return layout, cfg, dataclasses.asdict(GuidanceConfig(tau=tau))


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ('similarity',)}
