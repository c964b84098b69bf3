"""`python -m dysl_ros bench latency`: full depth vs DySL latency per backend, in one run.

For each backend (torch, onnxruntime, tensorrt where it imports) the same observations go
through two GuidedPolicy instances sharing one runner, interleaved step by step: full depth
(skipping off) and DySL. Reported per backend and mode: backbone and whole-step latency
(median, p90), their speedup, a per-step breakdown of the backbone into layers, adapters
and controllers (each unit timed on its own, times how often the mode ran it), host
overhead (the same steps through units that return at once: the segment walk and the
policy's own work) and other (the rest: dispatch inside the backend, caches that are cold
when units run in sequence, the machine), and the fraction of ideal:

    ideal DySL backbone   = full-depth backbone x mean fraction of layers DySL runs
    fraction of ideal     = ideal / measured DySL backbone
    (whole step: ideal = full step - full backbone x (1 - that fraction))

The fraction of ideal and the breakdown use each step's best time over the repeats (the
least disturbed one, as timeit does; unit timings likewise), averaged over observations, so
that other processes on a shared machine do not decide them; the JSON also holds the same
figures from plain means (`fraction_of_ideal_mean`).

Backbone latency is the guided pass plus any verification re-run, and the layer fraction
counts the re-run too (as in `bench closed-loop`).

Decisions come from the real guided policy on observations recorded from the simulated
expert when a trained model is given (--model DIR, or models/default when it exists), and
from a decision trace otherwise (--trace PATH, or a synthetic one): a freshly built
default-size model with a calibrated layout, or a random-weight Llama-shaped backbone
(--scale llama7b on CUDA; --scale llama-tiny as a CPU smoke run). The output says which.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..paths import default_model_dir
from ..guidance import GuidanceConfig
from ..model import VLAConfig
from ..model.io import DYSL_JSON, VLA_JSON
from ..runtime.loading import RUNS_EXPORT, load_model, load_torch_model
from ..runtime.manifest import MANIFEST_NAME, Manifest
from ..runtime.policy import GuidedPolicy, ModelSpec
from ..runtime.runner import Runner
from ..train.calibrate import fresh_model
from .scale import SCALES, build_llama
from .trace import Decision, DecisionTrace, replay_policy

DEFAULT_MODEL = default_model_dir()
BACKENDS = ('torch', 'onnxruntime', 'tensorrt')
INSTRUCTION = 'pick up the red block'
TARGET = 0.9  # fraction of ideal the DySL backbone should reach
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


# -- subjects ----------------------------------------------------------------------------

def random_observations(spec: ModelSpec, steps: int, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    s = spec.image_size
    return [({c: rng.integers(0, 256, (s, s, 3), np.uint8) for c in spec.cameras}, INSTRUCTION)
            for _ in range(steps)]


def record_observations(spec: ModelSpec, steps: int, seed: int) -> list[Observation]:
    """Camera frames + instructions from the simulated expert, episode after episode."""
    from ..sim import SimConfig, TabletopEnv
    from ..sim.expert import Expert
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


# -- runners -----------------------------------------------------------------------------

def available_backends(subject: Subject) -> list[str]:
    out = ['torch']
    import onnxruntime as ort
    if subject.device == 'cpu' or 'CUDAExecutionProvider' in ort.get_available_providers():
        out.append('onnxruntime')
    try:
        import tensorrt  # noqa: F401
        if torch.cuda.is_available():
            out.append('tensorrt')
    except ImportError:
        pass
    return out


def _export(subject: Subject, args: argparse.Namespace, tmp: Path) -> Manifest:
    """An export of the subject: reused from --export DIR when it fits, else made there."""
    from ..export.onnx_export import export_model
    out = Path(args.export) if args.export else tmp / 'onnx'
    if (out / MANIFEST_NAME).is_file():
        manifest = Manifest.load(out)
        if manifest.layout != subject.dysl.layout:
            raise SystemExit(f'{out}: its layout differs from the model\'s; pass another '
                             '--export DIR')
        if any(u.fused_controller is not None for u in manifest.units):
            raise SystemExit(f'{out}: fused controllers cannot be timed on their own; pass '
                             'an export made without --fuse-controllers')
        return manifest
    print(f'exporting ONNX units to {out} ...')
    manifest, _ = export_model(subject.vla, subject.dysl, out, subject.guidance,
                               check=subject.device == 'cpu')
    return manifest


def make_runner(backend: str, subject: Subject, args: argparse.Namespace, tmp: Path) -> Runner:
    """The subject on `backend` through the runner factory: torch straight from the modules,
    the other backends from an export."""
    source = (_export(subject, args, tmp).manifest_path if RUNS_EXPORT[backend]
              else (subject.vla, subject.dysl))
    return load_model(backend, source, threads=args.threads, engine_cache=args.engine_cache,
                      precision=args.precision, log=tqdm.write).runner


# -- measurement -------------------------------------------------------------------------

class _Counting:
    """Counts unit calls per step, passing everything through."""

    def __init__(self, inner: Runner):
        self.inner, self.name, self.calls = inner, inner.name, Counter()

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> Any:
        self.calls['embed'] += 1
        return self.inner.embed(images, tokens)

    def layer(self, i: int, x: Any) -> Any:
        self.calls[f'layer_{i}'] += 1
        return self.inner.layer(i, x)

    def adapter(self, j: int, x: Any) -> Any:
        self.calls[f'adapter_{j}'] += 1
        return self.inner.adapter(j, x)

    def controller(self, j: int, x: Any) -> float:
        self.calls[f'controller_{j}'] += 1
        return self.inner.controller(j, x)

    def head(self, x: Any) -> np.ndarray:
        self.calls['head'] += 1
        return self.inner.head(x)

    def synchronize(self) -> None:
        self.inner.synchronize()


class _Instant:
    """Units that return at once: a step through it costs only the executor itself (the
    segment walk, the guidance, the policy's bookkeeping), i.e. the host overhead."""

    name = 'instant'

    def __init__(self, chunk: np.ndarray):
        self.chunk = chunk

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> None:
        return None

    def layer(self, i: int, x: Any) -> Any:
        return x

    def adapter(self, j: int, x: Any) -> Any:
        return x

    def controller(self, j: int, x: Any) -> float:
        return 0.0  # replaced by the recorded decision

    def head(self, x: Any) -> np.ndarray:
        return self.chunk

    def synchronize(self) -> None:
        pass


def host_overhead(subject: Subject, decisions: list[dict], chunk: np.ndarray, repeats: int
                  ) -> dict[str, list[float]]:
    """Backbone ms per step of both modes with instant units and the recorded decisions."""
    trace = DecisionTrace(subject.spec.layout, [
        Decision(tuple(d['allow_points']), tuple(d['skipped_at']), d['verified'])
        for d in decisions])
    instant = _Instant(chunk)
    policies = {'full': GuidedPolicy(instant, subject.spec, subject.guidance, skipping=False,
                                     profile=True),
                'dysl': replay_policy(trace, instant, subject.spec, subject.guidance,
                                      profile=True)}
    out: dict[str, list[float]] = {'full': [], 'dysl': []}
    for _ in range(repeats):
        for mode, policy in policies.items():
            policy.reset()
            for images, text in subject.observations:
                lat = policy.step(images, text)[1].latency_ms
                out[mode].append(lat['backbone'] + lat.get('verify', 0.0))
    return out


def _policies(runner: Runner, subject: Subject) -> tuple[GuidedPolicy, GuidedPolicy]:
    """Full depth and DySL, both timing every stage (backbone_ms is their backbone stage)."""
    full = GuidedPolicy(runner, subject.spec, subject.guidance, skipping=False, profile=True)
    if subject.trace is not None:
        return full, replay_policy(subject.trace, runner, subject.spec, subject.guidance,
                                   profile=True)
    return full, GuidedPolicy(runner, subject.spec, subject.guidance, profile=True)


def _samples(runner: Runner, fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        runner.synchronize()
        t0 = time.perf_counter()
        fn()
        runner.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def unit_samples(runner: Runner, spec: ModelSpec, obs: Observation, repeats: int
                 ) -> dict[str, list[float]]:
    """ms per call of every unit, each timed on its own on full-depth hidden states."""
    pixels, tokens = spec.prepare(*obs)
    layout = spec.layout
    out = {'embed': _samples(runner, lambda: runner.embed(pixels, tokens), repeats)}
    xs = [runner.embed(pixels, tokens)]
    for i in range(layout.num_layers):
        xs.append(runner.layer(i, xs[i]))
    for i in range(layout.num_layers):
        out[f'layer_{i}'] = _samples(runner, lambda: runner.layer(i, xs[i]), repeats)
    for j in layout.dynamic:
        out[f'adapter_{j}'] = _samples(runner, lambda: runner.adapter(j, xs[j]), repeats)
        out[f'controller_{j}'] = _samples(runner, lambda: runner.controller(j, xs[j]),
                                          repeats)
    out['head'] = _samples(runner, lambda: runner.head(xs[-1]), repeats)
    return out


def _stats(values: Sequence[float], repeats: int) -> dict[str, float]:
    """median, p90 and mean over every timed step; best: the mean over observations of the
    best of the repeats (the least disturbed timing of each step, as timeit takes)."""
    v = np.asarray(values, dtype=np.float64)
    return {'median': float(np.median(v)), 'p90': float(np.percentile(v, 90)),
            'mean': float(v.mean()), 'best': float(v.reshape(repeats, -1).min(0).mean())}


def measure(runner: Runner, subject: Subject, repeats: int, unit_repeats: int,
            progress: bool = True) -> dict:
    """Full depth vs DySL on one runner; see the module docstring for every figure."""
    spec, obs = subject.spec, subject.observations
    counting = _Counting(runner)
    full, dysl = _policies(counting, subject)
    # Pass 0 warms up and counts the units each mode runs per step (decisions are
    # deterministic, so the timed passes below run exactly the same units).
    counts = {'full': Counter(), 'dysl': Counter()}
    decisions = []
    for images, text in tqdm(obs, desc=f'{runner.name} warm-up', disable=not progress,
                             leave=False):
        for mode, policy in (('full', full), ('dysl', dysl)):
            counting.calls.clear()
            _, stats = policy.step(images, text)
            counts[mode].update(counting.calls)
            if mode == 'dysl':
                decisions.append({'layer_ids': stats.layer_ids, 'skipped_at': stats.skipped_at,
                                  'verified': stats.verified,
                                  'allow_points': stats.allow_points})
    full, dysl = _policies(runner, subject)
    rows: dict[str, dict[str, list[float]]] = {
        m: {'backbone': [], 'step': [], 'fraction': [], 'verified': []} for m in counts}
    samples: dict[str, list[float]] = {}
    stable = True  # every timed pass repeats the warm-up pass's decisions
    bar = tqdm(total=repeats * len(obs), desc=f'{runner.name} timing', disable=not progress,
               leave=False)
    for _ in range(repeats):
        full.reset()
        dysl.reset()
        # units are timed in every repeat, so they see the same machine as the steps
        for unit, values in unit_samples(runner, spec, obs[0], unit_repeats).items():
            samples.setdefault(unit, []).extend(values)
        for t, (images, text) in enumerate(obs):
            for mode, policy in (('full', full), ('dysl', dysl)):
                _, stats = policy.step(images, text)
                if mode == 'dysl' and stats.layer_ids != decisions[t]['layer_ids']:
                    stable = False
                lat = stats.latency_ms
                r = rows[mode]
                r['backbone'].append(lat['backbone'] + lat.get('verify', 0.0))
                r['step'].append(lat['total'])
                r['fraction'].append(stats.layer_fraction)
                r['verified'].append(float(stats.verified))
            bar.update()
    bar.close()
    costs = {unit: float(np.min(v)) for unit, v in samples.items()}  # best, like the steps
    host = host_overhead(subject, decisions, runner.head(runner.embed(*spec.prepare(*obs[0]))),
                         repeats)
    n = len(obs)
    out: dict[str, Any] = {'unit_ms': costs, 'decisions': decisions,
                           'decisions_repeat_exactly': stable}
    for mode, r in rows.items():
        per_kind = {k: sum(c * costs[u] for u, c in counts[mode].items()
                           if u.startswith(k)) / n
                    for k in ('layer', 'adapter', 'controller')}
        backbone = _stats(r['backbone'], repeats)
        out[mode] = {
            'backbone_ms': backbone, 'step_ms': _stats(r['step'], repeats),
            'layer_fraction': float(np.mean(r['fraction'])),
            'verified_rate': float(np.mean(r['verified'])),
            'units_per_step': {u: c / n for u, c in sorted(counts[mode].items())},
            'breakdown_ms': {'layers': per_kind['layer'], 'adapters': per_kind['adapter'],
                             'controllers': per_kind['controller'],
                             'host_overhead': _stats(host[mode], repeats)['best'],
                             'other': backbone['best'] - sum(per_kind.values())
                             - _stats(host[mode], repeats)['best']},
        }
    f, d = out['full'], out['dysl']
    frac = d['layer_fraction']
    out['speedup'] = {'backbone': f['backbone_ms']['median'] / d['backbone_ms']['median'],
                      'step': f['step_ms']['median'] / d['step_ms']['median']}
    for stat in ('best', 'mean'):
        ideal_bb = f['backbone_ms'][stat] * frac
        ideal_step = f['step_ms'][stat] - f['backbone_ms'][stat] * (1 - frac)
        suffix = '' if stat == 'best' else '_mean'
        out['ideal_ms' + suffix] = {'backbone': ideal_bb, 'step': ideal_step}
        out['fraction_of_ideal' + suffix] = {'backbone': ideal_bb / d['backbone_ms'][stat],
                                             'step': ideal_step / d['step_ms'][stat]}
    return out


# -- report ------------------------------------------------------------------------------

def format_table(results: dict[str, dict]) -> str:
    head = (f'{"backend":<12}{"mode":<6}{"backbone ms":>16}{"step ms":>16}{"layers":>8}'
            f'{"speedup bb/step":>17}{"of ideal bb/step":>18}')
    lines = [head + '   (ms: median / p90; of ideal: best of repeats)', '-' * len(head)]
    for name, r in results.items():
        for mode in ('full', 'dysl'):
            m = r[mode]
            bb, st = m['backbone_ms'], m['step_ms']
            row = (f'{name:<12}{mode:<6}{bb["median"]:>8.2f} /{bb["p90"]:>6.2f}'
                   f'{st["median"]:>8.2f} /{st["p90"]:>6.2f}{m["layer_fraction"]:>8.0%}')
            if mode == 'dysl':
                sp, fi = r['speedup'], r['fraction_of_ideal']
                row += (f'{sp["backbone"]:>9.2f}x /{sp["step"]:>5.2f}x'
                        f'{fi["backbone"]:>11.2f} /{fi["step"]:>5.2f}')
            lines.append(row)
    lines.append('')
    lines.append(f'{"per step (best, ms)":<18}{"layers":>9}{"adapters":>10}{"controllers":>13}'
                 f'{"host overhead":>15}{"other":>8}   unit ms: layer / adapter / controller')
    for name, r in results.items():
        u = r['unit_ms']
        mean = lambda k: np.mean([v for n, v in u.items() if n.startswith(k)] or [0.0])  # noqa
        for mode in ('full', 'dysl'):
            b = r[mode]['breakdown_ms']
            tail = ''
            if mode == 'full':
                tail = (f'   {mean("layer_"):.3f} / {mean("adapter_"):.3f} / '
                        f'{mean("controller_"):.3f}')
            lines.append(f'{name + " " + mode:<18}{b["layers"]:>9.2f}{b["adapters"]:>10.2f}'
                         f'{b["controllers"]:>13.2f}{b["host_overhead"]:>15.2f}'
                         f'{b["other"]:>8.2f}{tail}')
    return '\n'.join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--scale', choices=('default',) + tuple(SCALES), default='default',
                        help='default: the default VLA (trained, or fresh); llama7b: a '
                             'Llama-7B-shaped backbone, fp16, CUDA; llama-tiny: its CPU smoke')
    parser.add_argument('--model', type=Path, default=None,
                        help='trained model directory (default: models/default when it has '
                             'vla.json and dysl.json; otherwise a fresh default-size model)')
    parser.add_argument('--trace', type=Path, default=None,
                        help='decision trace JSON to replay (default: the real policy for a '
                             'trained model, a synthetic trace otherwise)')
    parser.add_argument('--save-trace', type=Path, default=None,
                        help='write the DySL decisions of the first backend as a trace')
    parser.add_argument('--backends', nargs='+', choices=BACKENDS, default=None,
                        help='backends to time (default: every one available here)')
    parser.add_argument('--steps', type=int, default=40, help='observations (default 40)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed passes over the observations (default 5)')
    parser.add_argument('--unit-repeats', type=int, default=5,
                        help='timings per unit and repeat for the breakdown (default 5)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default=None,
                        help='torch device (default: cuda for the Llama scales when present, '
                             'else cpu)')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch and ONNX Runtime (default 0: all cores)')
    parser.add_argument('--export', type=Path, default=None,
                        help='export directory to reuse or fill (default: a temporary one)')
    parser.add_argument('--engine-cache', type=Path, default=None,
                        help='TensorRT engine cache (default: <export>/engines)')
    parser.add_argument('--precision', choices=('fp16', 'fp32'), default='fp16',
                        help='TensorRT precision (default fp16)')
    parser.add_argument('--seed', type=int, default=0, help='seed (default 0)')
    parser.add_argument('--json', metavar='PATH', help='write every figure as JSON')


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.repeats < 1 or args.unit_repeats < 1:
        raise SystemExit('--steps, --repeats and --unit-repeats must be >= 1')
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    subject = build_subject(args)
    backends = args.backends or available_backends(subject)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix='dysl-bench-') as tmp:
        for backend in backends:
            runner = make_runner(backend, subject, args, Path(tmp))
            results[backend] = measure(runner, subject, args.repeats, args.unit_repeats)
            if hasattr(runner, 'close'):
                runner.close()
    first = next(iter(results.values()))
    same = {name: r['decisions'] == first['decisions'] for name, r in results.items()}
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    device = (torch.cuda.get_device_name(0) if subject.device == 'cuda'
              else f'CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}')
    device += f', load average {load:.1f} (other processes make timings noisy)'
    print(f'latency: {subject.description}')
    print(f'device: {device}; {len(subject.observations)} observations x {args.repeats} '
          f'repeats per mode, modes interleaved step by step')
    for note in subject.notes:
        print(f'note: {note}')
    print(format_table(results))
    if not all(same.values()):
        print(f'WARNING: DySL decisions differ between backends: {same}')
    else:
        print(f'DySL decisions identical across {", ".join(results)}')
    unstable = [n for n, r in results.items() if not r['decisions_repeat_exactly']]
    if unstable:
        print(f'WARNING: decisions changed between passes on {unstable}; the breakdown '
              'assumes they repeat')
    verdict = ', '.join(f'{n} {r["fraction_of_ideal"]["backbone"]:.2f} '
                        f'({"met" if r["fraction_of_ideal"]["backbone"] >= TARGET else "missed"})'
                        for n, r in results.items())
    print(f'target: DySL backbone at >= {TARGET} of ideal: {verdict}')
    if args.save_trace:
        decisions = [Decision(tuple(d['allow_points']), tuple(d['skipped_at']), d['verified'])
                     for d in first['decisions']]
        DecisionTrace(subject.spec.layout, decisions,
                      f'{next(iter(results))} run of {subject.description}').save(args.save_trace)
        print(f'decision trace written to {args.save_trace}')
    if args.json:
        Path(args.json).write_text(json.dumps({
            'model': subject.description, 'device': device, 'notes': subject.notes,
            'config': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                       if not k.startswith('_')},
            'decisions_identical': same,
            'trace': None if subject.trace is None else subject.trace.to_dict(),
            'backends': {n: {k: v for k, v in r.items() if k != 'decisions'}
                         for n, r in results.items()},
        }, indent=2) + '\n')
    return 0
