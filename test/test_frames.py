"""FrameGate and PolicySession (no ROS): stamp sanity, ordering, pairing of the cameras of
one moment, staleness, instructions and episodes."""
import numpy as np
import pytest

from dysl_ros.runtime.frames import FrameGate, Rejected
from dysl_ros.runtime.session import PolicySession, StepInput, Waiting

MS = 1_000_000
RGB = np.zeros((4, 4, 3), np.uint8)
T0 = 1_000_000 * MS


def gate(**kwargs):
    return FrameGate(('front', 'wrist'), max_age_s=0.5, max_future_s=0.25, **kwargs)


def offer(g, camera, stamp, now):
    g.check(camera, stamp, now)
    g.put(camera, RGB, stamp, now, now)


@pytest.mark.parametrize('stamp,kind', [(-1, 'stamp'), (T0 + 260 * MS, 'stamp'),
                                        (T0 - 5 * MS, 'out_of_order'), (T0, 'out_of_order')])
def test_frames_that_cannot_be_true_are_refused(stamp, kind):
    g = gate()
    offer(g, 'front', T0, T0)
    with pytest.raises(Rejected) as e:
        g.check('front', stamp, T0)
    assert e.value.kind == kind
    g.check('front', T0 + 240 * MS, T0)  # within max_future_stamp


def test_a_refused_future_frame_leaves_true_frames_in_order():
    g = gate()
    with pytest.raises(Rejected):
        g.check('front', T0 + 3600_000 * MS, T0)
    offer(g, 'front', T0, T0)  # not 'out of order' against the refused frame


def test_clear_forgets_stamps_and_frames():
    g = gate()
    offer(g, 'front', T0, T0)
    offer(g, 'wrist', T0, T0)
    g.clear()
    assert g.missing() == ['front', 'wrist']
    offer(g, 'front', T0 - 100 * MS, T0)  # older than before the clear: accepted


def test_a_step_waits_for_the_other_cameras_frame_of_the_same_moment():
    g = gate(max_skew_s=0.02)
    offer(g, 'wrist', T0, T0)
    offer(g, 'front', T0, T0 + 1 * MS)
    assert set(g.take(T0 + 2 * MS)) == {'front', 'wrist'}
    assert g.take(T0 + 3 * MS) is None  # the primary frame was used
    offer(g, 'front', T0 + 50 * MS, T0 + 51 * MS)  # the wrist frame of this moment is late
    assert g.take(T0 + 52 * MS) is None
    assert g.deadline_ns() == T0 + 71 * MS
    offer(g, 'wrist', T0 + 50 * MS, T0 + 55 * MS)
    frames = g.take(T0 + 56 * MS)
    assert frames['wrist'].stamp_ns == T0 + 50 * MS


def test_a_lagging_camera_delays_a_step_by_max_skew_at_most():
    g = gate(max_skew_s=0.02)
    offer(g, 'wrist', T0, T0)
    offer(g, 'front', T0 + 66 * MS, T0 + 67 * MS)  # a slower wrist camera
    assert g.take(T0 + 80 * MS) is None
    frames = g.take(T0 + 87 * MS)  # arrival + max_skew
    assert frames['wrist'].stamp_ns == T0 and frames['front'].stamp_ns == T0 + 66 * MS


def test_stale_frames_give_no_step_and_count_as_used():
    g = gate()
    offer(g, 'wrist', T0, T0)
    offer(g, 'front', T0, T0)
    with pytest.raises(Rejected) as e:
        g.take(T0 + 600 * MS)
    assert e.value.kind == 'stale' and "'front': 0.6" in str(e.value)
    assert g.take(T0 + 601 * MS) is None


# ---- PolicySession: instruction, episode and frames together -------------------------------
def vocabulary(text):
    known = {'pick', 'up', 'the', 'red', 'block'}
    words = text.lower().split()
    return words, [w for w in words if w not in known]


def session(**kwargs):
    return PolicySession(gate(max_skew_s=0.0), max_instruction_length=40,
                         vocabulary=vocabulary, **kwargs)


def frames_of_one_moment(s, stamp, now):
    for camera in ('wrist', 'front'):
        s.check_frame(camera, stamp, now)
        s.put_frame(camera, RGB, stamp, now, now)


def test_a_session_steps_once_per_primary_frame_and_starts_each_episode_over():
    s = session(instruction='pick up the red block')
    assert isinstance(s.next_step(T0), Waiting)  # not started
    s.start()
    frames_of_one_moment(s, T0, T0)
    first = s.next_step(T0)
    assert isinstance(first, StepInput) and first.new_episode and first.episode == 1
    assert s.next_step(T0).reason == ''  # this frame was used
    frames_of_one_moment(s, T0 + 50 * MS, T0 + 50 * MS)
    assert not s.next_step(T0 + 50 * MS).new_episode
    s.new_episode()  # a reset: the frames and stamps of the last episode are forgotten
    assert s.next_step(T0 + 60 * MS).reason == "cameras ['front', 'wrist']"
    frames_of_one_moment(s, T0 + 40 * MS, T0 + 60 * MS)  # older than before the reset
    step = s.next_step(T0 + 60 * MS)
    assert step.new_episode and step.episode == 2
    with s.lock:
        assert s.current(2) and not s.current(1)
        s.stop()
        assert not s.current(2)


@pytest.mark.parametrize('text,why', [('  ', 'empty'), ('pick ' * 10, 'longer than'),
                                      ('\U0001F916', 'no word'), ('ouvre le tiroir', 'no word')])
def test_instructions_the_model_cannot_follow_keep_the_current_one(text, why):
    s = session(instruction='pick up the red block')
    with pytest.raises(Rejected, match=why) as e:
        s.set_instruction(text)
    assert e.value.kind == 'instruction'
    assert s.instruction == 'pick up the red block' and s.episode == 1
    assert s.set_instruction('pick up the blue block') == ['blue']  # partly known: accepted
    assert s.episode == 2


def test_no_instruction_no_step():
    s = session()
    s.start()
    frames_of_one_moment(s, T0, T0)
    assert s.next_step(T0).reason == 'an instruction'
    s.set_instruction('pick up the red block')  # an episode starts: earlier frames go
    assert s.next_step(T0).reason == "cameras ['front', 'wrist']"
    frames_of_one_moment(s, T0 + 50 * MS, T0 + 50 * MS)
    assert isinstance(s.next_step(T0 + 50 * MS), StepInput)
