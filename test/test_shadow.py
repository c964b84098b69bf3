"""The full-depth shadow check: ShadowCheck alone, then on GuidedPolicy over a tiny model."""
import numpy as np
import pytest
import torch

from dysl_ros.guidance import GuidanceConfig
from dysl_ros.runtime.policy import GuidedPolicy, ModelSpec
from dysl_ros.runtime.shadow import ShadowCheck, chunk_drift
from dysl_ros.runtime.torch_runner import TorchRunner
from test_policy import LAYOUT, _full_depth_chunk, _observations, model  # noqa: F401 (fixture)


def test_chunk_drift_is_the_mean_absolute_difference_over_the_std():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.5, 2.0], [2.0, 8.0]])
    std = np.array([0.5, 2.0])
    assert chunk_drift(a, b, std) == pytest.approx((1.0 + 0.0 + 2.0 + 2.0) / 4)
    assert chunk_drift(a, a) == 0.0 and chunk_drift(a, b) == pytest.approx(5.5 / 4)
    with pytest.raises(ValueError, match='shapes'):
        chunk_drift(a, b[:1])


def test_every_nth_step_is_shadowed_and_a_drift_over_the_threshold_falls_back_m_steps():
    check = ShadowCheck(every_n=3, drift_threshold=0.2, fallback_steps=2)
    plan = [check.begin_step() for _ in range(6)]
    assert plan == [(False, False), (False, False), (False, True)] * 2
    assert not check.observe(0.2) and check.fallback_left == 0  # at the threshold: not above
    assert check.observe(0.5) and check.fallback_left == 2 and check.falling_back
    # two full-depth steps, unshadowed and uncounted; then the count starts over
    assert [check.begin_step() for _ in range(5)] == [(True, False), (True, False),
                                                     (False, False), (False, False),
                                                     (False, True)]
    assert check.report() == {
        'shadow_every': 3, 'shadow_drift_threshold': 0.2, 'shadow_last_drift': 0.5,
        'shadow_max_drift': 0.5, 'shadow_runs': 2, 'shadow_fallbacks': 1,
        'shadow_fallback_steps_left': 0}
    check.observe(0.1)
    assert check.report()['shadow_last_drift'] == 0.1
    assert check.report()['shadow_max_drift'] == 0.5


@pytest.mark.parametrize('kwargs', [dict(every_n=0), dict(drift_threshold=-0.1),
                                    dict(drift_threshold=float('nan')),
                                    dict(fallback_steps=0)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ShadowCheck(**{'every_n': 1, 'drift_threshold': 0.1, 'fallback_steps': 1, **kwargs})


@pytest.fixture
def skipping_model(model):
    """test_policy's tiny model with every controller saying skip (every guided pass skips)."""
    vla, dysl = model
    with torch.no_grad():
        for c in dysl.controllers.values():
            c.out.bias.fill_(30.0)
    return vla, dysl


def _policy(model, shadow=None):
    vla, dysl = model
    spec = ModelSpec.from_model(vla, LAYOUT)
    # no verification, no pre-skip: every guided step skips, none is verified
    policy = GuidedPolicy(TorchRunner(vla, dysl), spec,
                          GuidanceConfig(pre_skip=False, verify=False))
    policy.shadow = shadow
    return policy


def test_the_shadow_drift_is_the_guided_chunks_normalised_l1_from_full_depth(skipping_model):
    vla, _ = skipping_model
    policy = _policy(skipping_model, ShadowCheck(every_n=2, drift_threshold=1e9,
                                                 fallback_steps=1))
    spec, instruction = policy.spec, 'open the drawer'
    ring = []
    for i, images in enumerate(_observations(4, seed=3)):
        chunk, stats = policy.step(images, instruction)
        assert stats.layers_run == 3 and not stats.shadow_fallback
        assert 'shadow' not in stats.latency_ms and stats.shadow_drift is None
        ring.append(policy.guidance.state_dict())
        drift = policy.shadow_pass()
        if i % 2 == 0:  # steps 1 and 3 are not due
            assert drift is None and stats.shadow_drift is None
            continue
        full = _full_depth_chunk(vla, spec, images, instruction)
        by_hand = np.mean(np.abs(chunk - full) / spec.action_std)
        assert drift == pytest.approx(by_hand, rel=1e-5) and drift > 0
        assert stats.shadow_drift == drift and stats.latency_ms['shadow'] > 0
        # the full-depth chunk never reaches the guidance
        for k, v in policy.guidance.state_dict().items():
            np.testing.assert_array_equal(v, ring[-1][k])
    assert policy.shadow.runs == 2 and policy.shadow.fallbacks == 0


def test_a_drift_over_the_threshold_runs_full_depth_for_exactly_m_steps(skipping_model):
    vla, _ = skipping_model
    policy = _policy(skipping_model, ShadowCheck(every_n=1, drift_threshold=0.0,
                                                 fallback_steps=3))
    spec, instruction = policy.spec, 'open the drawer'
    fallback = []
    for images in _observations(9, seed=4):
        chunk, stats = policy.step(images, instruction)
        policy.shadow_pass()
        fallback.append(stats.shadow_fallback)
        if stats.shadow_fallback:
            assert stats.layers_run == 8 and stats.skipped_at == [None, None, None]
            assert stats.threshold is None and stats.shadow_drift is None
            np.testing.assert_allclose(chunk, _full_depth_chunk(vla, spec, images, instruction),
                                       atol=1e-6)
        else:
            assert stats.layers_run == 3 and stats.shadow_drift > 0
    assert fallback == [False, True, True, True] * 2 + [False]
    assert policy.shadow.fallbacks == 3 and policy.shadow.runs == 3


def test_an_unrun_shadow_pass_runs_before_the_next_step_outside_its_latency(skipping_model):
    policy = _policy(skipping_model, ShadowCheck(every_n=1, drift_threshold=1e9,
                                                 fallback_steps=1))
    first, second = list(_observations(2, seed=5))
    _, stats = policy.step(first, 'open the drawer')
    assert stats.shadow_drift is None
    policy.step(second, 'open the drawer')
    assert stats.shadow_drift > 0 and policy.shadow.runs == 1


def test_without_a_shadow_check_nothing_changes(skipping_model):
    plain, shadowed = _policy(skipping_model), _policy(
        skipping_model, ShadowCheck(every_n=1, drift_threshold=1e9, fallback_steps=1))
    for images in _observations(4, seed=6):
        a, sa = plain.step(images, 'open the drawer')
        b, sb = shadowed.step(images, 'open the drawer')
        assert plain.shadow_pass() is None and shadowed.shadow_pass() is not None
        np.testing.assert_array_equal(a, b)
        assert sa.layer_ids == sb.layer_ids and not sa.shadow_fallback
        assert sa.shadow_drift is None and 'shadow' not in sa.latency_ms
