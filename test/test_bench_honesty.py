"""The benchmarks' figures on units of known cost must come out exact.

A fake clock stands in for time.perf_counter and moves only when a unit runs, by that unit's
cost in COST_MS: every latency, speedup and fraction of ideal then has one value, worked out
by hand below. Inverting the speedup, dropping the verification re-run's time or not counting
its layers changes them, so each makes a test here fail.
"""
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from dysl_ros.bench import latency
from dysl_ros.bench.closed_loop import run_job, summarise, wilson
from dysl_ros.bench.trace import Decision, DecisionTrace, replay_policy
from dysl_ros.guidance import GuidanceConfig
from dysl_ros.layout import Layout
from dysl_ros.model import VLA, VLAConfig
from dysl_ros.runtime.policy import GuidedPolicy, ModelSpec

TINY = VLAConfig(n_layers=8, d_model=32, n_heads=2, image_size=32, patch_size=8)
LAYOUT = Layout(8, (0, 3, 6))  # segments [0-2], [3-5], [6-7]
COST_MS = {'embed': 4.0, 'layer': 1.0, 'adapter': 0.25, 'controller': 0.125, 'head': 0.5}
# DySL's decisions, one step each; replay asks one controller and runs one adapter per skip
STEPS = [
    Decision((1, 4, 7), (None, None, None), False),  # no skip: 8 layers
    Decision((1, 4, 7), (1, 4, None), False),  # layers 0, 3, 6, 7 + 2 skips
    Decision((1, 4, 7), (1, 4, None), True),  # the same, re-run from layer 0: + 8 layers + head
    Decision((3, 6, 7), (None, None, 7), False),  # layers 0-6 + 1 skip
]
DYSL_LAYERS = [8, 4, 12, 7]
# backbone ms per step: layers + 0.375 per skip (+ the re-run's 8 layers and head 0.5)
DYSL_MS = [8.0, 4.75, 4.75 + 8.5, 7.375]
FULL_MS = 8.0
FRONT_MS = COST_MS['embed'] + COST_MS['head']  # the rest of a step: embed and head
SPEEDUP = FULL_MS / 7.6875  # from the medians: DYSL_MS's is (7.375 + 8) / 2
SPEEDUP_MEAN = FULL_MS / (33.375 / 4)  # from the means
# full depth's mean ms x DySL's mean layer fraction (7.75 / 8) / DySL's mean ms
FRACTION_OF_IDEAL = FULL_MS * (31 / 4 / 8) / (33.375 / 4)
TOL = 1e-9


class FakeClock:
    """Seconds, as time.perf_counter gives them, moving only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


class TimedUnits:
    """A runner of units whose every call costs its COST_MS on the fake clock."""

    name = 'timed'

    def __init__(self, clock: FakeClock, chunk: np.ndarray):
        self.clock, self.chunk = clock, chunk

    def _run(self, unit: str, x):
        self.clock.advance(COST_MS[unit])
        return x

    def embed(self, images, tokens):
        return self._run('embed', 0)

    def layer(self, i, x):
        return self._run('layer', x)

    def adapter(self, j, x):
        return self._run('adapter', x)

    def controller(self, j, x):
        return self._run('controller', 0.0)

    def head(self, x):
        return self._run('head', self.chunk.copy())

    def synchronize(self):
        pass


@dataclass
class FakeEnv:
    """An episode of `length` control steps; seeds divisible by 3 succeed."""

    spec: ModelSpec
    length: int

    def reset(self, seed, instruction):
        self.seed, self.step_count = seed, 0
        self.task = SimpleNamespace(name='pick_red')
        return self._obs(instruction)

    def _obs(self, instruction='pick up the red block'):
        s = self.spec.image_size
        images = {c: np.zeros((s, s, 3), np.uint8) for c in self.spec.cameras}
        return SimpleNamespace(images=images, instruction=instruction)

    def step(self, action):
        self.step_count += 1
        return self._obs(), self.step_count == self.length, {}

    def target_distance(self):
        return 0.1

    @property
    def success(self):
        return self.seed % 3 == 0

    @property
    def max_progress(self):
        return 0.0


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time, 'perf_counter', fake.perf_counter)
    return fake


@pytest.fixture(scope='module')
def spec():
    return ModelSpec.from_model(VLA(TINY), LAYOUT)


def _units(clock, spec):
    return TimedUnits(clock, np.zeros((spec.chunk_size, len(spec.action_names)), np.float32))


def test_closed_loop_figures_are_exact(clock, spec):
    units, trace = _units(clock, spec), DecisionTrace(LAYOUT, STEPS)
    policies = {'full': GuidedPolicy(units, spec, GuidanceConfig(), skipping=False,
                                     profile=True),
                'dysl': replay_policy(trace, units, spec, profile=True)}
    seeds = [0, 1, 2]
    # 4 inferences of 4 executed actions per episode: each decision once per episode
    episodes = run_job(policies, FakeEnv(spec, length=16), 'pick up the red block', seeds, 4)
    # every method on each seed in turn, the first method rotating
    assert [(e.seed, e.method) for e in episodes] == [
        (0, 'full'), (0, 'dysl'), (1, 'dysl'), (1, 'full'), (2, 'full'), (2, 'dysl')]
    s = summarise(episodes, ['full', 'dysl'], ['pick_red'])
    full, dysl = s['full'], s['dysl']
    assert full['backbone_ms'] == pytest.approx({'median': FULL_MS, 'p90': FULL_MS,
                                                 'mean': FULL_MS}, rel=TOL)
    assert full['layers_run'] == {'mean': 8.0, 'p90': 8.0}
    assert full['speedup'] == pytest.approx({'median': 1.0, 'mean': 1.0}, rel=TOL)
    assert full['fraction_of_ideal'] == pytest.approx(1.0, rel=TOL)
    ms = np.tile(DYSL_MS, len(seeds))
    assert dysl['backbone_ms'] == pytest.approx(
        {'median': 7.6875, 'p90': float(np.percentile(ms, 90)), 'mean': 33.375 / 4}, rel=TOL)
    assert dysl['layers_run'] == {'mean': 7.75, 'p90': 12.0}  # the re-run's layers count
    assert dysl['layer_fraction'] == 7.75 / 8
    assert dysl['verified_fraction'] == 0.25
    assert dysl['speedup'] == pytest.approx({'median': SPEEDUP, 'mean': SPEEDUP_MEAN}, rel=TOL)
    assert dysl['fraction_of_ideal'] == pytest.approx(FRACTION_OF_IDEAL, rel=TOL)
    rate = dysl['success']['pick_red']
    assert (rate['successes'], rate['episodes']) == (1, 3)  # seed 0
    assert (rate['low'], rate['high']) == pytest.approx(wilson(1, 3))
    assert dysl['success_mean'] == rate


def test_wilson_interval_matches_published_values():
    # statsmodels.stats.proportion.proportion_confint(k, n, method='wilson')
    assert wilson(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert wilson(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)


def test_latency_bench_figures_are_exact(clock, spec):
    observations = FakeEnv(spec, 1)
    obs = observations.reset(0, 'pick up the red block')
    subject = latency.Subject(vla=None, dysl=None, guidance=GuidanceConfig(), spec=spec,
                              observations=[(obs.images, obs.instruction)] * len(STEPS),
                              trace=DecisionTrace(LAYOUT, STEPS), description='timed units',
                              device='cpu')
    r = latency.measure(_units(clock, spec), subject, repeats=2, unit_repeats=2,
                        progress=False)
    full, dysl = r['full'], r['dysl']
    for stat in ('median', 'p90', 'best', 'mean'):
        assert full['backbone_ms'][stat] == pytest.approx(FULL_MS, rel=TOL)
        assert full['step_ms'][stat] == pytest.approx(FULL_MS + FRONT_MS, rel=TOL)
    assert dysl['backbone_ms']['median'] == pytest.approx(7.6875, rel=TOL)
    assert dysl['backbone_ms']['best'] == pytest.approx(33.375 / 4, rel=TOL)
    assert full['layer_fraction'] == 1.0 and dysl['layer_fraction'] == 7.75 / 8
    assert r['speedup']['backbone'] == pytest.approx(SPEEDUP, rel=TOL)
    assert r['speedup']['step'] == pytest.approx(
        (FULL_MS + FRONT_MS) / (7.6875 + FRONT_MS), rel=TOL)
    assert r['fraction_of_ideal']['backbone'] == pytest.approx(FRACTION_OF_IDEAL, rel=TOL)
    ideal_step = FULL_MS + FRONT_MS - FULL_MS * (1 - 7.75 / 8)
    assert r['fraction_of_ideal']['step'] == pytest.approx(
        ideal_step / (33.375 / 4 + FRONT_MS), rel=TOL)
    # the breakdown: each unit's cost x how often DySL ran it (2 + 2 + 1 skips in 4 steps)
    b = dysl['breakdown_ms']
    assert b['layers'] == pytest.approx(7.75, rel=TOL)
    assert b['adapters'] == pytest.approx(5 / 4 * COST_MS['adapter'], rel=TOL)
    assert b['controllers'] == pytest.approx(5 / 4 * COST_MS['controller'], rel=TOL)
    assert b['host_overhead'] == 0.0
