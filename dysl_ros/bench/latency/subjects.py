"""What is benchmarked: a model, its observations, and where decisions come from."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ...guidance import GuidanceConfig
from ...model import VLAConfig
from ...model.io import DYSL_JSON, VLA_JSON
from ...paths import default_model_dir
from ...runtime.loading import load_torch_model
from ...runtime.policy import ModelSpec
from ...train.calibrate import fresh_model
from ..scale import SCALES, build_llama
from ..trace import DecisionTrace

DEFAULT_MODEL = default_model_dir()
INSTRUCTION = 'pick up the red block'
Observation = tuple[dict, str]


@dataclass
class Subject:
    """What is benchmarked: a model, its observations, and where decisions come from."""

    vla: Any
    dysl: Any
    guidance: GuidanceConfig
    spec: ModelSpec
    observations: list[Observation]
    trace: Optional[DecisionTrace]
    description: str
    device: str
    notes: list[str] = field(default_factory=list)

def random_observations(spec: ModelSpec, steps: int, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    s = spec.image_size
    return [({c: rng.integers(0, 256, (s, s, 3), np.uint8) for c in spec.cameras}, INSTRUCTION)
            for _ in range(steps)]


def record_observations(spec: ModelSpec, steps: int, seed: int) -> list[Observation]:
    """Camera frames + instructions from the simulated expert, episode after episode."""
    from ...sim import SimConfig, TabletopEnv
    from ...sim.expert import Expert
    env = TabletopEnv(SimConfig(image_size=spec.image_size, cameras=tuple(spec.cameras)))
    out: list[Observation] = []
    try:
        expert, episode = Expert(env), 0
        obs = env.reset(seed=seed)
        while len(out) < steps:
            out.append((dict(obs.images), obs.instruction))
            obs, done, _ = env.step(expert.act())
            if done:
                episode += 1
                obs = env.reset(seed=seed + episode)
    finally:
        env.close()
    return out


def _trace_for(layout: Any, args: argparse.Namespace, notes: list[str]) -> DecisionTrace:
    if args.trace:
        trace = DecisionTrace.load(args.trace)
        notes.append(f'decisions: recorded trace {args.trace} ({len(trace)} steps, '
                     f'{trace.source or "unknown source"})')
        return trace
    trace = DecisionTrace.synthetic(layout, args.steps, seed=args.seed)
    notes.append(f'decisions: synthetic trace (seed {args.seed}, mean layer fraction '
                 f'{trace.mean_layer_fraction():.2f}); pass --trace PATH for a recorded one')
    return trace


def build_subject(args: argparse.Namespace) -> Subject:
    """The model and decision source for --scale / --model / --trace."""
    notes: list[str] = []
    if args.scale in SCALES:
        scale = SCALES[args.scale]
        device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
        if scale.dtype == 'float16' and device != 'cuda':
            raise SystemExit(f'--scale {scale.name} needs a CUDA GPU (fp16 {scale.layers} x '
                             f'{scale.width}); on the CPU run --scale llama-tiny')
        vla, dysl = build_llama(scale, device, args.seed)
        spec = ModelSpec.from_model(vla, dysl.layout, dysl.cfg.skip_threshold)
        desc = (f'{scale.name}: random-weight Llama backbone, {scale.layers} layers x '
                f'{scale.width}, {vla.cfg.num_tokens} tokens, {scale.dtype}, calibrated layout '
                f'static {list(dysl.layout.static)}')
        return Subject(vla, dysl, GuidanceConfig(), spec,
                       random_observations(spec, args.steps, args.seed),
                       _trace_for(dysl.layout, args, notes), desc, device, notes)
    device = args.device or 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: torch sees no CUDA GPU')
    model = args.model
    trained = model is not None or ((DEFAULT_MODEL / VLA_JSON).is_file()
                                    and (DEFAULT_MODEL / DYSL_JSON).is_file())
    if trained:
        model = Path(model or DEFAULT_MODEL)
        vla, dysl, guidance = load_torch_model(model, device)
        if dysl is None:
            raise SystemExit(f'{model}: no DySL parts ({DYSL_JSON}); train them first')
        spec = ModelSpec.from_model(vla, dysl.layout, dysl.cfg.skip_threshold)
        desc = (f'trained model {model}: {vla.cfg.n_layers} layers x {vla.cfg.d_model}, '
                f'{vla.cfg.num_tokens} tokens, static {list(dysl.layout.static)}')
        if args.trace:
            return Subject(vla, dysl, guidance, spec,
                           random_observations(spec, args.steps, args.seed),
                           _trace_for(dysl.layout, args, notes), desc, device, notes)
        try:
            obs = record_observations(spec, args.steps, args.seed)
            notes.append(f'decisions: the guided policy on {len(obs)} observations recorded '
                         f'from the simulated expert (seed {args.seed})')
        except Exception as e:  # no renderer, no sim: still time the model, and say so
            obs = random_observations(spec, args.steps, args.seed)
            notes.append(f'decisions: the guided policy on random frames (recording from the '
                         f'simulation failed: {type(e).__name__}: {e})')
        return Subject(vla, dysl, guidance, spec, obs, None, desc, device, notes)
    cfg = VLAConfig()
    vla, dysl = fresh_model(cfg, seed=args.seed)
    vla, dysl = vla.to(device), dysl.to(device)
    spec = ModelSpec.from_model(vla, dysl.layout, dysl.cfg.skip_threshold)
    notes.append(f'no trained model at {DEFAULT_MODEL} (pass --model DIR): using a freshly built '
                 'default-size model with random weights and a calibrated layout')
    desc = (f'default-size VLA (fresh, random weights): {cfg.n_layers} layers x {cfg.d_model}, '
            f'{cfg.num_tokens} tokens, calibrated layout static {list(dysl.layout.static)}')
    return Subject(vla, dysl, GuidanceConfig(), spec,
                   random_observations(spec, args.steps, args.seed),
                   _trace_for(dysl.layout, args, notes), desc, device, notes)
