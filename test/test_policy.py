"""The policy executor (GuidedPolicy) over the torch runner: full depth, skipping, verification."""
import numpy as np
import pytest
import torch

from dysl_ros.guidance import GuidanceConfig
from dysl_ros.layout import Layout
from dysl_ros.model import DySL, VLA, VLAConfig
from dysl_ros.runtime.budget import LatencyBudget
from dysl_ros.runtime.policy import GuidedPolicy, ModelSpec
from dysl_ros.runtime.torch_runner import TorchRunner

TINY = VLAConfig(n_layers=8, d_model=64, n_heads=4, image_size=32, patch_size=8)
LAYOUT = Layout(8, (0, 3, 6))


def _observations(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {c: rng.integers(0, 256, (48, 48, 3), np.uint8) for c in TINY.cameras}


@pytest.fixture
def model():
    torch.manual_seed(0)
    vla = VLA(TINY).eval()
    vla.set_action_stats(np.linspace(-1, 1, 7), np.full(7, 0.5))
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    with torch.no_grad():
        for a in dysl.adapters.values():
            a.up.weight.normal_(std=0.05)
    return vla, dysl


def _full_depth_chunk(vla, spec, images, instruction):
    pixels, tokens = spec.prepare(images, instruction)
    with torch.inference_mode():
        chunk = vla(torch.from_numpy(pixels), torch.from_numpy(tokens))[0].numpy()
    return spec.unnormalise(chunk)


def test_full_depth_policy_equals_the_vla(model):
    vla, dysl = model
    spec = ModelSpec.from_model(vla, LAYOUT)
    policy = GuidedPolicy(TorchRunner(vla, dysl), spec, GuidanceConfig(tau=0.1), skipping=False)
    for images in _observations(3):
        chunk, stats = policy.step(images, 'pick up the red block')
        np.testing.assert_array_equal(chunk, _full_depth_chunk(vla, spec, images,
                                                               'pick up the red block'))
        assert chunk.shape == (TINY.chunk_size, 7)
        assert stats.layers_run == 8 and stats.layer_ids == list(range(8))
        assert stats.skipped_at == [None, None, None] and not stats.verified
        assert set(stats.latency_ms) == {'total'} and stats.latency_ms['total'] > 0


class _Syncs:
    """A runner that counts the policy's synchronize() calls, passing everything on."""

    def __init__(self, inner):
        self.inner, self.syncs = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def synchronize(self):
        self.syncs += 1
        self.inner.synchronize()


def test_stage_timing_is_opt_in(model):
    """By default a step never synchronises the runner (a controller's probability is the
    only per-unit host sync) and reports its wall time; profile=True times every stage."""
    vla, dysl = model
    spec = ModelSpec.from_model(vla, LAYOUT)
    runner = _Syncs(TorchRunner(vla, dysl))
    images = next(_observations(1))
    _, stats = GuidedPolicy(runner, spec, GuidanceConfig(), skipping=False).step(
        images, 'pick up the red block')
    assert runner.syncs == 0 and set(stats.latency_ms) == {'total'}
    assert stats.latency_ms['total'] > 0
    _, stats = GuidedPolicy(runner, spec, GuidanceConfig(), skipping=False, profile=True).step(
        images, 'pick up the red block')
    stages = ['prepare', 'embed', 'backbone', 'head']
    assert runner.syncs == len(stages) and list(stats.latency_ms) == stages + ['total']
    assert sum(stats.latency_ms[s] for s in stages) == pytest.approx(stats.latency_ms['total'])


def test_skipping_steps_verify_at_onsets_with_a_full_depth_chunk(model):
    vla, dysl = model
    with torch.no_grad():  # every controller says skip
        for c in dysl.controllers.values():
            c.out.bias.fill_(30.0)
    spec = ModelSpec.from_model(vla, LAYOUT)
    # Random frames make the chunks jump around: with a tiny tau, drops are everywhere.
    guidance = GuidanceConfig(tau=1e-4, pre_skip=False)
    policy = GuidedPolicy(TorchRunner(vla, dysl), spec, guidance)
    verified = 0
    for images in _observations(12, seed=1):
        chunk, stats = policy.step(images, 'open the drawer')
        assert stats.skipped_at == [1, 4, 7] and stats.layer_ids == [0, 3, 6]
        if stats.verified:
            verified += 1
            assert stats.layers_run == 3 + 8  # full depth from segment 0, the first to skip
            np.testing.assert_allclose(chunk, _full_depth_chunk(vla, spec, images,
                                                                'open the drawer'), atol=1e-6)
        else:
            assert stats.layers_run == 3
    assert verified > 0
    policy.reset()
    assert policy.guidance.continuity() == (None, None)


def test_without_verification_a_skipped_chunk_is_kept(model):
    vla, dysl = model
    with torch.no_grad():
        for c in dysl.controllers.values():
            c.out.bias.fill_(30.0)
    spec = ModelSpec.from_model(vla, LAYOUT)
    policy = GuidedPolicy(TorchRunner(vla, dysl), spec,
                          GuidanceConfig(tau=1e-4, pre_skip=False, verify=False))
    for images in _observations(12, seed=1):
        chunk, stats = policy.step(images, 'open the drawer')
        assert not stats.verified and stats.layers_run == 3


def test_a_latency_budget_skips_more_only_outside_protected_steps(model):
    """A budget no step meets lowers the threshold step by step, so the guided pass runs fewer
    layers than without a budget; while the guidance protects a drop (allow points held
    deep) the steps run at the model's threshold, though their latency still counts."""
    vla, dysl = model
    spec = ModelSpec.from_model(vla, LAYOUT)
    guidance = GuidanceConfig(pre_skip=False, verify=False)  # the points move only when set
    plain = GuidedPolicy(TorchRunner(vla, dysl), spec, guidance)
    budgeted = GuidedPolicy(TorchRunner(vla, dysl), spec, guidance)
    budgeted.budget = LatencyBudget(budget_ms=1e-3)
    layers, thresholds = [], []
    for images in _observations(10):
        _, base = plain.step(images, 'pick up the red block')
        _, stats = budgeted.step(images, 'pick up the red block')
        assert base.threshold == spec.skip_threshold
        layers.append((len(base.layer_ids), len(stats.layer_ids)))
        thresholds.append(stats.threshold)
    assert thresholds[0] == spec.skip_threshold and np.all(np.diff(thresholds) < 0)
    assert layers[0][0] == layers[0][1] and layers[-1][1] < layers[-1][0]
    assert sum(b for _, b in layers) < sum(a for a, _ in layers)

    shift = budgeted.budget.shift
    for policy in (plain, budgeted):  # a drop holds segment 0's allow point one layer deep
        state = policy.guidance.state_dict()
        state['allow_points'] = state['allow_points'] + np.array([1, 0, 0])
        policy.guidance.load_state_dict(state)
    for images in _observations(3, seed=2):
        _, base = plain.step(images, 'pick up the red block')
        _, stats = budgeted.step(images, 'pick up the red block')
        assert stats.threshold == spec.skip_threshold
        assert stats.layer_ids == base.layer_ids and stats.skipped_at == base.skipped_at
    assert budgeted.budget.shift > shift


def test_an_executed_window_gives_the_guidance_those_actions_of_each_chunk(model):
    """step(executed=(start, stop)): the guidance's history takes the chunk's actions
    start..stop-1 (those the controller runs when it drops the first ones as past and the next
    chunk takes over at stop), at most executed_actions of them; None, the default, is the
    chunk's first ones, bit for bit; a window past the end keeps the last action."""
    vla, dysl = model
    spec = ModelSpec.from_model(vla, LAYOUT)
    cfg = GuidanceConfig(executed_actions=3, history=8)  # 3 chunks x 3 actions fill K + 1
    default, whole, shifted, late = (GuidedPolicy(TorchRunner(vla, dysl), spec, cfg)
                                     for _ in range(4))
    windows = {shifted: (2, 4), late: (100, 103)}
    pushed = {shifted: [], late: []}
    for images in _observations(4, seed=7):
        default.step(images, 'open the drawer')
        whole.step(images, 'open the drawer', executed=(0, 3))
        for policy, (start, stop) in windows.items():
            chunk, _ = policy.step(images, 'open the drawer', executed=(start, stop))
            normalised = (chunk - spec.action_mean) / spec.action_std  # (H, D)
            pushed[policy].append(normalised[start:stop] if start < len(chunk)
                                  else normalised[-1:])
    for k, v in default.guidance.state_dict().items():
        np.testing.assert_array_equal(whole.guidance.state_dict()[k], v)
    for policy in (shifted, late):
        buffer = policy.guidance.state_dict()['buffer']  # the last K + 1 actions pushed
        np.testing.assert_allclose(buffer, np.concatenate(pushed[policy])[-len(buffer):],
                                   atol=1e-5)
    with pytest.raises(ValueError, match='executed'):
        shifted.step(images, 'open the drawer', executed=(3, 3))
