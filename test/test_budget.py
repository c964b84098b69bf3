"""The latency budget (LatencyBudget): its p95, its bounded shift and hysteresis, protected
steps, and a replay of a recorded skip/latency trace holding the budget's p95."""
import numpy as np
import pytest

from dysl_ros.layout import Layout
from dysl_ros.runtime.budget import LatencyBudget
from dysl_ros.skipping import UnitSegments, walk_segments


def test_p95_is_over_the_last_window_steps():
    budget = LatencyBudget(10.0, window=20)
    assert budget.p95_ms is None and not budget.unmet
    latencies = np.random.default_rng(0).uniform(0, 20, 50)
    for ms in latencies:
        budget.observe(ms)
    assert budget.p95_ms == pytest.approx(np.percentile(latencies[-20:], 95))


def test_shift_rises_fast_to_its_bound_and_comes_back_19_times_slower():
    budget = LatencyBudget(10.0, max_shift=0.3, step=0.02)
    budget.observe(11.0)
    assert budget.shift == pytest.approx(0.019)
    for _ in range(19):  # each step under the budget gives back 0.001
        budget.observe(9.0)
    assert budget.shift == pytest.approx(0.0, abs=1e-12)
    budget.observe(9.0)
    assert budget.shift == 0.0  # never below 0
    for _ in range(100):
        budget.observe(50.0)
    assert budget.shift == 0.3 and budget.unmet  # bounded; and the budget cannot be met
    report = budget.report()
    assert report == {'latency_budget_ms': 10.0, 'latency_p95_ms': 50.0, 'threshold_shift': 0.3,
                      'max_threshold_shift': 0.3, 'latency_budget_unmet': True}


def test_protected_steps_run_unshifted():
    budget = LatencyBudget(10.0)
    for _ in range(5):
        budget.observe(20.0)
    assert budget.shift > 0 and budget.shift_for(protecting=False) == budget.shift
    assert budget.shift_for(protecting=True) == 0.0


@pytest.mark.parametrize('kwargs', [dict(budget_ms=0.0), dict(budget_ms=-1.0),
                                    dict(budget_ms=10.0, window=0),
                                    dict(budget_ms=10.0, step=0.0),
                                    dict(budget_ms=10.0, max_shift=0.01, step=0.02)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match='invalid'):
        LatencyBudget(**kwargs)


# ---- replay of a recorded trace -------------------------------------------------------------
LAYOUT = Layout(24, (0, 8, 16))
THRESHOLD = 0.5  # the model's


class _Recorded:
    """Units whose controllers answer one step's recorded probabilities; layers cost nothing
    here: the step's latency comes from the trace's cost model."""

    def __init__(self, probs: np.ndarray):
        self.probs = probs  # (num_layers,)

    def layer(self, i, x):
        return x

    def adapter(self, j, x):
        return x

    def controller(self, j, x):
        return float(self.probs[j])


def _recorded_trace(steps: int = 4000, seed: int = 0):
    """Per step the controllers' probabilities (T, num_layers), the allow points (T, n_seg)
    and whether the guidance protected a drop (T,): steady motion with a drop every ~100
    steps that holds the points deep for 3 steps, as a DySL run records them."""
    rng = np.random.default_rng(seed)
    depth = np.arange(LAYOUT.num_layers) % 8 / 8  # deeper in a segment: readier to skip
    probs = np.clip(rng.beta(2, 3, (steps, LAYOUT.num_layers)) + 0.3 * depth, 0, 1)
    protecting = np.zeros(steps, bool)
    for start in rng.choice(steps - 3, steps // 100, replace=False):
        protecting[start:start + 3] = True
    low = np.array([s.static + 1 for s in LAYOUT.segments])
    allow = np.where(protecting[:, None], low + 4, low)
    return probs, allow, protecting


def _latency_ms(layers: int, rng: np.random.Generator) -> float:
    """Cost model of the trace: 4 ms outside the backbone, 1 ms a layer, gamma jitter."""
    return 4.0 + layers + rng.gamma(2.0, 0.5)


def _replay(trace, budget=None, shift=0.0, seed=1):
    """Latency (T,), layers run (T,) and threshold (T,) of each step of the trace, the
    threshold moved by `budget` as GuidedPolicy moves it, or by a fixed `shift`."""
    rng = np.random.default_rng(seed)
    out = []
    for probs, allow, protecting in zip(*trace):
        if budget is not None:
            shift = budget.shift_for(protecting)
        threshold = THRESHOLD - shift
        _, skips = walk_segments(None, LAYOUT, UnitSegments(_Recorded(probs), LAYOUT), allow,
                                 threshold)
        ms = _latency_ms(len(skips.layers_run), rng)
        if budget is not None:
            budget.observe(ms)
        out.append((ms, len(skips.layers_run), threshold))
    return tuple(np.array(v) for v in zip(*out))


def test_replay_holds_a_reachable_budget_at_p95_within_10_percent():
    trace = _recorded_trace()
    unshifted, layers_unshifted, _ = _replay(trace)
    floor, _, _ = _replay(trace, shift=0.3)
    budget_ms = 14.0  # reachable: between the trace's p95 at the model's threshold and its floor
    assert np.percentile(floor, 95) < 0.9 * budget_ms < 1.1 * budget_ms < \
        np.percentile(unshifted, 95)
    budget = LatencyBudget(budget_ms)
    latency, layers, thresholds = _replay(trace, budget)
    settled = slice(500, None)
    p95 = np.percentile(latency[settled], 95)
    assert abs(p95 - budget_ms) <= 0.1 * budget_ms, f'p95 {p95:.2f} ms, budget {budget_ms} ms'
    assert not budget.unmet
    protected = trace[2]
    assert np.all(thresholds[protected] == THRESHOLD)
    assert np.all(thresholds[settled][~protected[settled]] < THRESHOLD)
    # the cost: layers the budget skips on top of DySL's own skipping
    assert layers[settled].mean() < layers_unshifted[settled].mean()


def test_an_unreachable_budget_saturates_the_shift_and_says_so():
    trace = _recorded_trace(steps=1000)
    budget = LatencyBudget(5.0)  # below even the 4 ms + static layers every step runs
    _replay(trace, budget)
    report = budget.report()
    assert report['latency_budget_unmet'] and report['threshold_shift'] == 0.3
    assert report['latency_p95_ms'] > 5.0
