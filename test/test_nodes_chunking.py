"""ChunkExecutor (the controller's logic, no ROS): splicing, ensembling, dropping, holding."""
import dataclasses

import numpy as np
import pytest

from dysl_ros.runtime.chunking import ChunkExecutor, ChunkExecutorConfig
from dysl_ros.runtime.stats import PolicyStats, StepRecord

NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
DT = 0.05


def chunk(h=4, start=0.0, gripper=1.0):
    """(H, 7): dx = start + 0.001 * i (distinct per action), gripper constant."""
    a = np.zeros((h, 7))
    a[:, 0] = start + 0.001 * np.arange(h)
    a[:, 6] = gripper
    return a


def test_chunk_runs_one_action_per_tick_then_holds_with_the_gripper_kept():
    ex = ChunkExecutor(ChunkExecutorConfig())
    a = chunk(4)
    assert ex.add(10.0, NAMES, a, now=10.01) is None
    commands = [ex.tick(10.01 + k * DT) for k in range(6)]
    for k in range(4):
        np.testing.assert_allclose(commands[k][0], a[k])
        assert commands[k][1] is False
    for command, hold in commands[4:]:
        assert hold
        np.testing.assert_allclose(command, [0, 0, 0, 0, 0, 0, 1.0])  # gripper unchanged
    assert ex.stats.hold_ticks == 2 and not ex.busy


def test_stop_drops_the_chunk_in_progress():
    ex = ChunkExecutor(ChunkExecutorConfig())
    ex.add(10.0, NAMES, chunk(8, gripper=0.5), now=10.0)
    ex.tick(10.0)
    ex.stop()  # the policy deactivated (an empty chunk)
    command, hold = ex.tick(10.05)
    assert hold and not ex.busy
    np.testing.assert_allclose(command, [0, 0, 0, 0, 0, 0, 0.5])


def test_hold_before_any_chunk_uses_the_initial_gripper():
    ex = ChunkExecutor(ChunkExecutorConfig(initial_absolute=(0.25,)))
    command, hold = ex.tick(0.0)
    assert hold
    np.testing.assert_allclose(command, [0, 0, 0, 0, 0, 0, 0.25])


def test_latency_compensation_starts_at_the_action_for_now():
    ex = ChunkExecutor(ChunkExecutorConfig())
    a = chunk(8)
    ex.add(10.0, NAMES, a, now=10.0 + 2.5 * DT)  # arrives 2.5 periods late
    np.testing.assert_allclose(ex.tick(10.13)[0], a[2])
    plain = ChunkExecutor(ChunkExecutorConfig(latency_compensation=False))
    plain.add(10.0, NAMES, a, now=10.0 + 2.5 * DT)
    np.testing.assert_allclose(plain.tick(10.13)[0], a[0])


def test_replace_switches_to_the_newest_chunk():
    ex = ChunkExecutor(ChunkExecutorConfig())
    first, second = chunk(8, 0.0), chunk(8, 0.01)
    ex.add(10.0, NAMES, first, now=10.0)
    ex.tick(10.0)
    ex.tick(10.05)
    ex.add(10.1, NAMES, second, now=10.1)
    np.testing.assert_allclose(ex.tick(10.1)[0], second[0])


def test_ensemble_averages_every_chunk_covering_the_tick():
    cfg = ChunkExecutorConfig(mode='ensemble', ensemble_decay=0.0)
    ex = ChunkExecutor(cfg)
    first, second = chunk(8, 0.0), chunk(8, 0.01)
    ex.add(10.0, NAMES, first, now=10.0)
    ex.tick(10.0)  # first[0]
    ex.add(10.05, NAMES, second, now=10.05)
    command, _ = ex.tick(10.05)  # first[1] and second[0], equal weights
    np.testing.assert_allclose(command, (first[1] + second[0]) / 2)
    weighted = ChunkExecutor(dataclasses.replace(cfg, ensemble_decay=1.0))
    weighted.add(10.0, NAMES, first, now=10.0)
    weighted.tick(10.0)
    weighted.add(10.05, NAMES, second, now=10.05)
    w = np.array([1.0, np.exp(-1.0)])  # the older chunk weighs more (ACT)
    expected = (w[0] * first[1] + w[1] * second[0]) / w.sum()
    np.testing.assert_allclose(weighted.tick(10.05)[0], expected)


def test_stale_chunks_are_dropped_and_the_executor_holds():
    ex = ChunkExecutor(ChunkExecutorConfig(max_chunk_age=0.2))
    assert ex.add(10.0, NAMES, chunk(8), now=10.3) == 'stale'
    assert ex.tick(10.3)[1] is True
    assert ex.stats.dropped['stale'] == 1 and ex.stats.accepted == 0


def test_a_chunk_that_ran_past_its_horizon_expires_even_without_ticks():
    ex = ChunkExecutor(ChunkExecutorConfig(max_chunk_age=0.2))
    ex.add(10.0, NAMES, chunk(4), now=10.0)
    ex.tick(10.0)
    _, hold = ex.tick(11.0)  # the controller stalled for a second
    assert hold


def test_chunks_of_a_previous_episode_are_dropped_and_the_gripper_resets():
    ex = ChunkExecutor(ChunkExecutorConfig())
    ex.add(10.0, NAMES, chunk(8, gripper=1.0), now=10.0)
    ex.tick(10.0)
    ex.reset(now=10.1)
    assert ex.add(10.05, NAMES, chunk(8), now=10.12) == 'previous_episode'
    command, hold = ex.tick(10.15)
    assert hold and command[6] == 0.0


def test_names_are_reordered_and_wrong_names_or_values_rejected():
    ex = ChunkExecutor(ChunkExecutorConfig())
    a = chunk(4)
    order = [6, 0, 1, 2, 3, 4, 5]
    ex.add(10.0, [NAMES[i] for i in order], a[:, order], now=10.0)
    np.testing.assert_allclose(ex.tick(10.0)[0], a[0])
    assert ex.add(10.0, NAMES[:-1] + ('grip',), a, now=10.0) == 'joint_names'
    bad = a.copy()
    bad[1, 2] = np.nan
    assert ex.add(10.0, NAMES, bad, now=10.0) == 'non_finite'
    assert ex.add(10.0, NAMES, a, now=10.0, times=np.arange(4) * 0.1) == 'period'
    assert ex.add(10.0, NAMES, a[:, :5], now=10.0) == 'shape'


def test_implausible_stamps_and_malformed_schedules_are_refused():
    ex = ChunkExecutor(ChunkExecutorConfig(max_future_stamp=0.25, max_chunk_points=16))
    a, times = chunk(4), np.arange(4) * DT
    assert ex.add(10.0, NAMES, a, now=10.0, times=times) is None
    assert ex.add(-1.0, NAMES, a, now=10.0, times=times) == 'stamp'
    assert ex.add(float('nan'), NAMES, a, now=10.0, times=times) == 'stamp'
    assert ex.add(1010.0, NAMES, a, now=10.0, times=times) == 'future'
    assert ex.add(10.3, NAMES, a, now=10.0, times=times) == 'future'
    assert ex.add(10.2, NAMES, a, now=10.0, times=times) is None  # within max_future_stamp
    assert ex.add(10.0, NAMES, chunk(17), now=10.0) == 'too_long'
    assert ex.add(10.0, NAMES, chunk(16), now=10.0) is None
    for bad in ([0, DT, DT, 3 * DT],  # only the first step is right
                [0, DT, 3 * DT, 2 * DT],  # not increasing
                [-DT, 0, DT, 2 * DT],  # starts before the observation
                [0, DT, 2 * DT]):  # one time short
        assert ex.add(10.0, NAMES, a, now=10.0, times=bad) == 'period', bad
    assert ex.add(10.0, NAMES, a, now=10.0, times=times + 0.5 * DT) is None
    assert ex.stats.dropped == {'stamp': 2, 'future': 2, 'too_long': 1, 'period': 4}


def test_commands_are_clipped_to_the_limits():
    ex = ChunkExecutor(ChunkExecutorConfig())
    a = chunk(2)
    a[0, 0], a[0, 6] = 0.5, 3.0
    ex.add(10.0, NAMES, a, now=10.0)
    command, _ = ex.tick(10.0)
    assert command[0] == pytest.approx(0.02) and command[6] == pytest.approx(1.0)
    assert ex.stats.clipped_ticks == 1
    command, hold = ex.tick(10.05)
    command, hold = ex.tick(10.1)
    assert hold and command[6] == pytest.approx(1.0)  # holds the clipped gripper value


JUMP = (0.002, 0.002, 0.002, 0.01, 0.01, 0.01, 0.5)


def run_switch(cfg, second_gripper=0.0):
    """first (dx 0.000..., gripper 1) for two ticks, then second (dx 0.010..., gripper 0)
    arrives: the commands of four ticks and the two chunks."""
    ex = ChunkExecutor(cfg)
    first, second = chunk(8, 0.0, gripper=1.0), chunk(8, 0.01, gripper=second_gripper)
    ex.add(10.0, NAMES, first, now=10.0)
    commands = [ex.tick(10.0)[0], ex.tick(10.05)[0]]
    ex.add(10.1, NAMES, second, now=10.1)
    commands += [ex.tick(10.1)[0], ex.tick(10.15)[0]]
    return ex, commands, first, second


def test_switch_jump_bounds_the_command_at_a_switch_only():
    ex, commands, first, second = run_switch(ChunkExecutorConfig(max_switch_jump=JUMP))
    np.testing.assert_allclose(commands[0], first[0])  # first command: nothing before it
    np.testing.assert_allclose(commands[1], first[1])  # within a chunk: not bounded
    expected = first[1].copy()
    expected[0] += 0.002  # 0.001 -> 0.010 bounded to 0.001 + 0.002
    expected[6] -= 0.5  # gripper 1.0 -> 0.0 bounded to 0.5
    np.testing.assert_allclose(commands[2], expected)
    np.testing.assert_allclose(commands[3], second[1])  # then the new chunk as it is
    assert ex.stats.switch_ticks == 1 and ex.stats.limited_switches == 1


def test_switch_jump_within_a_chunk_and_after_a_hold_changes_nothing():
    ex = ChunkExecutor(ChunkExecutorConfig(max_switch_jump=(0.0,) * 7))
    a = chunk(4, gripper=1.0)
    a[:, 1] = [0.0, 0.02, -0.02, 0.01]  # big steps inside the chunk
    ex.add(10.0, NAMES, a, now=10.0)
    for k in range(4):
        np.testing.assert_allclose(ex.tick(10.0 + k * DT)[0], a[k])
    assert ex.tick(10.2)[1]  # a hold
    b = chunk(4, 0.01, gripper=0.0)
    ex.add(10.25, NAMES, b, now=10.25)
    np.testing.assert_allclose(ex.tick(10.25)[0], b[0])  # after a hold: not a switch
    assert ex.stats.switch_ticks == 0 and ex.stats.limited_switches == 0


def test_switch_jump_off_is_as_before_and_a_small_switch_is_not_limited():
    ex, commands, _, second = run_switch(ChunkExecutorConfig())
    np.testing.assert_allclose(commands[2], second[0])
    assert ex.stats.switch_ticks == 1 and ex.stats.limited_switches == 0
    wide = ChunkExecutorConfig(max_switch_jump=(1.0,) * 7)
    ex, commands, _, second = run_switch(wide)
    np.testing.assert_allclose(commands[2], second[0])
    assert ex.stats.switch_ticks == 1 and ex.stats.limited_switches == 0


def test_switch_jump_in_ensemble_mode_bounds_a_joining_chunk():
    cfg = ChunkExecutorConfig(mode='ensemble', ensemble_decay=0.0, max_switch_jump=JUMP)
    ex, commands, first, second = run_switch(cfg, second_gripper=0.0)
    np.testing.assert_allclose(commands[1], first[1])  # alone: not bounded
    mean = (first[2] + second[0]) / 2  # dx 0.006, gripper 0.5
    expected = mean.copy()
    expected[0] = first[1][0] + 0.002  # 0.001 -> 0.006 bounded to 0.003
    np.testing.assert_allclose(commands[2], expected)  # gripper 1 -> 0.5: within 0.5
    np.testing.assert_allclose(commands[3], (first[3] + second[1]) / 2)  # same voters
    assert ex.stats.switch_ticks == 1 and ex.stats.limited_switches == 1


def run_prefix(first_len=8, second_len=8, blend=3):
    """first (dx 0.000..., gripper 1) for two ticks, then second (dx 0.010..., gripper 0)
    takes over at 10.1 in prefix mode: the executor, both chunks and the next commands."""
    ex = ChunkExecutor(ChunkExecutorConfig(mode='prefix', blend_actions=blend))
    first, second = chunk(first_len, 0.0, gripper=1.0), chunk(second_len, 0.01, gripper=0.0)
    ex.add(10.0, NAMES, first, now=10.0)
    ex.tick(10.0)
    ex.tick(10.05)
    assert ex.add(10.1, NAMES, second, now=10.1) is None
    ticks = [ex.tick(10.1 + k * DT) + (ex.last_tick,) for k in range(6)]
    return ex, first, second, ticks


def test_prefix_ramps_the_new_chunk_in_with_exact_weights():
    assert ChunkExecutorConfig().blend_actions == 4
    ex, first, second, ticks = run_prefix(blend=3)
    for k, w in enumerate([0.25, 0.5, 0.75]):  # (k + 1) / (3 + 1); the old chunk advances
        np.testing.assert_allclose(ticks[k][0], (1 - w) * first[2 + k] + w * second[k])
        assert ticks[k][0][6] == pytest.approx(1 - w)  # gripper 1 -> 0 in steps
    for k in (3, 4, 5):  # the blend is over: the new chunk alone
        np.testing.assert_allclose(ticks[k][0], second[k])
    assert [t[2].switch for t in ticks] == [True] + [False] * 5
    assert ex.stats.switch_ticks == 1 and ex.stats.hold_ticks == 0


def test_prefix_old_chunk_running_out_mid_blend_leaves_the_new_one_alone():
    ex, first, second, ticks = run_prefix(first_len=3, blend=4)
    np.testing.assert_allclose(ticks[0][0], 0.8 * first[2] + 0.2 * second[0])
    for k in range(1, 6):  # first had no action left after first[2]
        np.testing.assert_allclose(ticks[k][0], second[k])
    assert ex.stats.switch_ticks == 1


def test_prefix_new_chunk_running_out_mid_blend_does_not_bring_the_old_one_back():
    ex, first, second, ticks = run_prefix(second_len=2, blend=4)
    np.testing.assert_allclose(ticks[1][0], 0.6 * first[3] + 0.4 * second[1])
    assert [t[1] for t in ticks] == [False, False, True, True, True, True]
    assert not ex.busy


def test_prefix_with_one_chunk_or_after_a_hold_is_replace():
    ex = ChunkExecutor(ChunkExecutorConfig(mode='prefix'))
    a, b = chunk(2), chunk(4, 0.01)
    ex.add(10.0, NAMES, a, now=10.0)
    assert [ex.tick(10.0 + k * DT)[1] for k in range(3)] == [False, False, True]
    ex.add(10.15, NAMES, b, now=10.15)
    np.testing.assert_allclose(ex.tick(10.15)[0], b[0])  # nothing left to blend from


@pytest.mark.parametrize('mode', ['replace', 'ensemble', 'prefix'])
def test_a_late_chunk_never_replays_its_elapsed_actions(mode):
    ex = ChunkExecutor(ChunkExecutorConfig(mode=mode, ensemble_decay=0.0, blend_actions=2))
    first, second = chunk(8, 0.0), chunk(8, 0.01)
    ex.add(10.0, NAMES, first, now=10.0)
    for k in range(4):
        ex.tick(10.0 + k * DT)  # first[0..3]
    ex.add(10.05, NAMES, second, now=10.2)  # 3 periods late: second[0..2] are in the past
    ticks = []
    while not ticks or not ticks[-1][1]:
        ticks.append(ex.tick(10.2 + len(ticks) * DT))
    commands = [c for c, hold in ticks if not hold]
    assert len(commands) == 5  # second[3..7], once each
    second_part, old_weight = {'replace': (1.0, 0.0), 'ensemble': (0.5, 0.5),
                               'prefix': (1 / 3, 2 / 3)}[mode]
    np.testing.assert_allclose(commands[0], old_weight * first[4] + second_part * second[3])
    np.testing.assert_allclose(commands[-1], second[7])
    if mode != 'ensemble':  # ensemble: first[4..7] vote alongside second[3..6]
        np.testing.assert_allclose(commands[-3:], second[5:])  # prefix: after its blend


def test_chunk_age_per_tick_and_in_the_stats():
    ex = ChunkExecutor(ChunkExecutorConfig())
    assert ex.last_tick is None
    ex.add(10.0, NAMES, chunk(2), now=10.03)
    ex.tick(10.03)
    assert ex.last_tick.chunk_age == pytest.approx(0.03)
    assert not ex.last_tick.hold and not ex.last_tick.switch
    ex.tick(10.08)
    assert ex.last_tick.chunk_age == pytest.approx(0.08)
    ex.tick(10.13)
    assert ex.last_tick.hold and ex.last_tick.chunk_age is None
    np.testing.assert_allclose(ex.stats.chunk_age_ms, [30.0, 80.0])  # holds add nothing
    voting = ChunkExecutor(ChunkExecutorConfig(mode='ensemble', ensemble_decay=1.0))
    voting.add(10.0, NAMES, chunk(8), now=10.0)
    voting.tick(10.0)
    voting.add(10.05, NAMES, chunk(8, 0.01), now=10.06)
    voting.tick(10.1)  # ages 0.1 (oldest, weight 1) and 0.05 (weight e^-1)
    w = np.array([1.0, np.exp(-1.0)])
    assert voting.last_tick.chunk_age == pytest.approx((w @ [0.1, 0.05]) / w.sum())
    assert voting.last_tick.switch
    ex, _, _, ticks = run_prefix(blend=3)  # prefix: the new chunk's age, blend or not
    assert [t[2].chunk_age for t in ticks] == pytest.approx([k * DT for k in range(6)])


def test_chunk_ages_kept_are_bounded():
    ex = ChunkExecutor(ChunkExecutorConfig())
    for start in (0.0, 30.0, 60.0):  # 1500 ticks in all
        ex.add(start, NAMES, chunk(500), now=start)
        for k in range(500):
            ex.tick(start + k * DT)
    assert len(ex.stats.chunk_age_ms) == 1000  # the latest
    assert ex.stats.chunk_age_ms[-1] == pytest.approx(499 * DT * 1e3)


@pytest.mark.parametrize('value', [(0.1,) * 6, (0.1,) * 6 + (-0.1,), (0.1,) * 6 + (np.inf,),
                                   (0.1,) * 6 + (np.nan,)])
def test_switch_jump_refuses_bad_values(value):
    with pytest.raises(ValueError, match='max_switch_jump'):
        ChunkExecutorConfig(max_switch_jump=value)


@pytest.mark.parametrize('field,value', [('mode', 'blend'), ('control_rate', 0.0),
                                         ('lower_limits', (0.0,)), ('absolute_joints', ('x',)),
                                         ('joint_names', ('a', 'a')), ('blend_actions', 0),
                                         ('blend_actions', 2.0)])
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        ChunkExecutorConfig(**{field: value})


def test_policy_stats_windows_and_episodes():
    stats = PolicyStats(window=2)
    for i, ms in enumerate([10.0, 20.0, 30.0]):
        stats.step(StepRecord(episode=1 if i < 2 else 2, layers_run=6, layers_guided=6,
                              layers_total=12, verified=i == 0, policy_ms=ms,
                              camera_to_chunk_ms=ms + 1))
    stats.error('stale')
    s = stats.summary()
    assert s['steps'] == 3 and s['verifications'] == 1 and s['errors_stale'] == 1
    assert s['policy_ms_p50'] == pytest.approx(25.0)  # window of the last two
    assert s['skip_rate'] == pytest.approx(0.5)
    assert stats.episode_summary()['steps'] == 1  # only episode 2's step
