"""Full depth vs DySL through each execution path of one backend: step timings, launches
and host reads per step, unit timings and host overhead (unit path), and the figures built
from them (see the package docstring)."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from ...runtime.policy import GuidedPolicy, ModelSpec
from ...runtime.runner import Runner
from ..trace import Decision, DecisionTrace, replay_policy
from .subjects import Observation, Subject

MODES = ('full', 'dysl')
# Tensor -> Python value conversions: each one a host read (a sync where work is queued)
_READS = frozenset({'__bool__', '__float__', '__int__', '__index__', 'item', 'tolist'})


class _HostReads(TorchFunctionMode):
    """Counts the torch tensors read into Python values while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: Any = None) -> Any:
        self.count += getattr(func, '__name__', '') in _READS
        return func(*args, **(kwargs or {}))


class _Counting:
    """A runner passed through, counting what a step does: `calls` holds one launch per
    embed, unit or segment and head; `reads` the host reads of the backbone walk, 'inside'
    it (a controller's answer, or a runner deciding on the host inside a segment) and at its
    'end' (the one read of the skip positions)."""

    def __init__(self, inner: Runner):
        self.inner, self.name = inner, inner.name
        self.calls: Counter = Counter()
        self.reads: Counter = Counter()

    def clear(self) -> None:
        self.calls.clear()
        self.reads.clear()

    def _launch(self, name: str, fn: Any, *args: Any) -> Any:
        """fn(*args), one launch, counting the tensors it reads on the host."""
        self.calls[name] += 1
        with _HostReads() as reads:
            out = fn(*args)
        self.reads['inside'] += reads.count
        return out

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> Any:
        self.calls['embed'] += 1
        return self.inner.embed(images, tokens)

    def head(self, x: Any) -> np.ndarray:
        self.calls['head'] += 1
        return self.inner.head(x)

    def synchronize(self) -> None:
        self.inner.synchronize()


class _CountingUnits(_Counting):
    """The unit path: the policy walks the units on the host."""

    runs_segments = False

    def layer(self, i: int, x: Any) -> Any:
        return self._launch(f'layer_{i}', self.inner.layer, i, x)

    def adapter(self, j: int, x: Any) -> Any:
        return self._launch(f'adapter_{j}', self.inner.adapter, j, x)

    def controller(self, j: int, x: Any) -> float:
        self.calls[f'controller_{j}'] += 1
        self.reads['inside'] += 1  # a host float: the Runner protocol's one sync
        return self.inner.controller(j, x)


class _CountingSegments(_Counting):
    """The segment path: one launch per segment, skip positions read once per step."""

    runs_segments = True

    @property
    def layout(self) -> Any:
        return self.inner.layout

    def segment(self, k: int, x: Any, allow_from: int, threshold: float) -> tuple[Any, Any]:
        before = getattr(self.inner, 'replays', None)
        out = self._launch(f'segment_{k}', self.inner.segment, k, x, allow_from, threshold)
        if before is not None:  # a runner of graphs: a deciding segment replays several
            self.calls[f'segment_{k}'] += self.inner.replays - before - 1
        return out

    def read_skips(self, records: Sequence[Any]) -> list[int]:
        self.reads['end'] += 1
        return self.inner.read_skips(records)


def _counter(runner: Runner) -> _Counting:
    """The counting wrapper of the runner's path (segments when it runs them)."""
    return (_CountingSegments if getattr(runner, 'runs_segments', False)
            else _CountingUnits)(runner)


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


def _policies(runner: Any, subject: Subject) -> tuple[GuidedPolicy, GuidedPolicy]:
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


@dataclass
class _Counted:
    """What the counting pass saw in one step."""

    calls: Counter
    reads: Counter
    verified: bool


def _counts(steps: list[_Counted]) -> dict[str, Any]:
    """Per-step means of launches and host reads (verification re-runs included), and the
    distinct launch counts of the steps that were not verified (one pass each)."""
    n = len(steps)
    calls = sum((s.calls for s in steps), Counter())
    return {'launches_per_step': sum(calls.values()) / n,
            'launches_unverified': sorted({sum(s.calls.values()) for s in steps
                                           if not s.verified}),
            'calls_per_step': {u: c / n for u, c in sorted(calls.items())},
            'host_reads_per_step': {w: sum(s.reads[w] for s in steps) / n
                                    for w in ('inside', 'end')}}


def measure_paths(runners: Mapping[str, Runner], subject: Subject, repeats: int,
                  unit_repeats: int, progress: bool = True) -> dict[str, dict]:
    """Full depth vs DySL through each path's runner (name -> runner), every path and mode
    interleaved step by step; see the package docstring for every figure."""
    spec, obs = subject.spec, subject.observations
    name = next(iter(runners.values())).name
    # Pass 0 warms up and counts what each path and mode launches and reads per step
    # (decisions are deterministic, so the timed passes below do exactly the same).
    counters = {p: _counter(r) for p, r in runners.items()}
    policies = {p: _policies(c, subject) for p, c in counters.items()}
    counted: dict[str, dict[str, list[_Counted]]] = {p: {m: [] for m in MODES}
                                                     for p in runners}
    decisions: dict[str, list[dict]] = {p: [] for p in runners}
    for images, text in tqdm(obs, desc=f'{name} warm-up', disable=not progress, leave=False):
        for p, c in counters.items():
            for mode, policy in zip(MODES, policies[p]):
                c.clear()
                _, stats = policy.step(images, text)
                counted[p][mode].append(_Counted(Counter(c.calls), Counter(c.reads),
                                                 stats.verified))
                if mode == 'dysl':
                    decisions[p].append({'layer_ids': stats.layer_ids,
                                         'skipped_at': stats.skipped_at,
                                         'verified': stats.verified,
                                         'allow_points': stats.allow_points})
    policies = {p: _policies(r, subject) for p, r in runners.items()}
    rows = {p: {m: {'backbone': [], 'step': [], 'fraction': [], 'verified': []}
                for m in MODES} for p in runners}
    samples: dict[str, list[float]] = {}
    stable = {p: True for p in runners}  # every timed pass repeats the counting pass
    unit_path = next((p for p, c in counters.items() if not c.runs_segments), None)
    bar = tqdm(total=repeats * len(obs), desc=f'{name} timing', disable=not progress,
               leave=False)
    for _ in range(repeats):
        for pair in policies.values():
            for policy in pair:
                policy.reset()
        # units are timed in every repeat, so they see the same machine as the steps
        if unit_path is not None:
            for unit, values in unit_samples(runners[unit_path], spec, obs[0],
                                             unit_repeats).items():
                samples.setdefault(unit, []).extend(values)
        for t, (images, text) in enumerate(obs):
            for p, pair in policies.items():
                for mode, policy in zip(MODES, pair):
                    _, stats = policy.step(images, text)
                    if mode == 'dysl' and stats.layer_ids != decisions[p][t]['layer_ids']:
                        stable[p] = False
                    lat, r = stats.latency_ms, rows[p][mode]
                    r['backbone'].append(lat['backbone'] + lat.get('verify', 0.0))
                    r['step'].append(lat['total'])
                    r['fraction'].append(stats.layer_fraction)
                    r['verified'].append(float(stats.verified))
            bar.update()
    bar.close()
    out = {}
    for p, runner in runners.items():
        res: dict[str, Any] = {'decisions': decisions[p], 'decisions_repeat_exactly': stable[p]}
        for mode, r in rows[p].items():
            res[mode] = {'backbone_ms': _stats(r['backbone'], repeats),
                         'step_ms': _stats(r['step'], repeats),
                         'layer_fraction': float(np.mean(r['fraction'])),
                         'verified_rate': float(np.mean(r['verified'])),
                         **_counts(counted[p][mode])}
        if p == unit_path:
            _breakdown(res, samples, subject, runner, repeats)
        _ideal(res)
        out[p] = res
    return out


def measure(runner: Runner, subject: Subject, repeats: int, unit_repeats: int,
            progress: bool = True) -> dict:
    """Full depth vs DySL on one runner, through its own path (measure_paths)."""
    return measure_paths({runner.name: runner}, subject, repeats, unit_repeats,
                         progress)[runner.name]


def _breakdown(res: dict, samples: dict[str, list[float]], subject: Subject, runner: Runner,
               repeats: int) -> None:
    """The unit path's backbone per step as layers, adapters, controllers (each unit's best
    time x how often the mode ran it), host overhead and other (the rest)."""
    obs = subject.observations
    costs = {unit: float(np.min(v)) for unit, v in samples.items()}  # best, like the steps
    host = host_overhead(subject, res['decisions'],
                         runner.head(runner.embed(*subject.spec.prepare(*obs[0]))), repeats)
    res['unit_ms'] = costs
    for mode in MODES:
        m = res[mode]
        per_kind = {k: sum(c * costs[u] for u, c in m['calls_per_step'].items()
                           if u.startswith(k))
                    for k in ('layer', 'adapter', 'controller')}
        overhead = _stats(host[mode], repeats)['best']
        m['breakdown_ms'] = {'layers': per_kind['layer'], 'adapters': per_kind['adapter'],
                             'controllers': per_kind['controller'], 'host_overhead': overhead,
                             'other': m['backbone_ms']['best'] - sum(per_kind.values())
                             - overhead}


def _ideal(res: dict) -> None:
    """Speedup (medians) and fraction of ideal (best and mean) of one path: ideal DySL is
    this path's own full depth times DySL's layer fraction."""
    f, d = res['full'], res['dysl']
    frac = d['layer_fraction']
    res['speedup'] = {'backbone': f['backbone_ms']['median'] / d['backbone_ms']['median'],
                      'step': f['step_ms']['median'] / d['step_ms']['median']}
    for stat in ('best', 'mean'):
        ideal_bb = f['backbone_ms'][stat] * frac
        ideal_step = f['step_ms'][stat] - f['backbone_ms'][stat] * (1 - frac)
        suffix = '' if stat == 'best' else '_mean'
        res['ideal_ms' + suffix] = {'backbone': ideal_bb, 'step': ideal_step}
        res['fraction_of_ideal' + suffix] = {'backbone': ideal_bb / d['backbone_ms'][stat],
                                             'step': ideal_step / d['step_ms'][stat]}
