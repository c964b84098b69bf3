"""Prior-post skipping guidance on a synthetic stop-and-grasp trajectory (numpy only)."""

import math

import numpy as np
import pytest

from dysl_ros.guidance import (Guidance, GuidanceConfig, calibrate_tau, continuity_series,
                               parse_overrides)

TAU = 0.035
NOISE = 0.01 * TAU  # steady-motion jitter per action dimension (1% of the tau scale)
# 30 layers; segment 1 has no dynamic layer, segment 2 is long enough to show an uncapped stride.
SEGMENTS = [(0, 5), (5, 6), (6, 26), (26, 30)]
LOW = np.array([1, 6, 7, 27])
HIGH = np.array([5, 6, 26, 30])
# Arm velocities (normalised delta actions) on a 1/16 grid so that the ramp below is exact in
# float64: steady and ramp steps then give dC == 0.0 exactly, not +-1e-17.
V0 = np.array([0.375, -0.25, 0.25, 0.0, 0.125, -0.125])
V1 = np.array([-0.25, 0.375, 0.125, 0.0625, -0.125, 0.25])
N_PRE = 24
DECEL, TOGGLE = N_PRE, N_PRE + 2  # first braking step; gripper closes
N_EVENT = 16  # 2 braking, 1 toggle, 5 hold, 8 ramp


def make_trajectory(n_pre: int = N_PRE, n_post: int = 96, noise: float = 0.0, seed: int = 0,
                    scale: float = 1.0) -> np.ndarray:
    """Constant velocity, brake to 0 in 2 steps, close the gripper, hold, ramp up, constant."""
    v0, v1 = scale * V0, scale * V1
    rows = [np.r_[v0, -1.0]] * n_pre
    rows += [np.r_[0.5 * v0, -1.0], np.r_[0.0 * v0, -1.0], np.r_[0.0 * v0, 1.0]]
    rows += [np.r_[0.0 * v0, 1.0]] * 5
    rows += [np.r_[v1 * i / 8, 1.0] for i in range(1, 9)]
    rows += [np.r_[v1, 1.0]] * n_post
    actions = np.array(rows)  # (T, 7)
    if noise:
        rng = np.random.default_rng(seed)
        steady = np.r_[np.arange(n_pre), np.arange(n_pre + N_EVENT, len(actions))]
        actions[steady] += rng.normal(0.0, noise, (len(steady), actions.shape[1]))
    return actions


def reference_continuity(actions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1 written directly over the whole trajectory (independent of the ring buffer)."""
    norms = np.linalg.norm(np.diff(actions, axis=0), axis=1)  # (T - 1,), norms[t - 1] = ||d_t||
    c = np.full(len(actions), np.nan)
    for t in range(1, len(actions)):
        c[t] = -norms[max(0, t - k):t].mean()
    dc = np.full(len(actions), np.nan)
    dc[2:] = c[2:] - c[1:-1]
    return c, dc


def run(guidance: Guidance, actions: np.ndarray, h: int) -> tuple[np.ndarray, list[bool]]:
    """Feed a trajectory chunk by chunk; return P after each push (n_chunks, n_seg) and onsets."""
    points, onsets = [], []
    for start in range(0, len(actions), h):
        chunk = actions[start:start + h]  # (H, D)
        onsets.append(guidance.is_onset(chunk))
        guidance.push(chunk)
        points.append(guidance.allow_points)
    return np.array(points), onsets


def test_continuity_values_and_ring_buffer_agree():
    actions = make_trajectory(noise=NOISE, seed=3)
    c_ref, dc_ref = reference_continuity(actions, 5)
    c, dc = continuity_series(actions, history=5)
    np.testing.assert_allclose(c, c_ref, rtol=1e-12, atol=1e-15, equal_nan=True)
    np.testing.assert_allclose(dc, dc_ref, rtol=1e-12, atol=1e-15, equal_nan=True)
    assert np.isnan(c[0]) and np.isnan(dc[:2]).all() and np.isfinite(dc[2:]).all()
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    assert guidance.continuity() == (None, None)
    for t, action in enumerate(actions):
        guidance.push(action[None])
        got_c, got_dc = guidance.continuity()
        assert (got_c is None) == (t < 1) and (got_dc is None) == (t < 2)
        if t >= 2:  # same code path: bit-identical, not just close
            assert got_c == c[t] and got_dc == dc[t]
    # the drop itself, by hand: braking adds ||V0||/2 to the window, the gripper toggle adds 2
    assert dc[DECEL] == pytest.approx(-np.linalg.norm(V0) / 2 / 5, abs=1e-3)
    assert dc[TOGGLE] == pytest.approx(-2.0 / 5, abs=2e-3)


def test_points_move_deep_at_the_drop_and_release_slowly_action_by_action():
    actions = make_trajectory()
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    np.testing.assert_array_equal(guidance.allow_points, LOW)
    points, onsets = run(guidance, actions, h=1)
    _, dc = continuity_series(actions)
    # steady motion before the drop: dC == 0 (defined from t=2) keeps P at S_k + 1
    np.testing.assert_array_equal(points[:DECEL], np.tile(LOW, (DECEL, 1)))
    # braking: |dC| / tau = 1.56 -> stride 1, twice; toggle: 0.4 / 0.035 = 11.4 -> stride 11
    assert math.floor(abs(dc[DECEL]) / TAU) == 1 and math.floor(abs(dc[TOGGLE]) / TAU) == 11
    np.testing.assert_array_equal(points[DECEL], np.minimum(LOW + 1, HIGH))
    np.testing.assert_array_equal(points[DECEL + 1], np.minimum(LOW + 2, HIGH))
    np.testing.assert_array_equal(points[TOGGLE], [5, 6, 20, 30])  # capped at E_k except seg 2
    # afterwards: one release_step per step with dC >= 0, hold on any negative dC, never a jump
    steps = np.diff(points[TOGGLE:], axis=0)  # (n, n_seg)
    assert steps.min() >= -1 and steps.max() == 0
    seg2 = steps[:, 2]
    later = dc[TOGGLE + 1:]
    assert (seg2[later < 0] == 0).all()  # the ramp-up (small negative dC) blocks release
    assert (seg2[(later >= 0) & (points[TOGGLE:-1, 2] > LOW[2])] == -1).all()
    assert (seg2 == -1).sum() == 20 - 7
    np.testing.assert_array_equal(points[-1], LOW)  # fully released by the end
    # verification fires once, at the first braking step
    assert [t for t, o in enumerate(onsets) if o] == [DECEL]


def test_points_follow_the_most_alarming_dc_per_chunk():
    actions = make_trajectory()
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    points, onsets = run(guidance, actions, h=8)
    drop = DECEL // 8  # chunk 3 holds braking, toggle and hold
    np.testing.assert_array_equal(points[:drop], np.tile(LOW, (drop, 1)))
    # one stride from the worst dC (toggle, 11), not the sum over the chunk (1 + 1 + 11)
    np.testing.assert_array_equal(points[drop], [5, 6, 18, 30])
    # the next chunk is the ramp: its small negative dCs block the release
    np.testing.assert_array_equal(points[drop + 1], points[drop])
    # then one release_step per chunk, not one per action
    seg2 = points[drop + 1:, 2]
    np.testing.assert_array_equal(seg2[:12], [18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7])
    np.testing.assert_array_equal(points[-1], LOW)
    assert [i for i, o in enumerate(onsets) if o] == [drop]


@pytest.mark.parametrize('n_pre', range(17, 25))
def test_onset_fires_once_wherever_the_drop_falls_in_the_chunk(n_pre):
    actions = make_trajectory(n_pre=n_pre, noise=NOISE, seed=n_pre)
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    points, onsets = run(guidance, actions, h=8)
    assert [i for i, o in enumerate(onsets) if o] == [n_pre // 8]
    assert points[(n_pre + 2) // 8, 2] > LOW[2]  # the chunk holding the toggle protects


@pytest.mark.parametrize('h', [1, 8])
def test_steady_jitter_never_verifies_nor_protects(h):
    rng = np.random.default_rng(7)
    actions = np.r_[V0, -1.0] + rng.normal(0.0, NOISE, (400, 7))  # (T, 7)
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    points, onsets = run(guidance, actions, h)
    _, dc = continuity_series(actions)
    assert (dc[2:] < 0).sum() > 100  # the jitter does make dC negative, often
    assert not any(onsets)
    np.testing.assert_array_equal(points, np.tile(LOW, (len(points), 1)))
    # without the margin the same jitter would be an onset every few steps
    loose = Guidance(GuidanceConfig(tau=TAU, drop_margin=1e-6), SEGMENTS)
    assert sum(run(loose, actions, h)[1]) > 10


def _onsets(speeds: list[float], drop_margin: float) -> list[int]:
    """Steps verified on a 1-D path moving speeds[t - 1] into step t, judged action by action
    with K = 1, so that dC_t = speeds[t - 2] - speeds[t - 1] exactly (tau = 1)."""
    guidance = Guidance(GuidanceConfig(tau=1.0, history=1, drop_margin=drop_margin), [(0, 2)])
    out = []
    for t, position in enumerate(np.cumsum(np.r_[0.0, speeds])):
        action = np.array([[position]])  # (1, 1)
        if guidance.is_onset(action):
            out.append(t)
        guidance.push(action)
    return out


def _sign_changes(speeds: list[float]) -> list[int]:
    """dysl-method.md section 2's onset, dC_t < 0 <= dC_(t-1), written directly."""
    dc = {t: speeds[t - 2] - speeds[t - 1] for t in range(2, len(speeds) + 1)}
    return [t for t in dc if t - 1 in dc and dc[t] < 0 <= dc[t - 1]]


def test_onset_is_a_margin_below_minus_tau_not_the_docs_sign_change():
    """RECON deviation (Guidance.is_onset): a drop is dC < -drop_margin * tau, an onset the
    first drop after a step that was not one; the doc's rule is the limit of a zero margin."""
    shallow = [1.0, 1.0, 1.25, 1.25, 1.25]  # dC from step 2: 0, -0.25, 0, 0
    shallow_then_deep = [1.0, 1.0, 1.25, 2.5, 2.5]  # dC: 0, -0.25, -1.25, 0
    assert _sign_changes(shallow) == [3] and _sign_changes(shallow_then_deep) == [3]
    for speeds in (shallow, shallow_then_deep):  # a vanishing margin: the doc's rule
        assert _onsets(speeds, drop_margin=1e-9) == _sign_changes(speeds)
    # the default margin (0.5): a dip shallower than tau / 2 is no onset ...
    assert _onsets(shallow, drop_margin=0.5) == []
    # ... and a deep drop is one even right after a shallow negative dC (the doc: not)
    assert _onsets(shallow_then_deep, drop_margin=0.5) == [4]


def test_any_negative_dc_in_a_chunk_blocks_release():
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    actions = make_trajectory(n_post=0)
    guidance.push(actions[:DECEL + 3])  # steady, braking, toggle: one chunk
    raised = guidance.allow_points
    np.testing.assert_array_equal(raised, [5, 6, 18, 30])
    hold = np.tile(np.r_[0.0 * V0, 1.0], (8, 1))  # (8, 7) standing still
    guidance.push(hold)  # window still leaving the drop: dC >= 0 throughout -> release once
    np.testing.assert_array_equal(guidance.allow_points, raised - [1, 0, 1, 1])
    nudged = hold.copy()
    nudged[3, 0] += 1e-3  # one tiny negative dC (far above -tau), the rest >= 0
    before = guidance.allow_points
    guidance.push(nudged)
    assert min(continuity_series(np.r_[hold, nudged])[1][8:]) < 0
    np.testing.assert_array_equal(guidance.allow_points, before)
    guidance.push(hold)  # the nudge's two differences leave the window: all dC >= 0 again
    np.testing.assert_array_equal(guidance.allow_points, before - [1, 0, 1, 1])


def test_release_margin_lets_jittery_chunks_release():
    actions = make_trajectory(noise=NOISE, seed=11)
    strict = run(Guidance(GuidanceConfig(tau=TAU), SEGMENTS), actions, h=8)[0]
    loose = run(Guidance(GuidanceConfig(tau=TAU, release_margin=0.5), SEGMENTS), actions, h=8)[0]
    assert strict[-1, 2] > LOW[2]  # 8 non-negative jittery dCs in a row almost never happen
    np.testing.assert_array_equal(loose[-1], LOW)
    assert np.diff(loose[:, 2]).min() >= -1


def test_chunk_policy_last_uses_only_the_last_dc():
    actions = make_trajectory()
    guidance = Guidance(GuidanceConfig(tau=TAU, chunk_policy='last'), SEGMENTS)
    guidance.push(actions[:DECEL])
    guidance.push(actions[DECEL:DECEL + 3])  # ends on the toggle: moves
    np.testing.assert_array_equal(guidance.allow_points, [5, 6, 18, 30])
    guidance.reset()
    guidance.push(actions[:DECEL])
    guidance.push(actions[DECEL:DECEL + 5])  # holds the toggle but ends on dC == 0: no move
    np.testing.assert_array_equal(guidance.allow_points, LOW)


def test_fixed_stride_and_release_step():
    actions = make_trajectory()
    cfg = GuidanceConfig(tau=TAU, adaptive_stride=False, fixed_stride=3, release_step=2)
    points, _ = run(Guidance(cfg, SEGMENTS), actions, h=1)
    np.testing.assert_array_equal(points[TOGGLE, 2], 7 + 3 + 3 + 3)
    steps = np.diff(points[:, 2])
    assert set(steps.tolist()) <= {3, 0, -2, -1}  # -1 only when clipped at S_k + 1
    np.testing.assert_array_equal(points[-1], LOW)


def test_ablations():
    actions = make_trajectory()
    no_pre = Guidance(GuidanceConfig(tau=TAU, pre_skip=False), SEGMENTS)
    points, onsets = run(no_pre, actions, h=8)
    np.testing.assert_array_equal(points, np.tile(LOW, (len(points), 1)))
    assert sum(onsets) == 1  # verification still works without pre-skip
    assert no_pre.continuity()[0] is not None
    no_verify = Guidance(GuidanceConfig(tau=TAU, verify=False), SEGMENTS)
    points, onsets = run(no_verify, actions, h=1)
    assert not any(onsets) and points[:, 2].max() == 20


def test_reset_clears_history_and_points():
    actions = make_trajectory()
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    first = run(guidance, actions[:DECEL + 8], h=8)
    assert guidance.allow_points[2] > LOW[2]
    guidance.reset()
    np.testing.assert_array_equal(guidance.allow_points, LOW)
    assert guidance.continuity() == (None, None)
    guidance.push(actions[:2])  # one C, no dC yet: must not reuse the old episode's C
    assert guidance.continuity()[1] is None
    guidance.reset()
    second = run(guidance, actions[:DECEL + 8], h=8)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    guidance.reset()
    guidance.push(np.zeros((3, 4)))  # a new episode may have another action size


def test_segment_without_dynamic_layers():
    guidance = Guidance(GuidanceConfig(tau=TAU), [(0, 1), (1, 2)])
    points, _ = run(guidance, make_trajectory(), h=1)
    np.testing.assert_array_equal(points, np.tile([1, 2], (len(points), 1)))


def test_state_dict_round_trip_reproduces_decisions():
    actions = make_trajectory(noise=NOISE, seed=5)
    cut = DECEL + 1  # mid-drop: buffer, C, dC and raised points all matter
    original = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    for t in range(cut):
        original.push(actions[t:t + 1])
    state = original.state_dict()
    assert set(state) >= {'buffer', 'c', 'dc', 'allow_points'}
    assert isinstance(state['buffer'], np.ndarray) and state['buffer'].shape == (6, 7)
    assert isinstance(state['c'], float) and isinstance(state['dc'], float)
    state['allow_points'][:] = 0  # a copy: the guidance must not see this
    state = original.state_dict()
    restored = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    restored.load_state_dict(state)
    assert restored.continuity() == original.continuity()
    rest = actions[cut:]
    a, b = run(original, rest, h=1), run(restored, rest, h=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and not any(a[1])  # the onset was before the cut
    assert original.continuity() == restored.continuity()
    empty = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    empty.load_state_dict(Guidance(GuidanceConfig(tau=TAU), SEGMENTS).state_dict())
    assert empty.continuity() == (None, None)
    with pytest.raises(ValueError, match='segments'):
        Guidance(GuidanceConfig(tau=TAU), [(0, 5), (5, 30)]).load_state_dict(state)
    with pytest.raises(ValueError, match='history'):
        Guidance(GuidanceConfig(tau=TAU, history=3), SEGMENTS).load_state_dict(state)
    bad = dict(state, allow_points=np.array([0, 6, 7, 27]))
    with pytest.raises(ValueError, match='allow_points'):
        restored.load_state_dict(bad)


@pytest.mark.parametrize('field, value', [
    ('tau', 0.0), ('tau', -1.0), ('tau', float('nan')), ('tau', float('inf')), ('tau', 'x'),
    ('history', 0), ('history', 2.5), ('history', True), ('fixed_stride', 0),
    ('release_step', 0), ('release_step', -1), ('drop_margin', 0.0), ('drop_margin', 1.5),
    ('release_margin', -0.1), ('release_margin', 2.0), ('chunk_policy', 'mean'),
    ('adaptive_stride', 1), ('pre_skip', 'yes'), ('verify', None),
])
def test_bad_config_raises_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as err:
        GuidanceConfig(**{field: value})
    assert field in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize('segments', [
    [], [(0, 0)], [(3, 2)], [(0, 5), (6, 9)], [(-1, 4)], [(0, 5, 7)], [5],
])
def test_bad_segments_raise(segments):
    with pytest.raises(ValueError, match='segments'):
        Guidance(GuidanceConfig(), segments)


def test_bad_chunks_raise():
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    for chunk in (np.zeros(7), np.zeros((0, 7)), np.full((2, 7), np.nan)):
        with pytest.raises(ValueError, match='chunk'):
            guidance.push(chunk)
        with pytest.raises(ValueError, match='chunk'):
            guidance.is_onset(chunk)
    guidance.push(np.zeros((2, 7)))
    with pytest.raises(ValueError, match='D=6'):
        guidance.push(np.zeros((1, 6)))
    assert guidance.continuity() == (0.0, None)  # the bad chunks were not committed


def test_is_onset_does_not_commit():
    actions = make_trajectory()
    guidance = Guidance(GuidanceConfig(tau=TAU), SEGMENTS)
    guidance.push(actions[:DECEL])
    state = guidance.state_dict()
    assert guidance.is_onset(actions[DECEL:DECEL + 8])
    after = guidance.state_dict()
    np.testing.assert_array_equal(state['buffer'], after['buffer'])
    assert (state['c'], state['dc']) == (after['c'], after['dc'])
    # verification replaces the chunk: a calmer re-prediction is judged on its own
    calm = np.tile(actions[DECEL - 1], (8, 1))
    assert not guidance.is_onset(calm)


def test_calibrate_tau_between_steady_jitter_and_grasp_drop():
    # scripted-expert-like demos: varied speeds and lengths, float-level noise only
    demos = [make_trajectory(16 + 3 * s, 40 + 5 * s, noise=1e-12, seed=s, scale=0.8 + 0.1 * s)
             for s in range(5)]
    tau = calibrate_tau(demos)
    jitter = max(np.nanmax(np.abs(continuity_series(make_trajectory(noise=NOISE, seed=s))[1][
        N_PRE + N_EVENT + 6:])) for s in range(5))
    grasp = min(-continuity_series(d)[1][16 + 3 * s + 2] for s, d in enumerate(demos))
    assert grasp == pytest.approx(0.4, abs=1e-6)
    assert jitter < tau < grasp
    assert calibrate_tau(demos, percentile=50.0) < tau < calibrate_tau(demos, percentile=99.0)
    # demos with real jitter: a noise floor above the jitter recovers the same band
    jittery = [make_trajectory(16 + 3 * s, 40 + 5 * s, noise=NOISE, seed=s, scale=0.8 + 0.1 * s)
               for s in range(5)]
    assert jitter < calibrate_tau(jittery, noise_floor=10 * jitter) < grasp
    # the calibrated tau drives the guidance end to end: one onset, points protect at the grasp
    guidance = Guidance(GuidanceConfig(tau=tau), SEGMENTS)
    points, onsets = run(guidance, make_trajectory(noise=NOISE, seed=9), h=8)
    assert sum(onsets) == 1 and points[:, 2].max() > LOW[2]


def test_calibrate_tau_rejects_nothing_to_calibrate():
    with pytest.raises(ValueError, match='episode'):
        calibrate_tau([])
    with pytest.raises(ValueError, match='nothing to calibrate'):
        calibrate_tau([np.zeros((2, 7)), np.ones((40, 7))])  # too short; constant
    with pytest.raises(ValueError, match='percentile'):
        calibrate_tau([make_trajectory()], percentile=0.0)
    with pytest.raises(ValueError, match='history'):
        calibrate_tau([make_trajectory()], history=0)


def test_only_executed_actions_enter_the_history():
    # Steady motion, predicted 8 ahead but re-planned every 2 steps: the unexecuted tail of
    # each chunk must not sit beside the next chunk's head.
    segments = [(0, 4)]
    velocity = np.array([0.1, 0.0])
    both = Guidance(GuidanceConfig(tau=0.05, executed_actions=2), segments)
    whole = Guidance(GuidanceConfig(tau=0.05), segments)
    for step in range(0, 40, 2):
        chunk = (step + np.arange(8))[:, None] * velocity  # positions-like ramp, steady dC
        chunk[2:] += 0.5  # a tail that is never executed, far from the next chunk's head
        assert not both.is_onset(chunk)
        both.push(chunk)
        whole.push(chunk)
    assert both.continuity()[1] == pytest.approx(0.0, abs=1e-12)
    assert list(both.allow_points) == [1]
    assert list(whole.allow_points) != [1]  # the whole chunk reads the tail as drops
    with pytest.raises(ValueError, match='executed_actions'):
        GuidanceConfig(executed_actions=-1)


def test_guidance_overrides_are_typed_and_checked():
    assert parse_overrides(['tau=0.3', 'executed_actions=4', 'verify=false']) == \
        {'tau': 0.3, 'executed_actions': 4, 'verify': False}
    with pytest.raises(ValueError, match='KEY=VALUE'):
        parse_overrides(['speed=3'])
    with pytest.raises(ValueError, match='not a int'):
        parse_overrides(['history=five'])
