"""Full depth vs DySL on one runner: step timings, unit timings, host overhead, and the
figures built from them (see the package docstring)."""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ...runtime.policy import GuidedPolicy, ModelSpec
from ...runtime.runner import Runner, RunnerWrapper
from ..trace import Decision, DecisionTrace, replay_policy
from .subjects import Observation, Subject


class _Counting(RunnerWrapper):
    """Counts unit calls per step, passing everything through."""

    def __init__(self, inner: Runner):
        super().__init__(inner)
        self.calls: Counter = Counter()

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
