"""When the policy infers: InferenceSchedule alone, then the policy node's sync and async
schedules over real rclpy (a tiny model with 16-action chunks, added latency)."""
import dataclasses
import json
import math
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from dysl_ros.export.random_model import build_random_model
from dysl_ros.nodes.launcher import LocalLaunch, wait_for
from dysl_ros.nodes.policy_node import PolicyNode
from dysl_ros.nodes.qos import CHUNK_QOS, STATUS_QOS
from dysl_ros.runtime.schedule import InferenceSchedule
from test_nodes import (TINY, Camera, Collector, make_tester, policy_params, send_instruction,
                        stamp_ns, start_policy)

MS = 1_000_000  # ns
DT = 0.05  # s, the node's default control_rate 20 Hz


# ---- InferenceSchedule ----------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['frame', 'sync', 'async'])
def test_the_first_step_is_due_at_once(mode):
    s = InferenceSchedule(mode, executed_actions=4, dt=DT)
    assert s.due_ns is None and s.wait_s(0) == 0.0 and s.accepts(0)
    assert s.latency_p95_ms is None and s.executed_window == (0, 4)


def test_sync_is_due_executed_actions_after_the_publish_on_a_frame_stamped_then():
    s = InferenceSchedule('sync', executed_actions=4, dt=DT)
    s.published(stamp_ns=1000 * MS, publish_ns=1120 * MS)
    assert s.due_ns == 1320 * MS  # publish + 4 * 50 ms
    assert s.wait_s(1220 * MS) == pytest.approx(0.1) and s.wait_s(1400 * MS) == 0.0
    assert not s.accepts(1319 * MS) and s.accepts(1320 * MS)
    assert s.latency_p95_ms == pytest.approx(120.0)


def test_async_is_due_from_the_stamp_less_the_latency_p95_and_the_margin():
    s = InferenceSchedule('async', executed_actions=8, dt=DT, margin=0.03, window=20)
    latencies = np.random.default_rng(0).integers(50 * MS, 150 * MS, 40)
    stamp = 0
    for lat in latencies:
        stamp += 100 * MS
        s.published(stamp, stamp + int(lat))
    p95 = np.percentile(latencies[-20:], 95)  # the window: the last 20 chunks
    assert s.latency_p95_ms == pytest.approx(p95 * 1e-6, abs=1e-6)
    assert s.due_ns == pytest.approx(stamp + 400 * MS - p95 - 30 * MS, abs=1)
    assert s.accepts(0)  # any frame: the newest there is at the due time
    # from the first action not yet past on arrival to where the next chunk takes over
    assert s.executed_window == (math.floor(p95 / (50 * MS)), 8)  # ceil((400 - 30) / 50)
    # a p95 beyond the horizon: due at once
    s.published(stamp, stamp + 2000 * MS)
    s.published(stamp, stamp + 2000 * MS)
    assert s.due_ns < stamp and s.wait_s(stamp) == 0.0


def test_async_falls_behind_once_twice_the_p95_is_over_a_chunk():
    s = InferenceSchedule('async', executed_actions=8, dt=DT)
    assert not s.falls_behind(chunk_size=8)  # no latency yet
    s.published(0, 200 * MS)  # 2 x 200 ms = the 8 x 50 ms chunk: just in time
    assert not s.falls_behind(chunk_size=8)
    s.published(0, 220 * MS)
    s.published(0, 220 * MS)
    assert s.falls_behind(chunk_size=8) and not s.falls_behind(chunk_size=9)
    assert not InferenceSchedule('sync', 8, DT).falls_behind(8)


def test_reset_makes_the_next_step_due_at_once_and_keeps_the_latencies():
    s = InferenceSchedule('sync', executed_actions=2, dt=DT)
    s.published(0, 80 * MS)
    assert s.due_ns is not None and not s.accepts(0)
    s.reset()
    assert s.due_ns is None and s.wait_s(0) == 0.0 and s.accepts(0)
    assert s.latency_p95_ms == pytest.approx(80.0) and s.executed_window == (1, 2)


def test_frame_is_never_due_but_reports_its_latency():
    s = InferenceSchedule('frame', executed_actions=0, dt=DT)
    s.published(0, 30 * MS)
    assert s.due_ns is None and s.accepts(0)
    assert s.report() == {'schedule': 'frame', 'schedule_latency_p95_ms': 30.0,
                          'schedule_margin_ms': 50.0}


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='every'), 'schedule'), (dict(mode='sync', executed_actions=0), 'executed'),
    (dict(mode='async', executed_actions=0), 'executed'), (dict(dt=0.0), 'dt'),
    (dict(margin=-0.1), 'margin'), (dict(window=0), 'window')])
def test_invalid_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InferenceSchedule(**{'mode': 'async', 'executed_actions': 4, 'dt': DT, **kwargs})


# ---- the policy node ------------------------------------------------------------------------
LONG = dataclasses.replace(TINY, chunk_size=16)


@pytest.fixture(scope='module')
def long_model(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp('long') / 'model', LONG, seed=0)


def _run(model, n, **params):
    """Start the policy node with `params`, stream camera frames at 50 Hz until n chunks are
    out, then deactivate it; returns the step statistics, the chunks, the last /diagnostics
    values, the policy's spec and guidance history buffer after the last chunk, and the last
    /diagnostics status while it was active."""
    with LocalLaunch() as launch:
        node = launch.add(make_tester)
        chunks = Collector(node, JointTrajectory, 'action_chunk', CHUNK_QOS)
        steps = Collector(node, String, 'policy_node/step_stats', STATUS_QOS)
        diagnostics = Collector(node, DiagnosticArray, '/diagnostics', STATUS_QOS)
        camera = Camera(node)
        policy = start_policy(launch, model, **params)
        send_instruction(node)
        wait_for(camera.matched, 10.0, 'camera subscriptions')
        done = threading.Event()

        def stream():
            while not done.is_set():
                camera.publish()
                time.sleep(0.02)
        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        try:
            wait_for(lambda: len(steps.msgs()) >= n, 30.0, f'{n} chunks')
            seen = len(diagnostics.msgs())
            wait_for(lambda: len(diagnostics.msgs()) > seen, 10.0, '/diagnostics while active')
            active = diagnostics.msgs()[-1].status[0]
            assert policy.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        finally:
            done.set()
            streamer.join()
        wait_for(lambda: any(not c.points for c in chunks.msgs()), 10.0, 'the hold')
        wait_for(lambda: len(steps.msgs()) >= len(chunks.msgs()) - 1, 10.0, 'the last stats')
        wait_for(lambda: diagnostics.msgs(), 10.0, '/diagnostics')
        values = {kv.key: kv.value for kv in diagnostics.msgs()[-1].status[0].values}
        buffer = policy.policy.guidance.state_dict()['buffer']
        return ([json.loads(m.data) for m in steps.msgs()], [c for c in chunks.msgs() if c.points],
                values, policy.policy.spec, buffer, active)


def _published_ns(info):
    return info['stamp_ns'] + info['camera_to_chunk_ms'] * MS


def test_async_chunks_land_before_the_previous_ones_executed_actions_run_out(long_model):
    """With 150 ms added per step, each step is due at the last stamp + E * dt - p95 -
    margin, so that its chunk is out before the last chunk's E actions have run; with
    prefix_history the guidance takes each chunk's E actions from floor(p95 / dt) on."""
    execute, margin = 10, 0.05
    horizon = execute * DT * 1e9  # ns
    infos, chunks, values, spec, buffer, active = _run(
        long_model, 8, schedule='async', extra_latency_ms=150.0, executed_actions=execute,
        schedule_margin=margin, prefix_history=True)
    assert values['schedule'] == 'async' and float(values['schedule_latency_p95_ms']) >= 150
    assert active.level == DiagnosticStatus.OK, active.message  # 2 x p95 < 16 x 50 ms
    assert all(i['schedule'] == 'async' and i['policy_ms'] >= 150 for i in infos)
    assert infos[0]['due_lag_ms'] is None and infos[0]['executed_window'] == [0, execute]
    for k in range(1, len(infos)):
        prev, this = infos[k - 1], infos[k]
        p95 = np.percentile([i['camera_to_chunk_ms'] for i in infos[:k]], 95) * MS
        due = prev['stamp_ns'] + horizon - p95 - margin * 1e9
        # the newest frame at the due time: 50 Hz frames, the wake-up a little late at worst
        assert -60 * MS <= this['stamp_ns'] - due <= 60 * MS, k
        assert _published_ns(this) < prev['stamp_ns'] + horizon, k
        assert this['executed_window'] == [math.floor(p95 / (DT * 1e9)), execute - 1], k
        assert this['executed_window'][0] >= 3, k
        assert -5 <= this['due_lag_ms'] <= 60, k
    # the guidance's history (K + 1 actions, oldest first) ends with the last chunk's
    # normalised actions start .. stop - 1
    start, stop = next(i['executed_window'] for i in infos
                       if i['stamp_ns'] == stamp_ns(chunks[-1].header.stamp))
    actions = np.array([p.positions for p in chunks[-1].points])  # (H, D)
    executed = (actions[start:stop] - spec.action_mean) / spec.action_std
    np.testing.assert_allclose(buffer, executed[-len(buffer):], atol=1e-4)


def test_diagnostics_warn_when_async_falls_behind_half_a_chunk(long_model):
    """With 450 ms added, twice the camera-to-chunk p95 is over the 16 x 50 ms chunk: the
    next chunk cannot land before this one runs out, and /diagnostics says so."""
    *_, active = _run(long_model, 3, schedule='async', extra_latency_ms=450.0,
                      executed_actions=8)
    assert active.level == DiagnosticStatus.WARN, active.message
    assert 'async schedule falls behind' in active.message and '16 x 50 ms' in active.message


def test_sync_steps_wait_executed_actions_after_each_chunk_for_a_later_frame(long_model):
    """With 100 ms added per step, a step is due E * dt after the last chunk was out and
    steps on a frame stamped then or later: steps are spaced by the latency + E * dt."""
    execute = 4
    horizon = execute * DT * 1e9
    infos, *_ = _run(long_model, 6, schedule='sync', extra_latency_ms=100.0,
                     executed_actions=execute)
    assert 'executed_window' not in infos[0] and infos[0]['due_lag_ms'] is None
    for k in range(1, len(infos)):
        prev, this = infos[k - 1], infos[k]
        # stamps spaced by the last latency (>= 100 ms) + E * dt, and a frame period at most
        due = _published_ns(prev) + horizon
        assert prev['camera_to_chunk_ms'] >= 100 and this['due_lag_ms'] >= 0, k
        assert due <= this['stamp_ns'] <= due + 60 * MS, k


@pytest.mark.parametrize('params, message', [
    (dict(schedule='sync', executed_actions=0), "schedule='sync' needs executed_actions >= 1"),
    (dict(schedule='async', inference_rate=5.0), 'inference_rate 0'),
    (dict(prefix_history=True), "prefix_history=True needs schedule='async'")])
def test_configure_refuses_a_schedule_without_what_it_needs(long_model, params, message):
    with LocalLaunch() as launch:
        policy = launch.add(PolicyNode, parameter_overrides=policy_params(long_model, **params))
        launch.start()
        assert policy.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert message in policy.error_text
