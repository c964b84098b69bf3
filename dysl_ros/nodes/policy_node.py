"""The policy node (lifecycle): camera frames + instruction -> action chunks.

Topics (relative names; remap freely):

    subscribes  camera_topics[i]   sensor_msgs/Image, one per model camera, or
                                   <topic>/compressed sensor_msgs/CompressedImage when
                                   image_transport = 'compressed'; QoS per camera_qos:
                                   reliable depth 1 (default, CAMERA_QOS) or best_effort
                                   (SENSOR_QOS)
                instruction        std_msgs/String (INSTRUCTION_QOS)
    publishes   action_chunk       trajectory_msgs/JointTrajectory (CHUNK_QOS): header.stamp =
                                   the primary camera's image stamp, joint_names = the model's
                                   action names, point i = action i, time_from_start = i * dt
                ~/step_stats       std_msgs/String, one JSON object per chunk (provenance:
                                   stamp, episode, layers run, skipped at, verified, latency;
                                   schedule, due_lag_ms: how late the step started against its
                                   due time; with prefix_history: executed_window; with
                                   latency_budget_ms: threshold and budget figures; with
                                   shadow_every: shadow check figures)
                /diagnostics       diagnostic_msgs/DiagnosticArray at diagnostics_rate
    services    ~/reset            std_srvs/Trigger: start a new episode

Lifecycle: configure loads the model on the chosen backend and warms it up; activate starts
the subscriptions and publishing; deactivate stops them and publishes an empty chunk (no
points), which tells the controller to hold; cleanup frees the model.

When it infers (the policy decides how many actions of each chunk run, the controller only
executes), per the schedule parameter (dysl_ros.runtime.schedule.InferenceSchedule): 'frame'
(default): with inference_rate = 0 it infers as soon as a new primary-camera frame is there
and the previous step has finished, so the newest chunk is always from the newest frame and
a slow step never queues frames; with inference_rate > 0 it infers at that rate from the
newest frame, if a new one arrived. 'sync': the chunk holds its first executed_actions
actions only, and the next step is due executed_actions control periods after it is
published, on a frame stamped then or later. 'async': the next step is due at the chunk's
stamp + executed_actions periods - the camera-to-chunk p95 - schedule_margin, on the newest
frame, so that its chunk lands before the current one's executed actions run out; with
prefix_history the guidance's history takes each chunk's actions from floor(p95 / dt) to
where the next chunk is expected to take over (those the controller runs). An episode's
first step is due at once. extra_latency_ms sleeps in every step before publishing
(benchmarks: a slower model), counted in policy_ms and camera_to_chunk_ms. Camera callbacks
only convert and store the latest frame, then wake the model thread: the model lives on one
dedicated thread from load to free (CUDA / TensorRT contexts belong to the thread that made
them), which steps and publishes, so no executor round trip sits between a frame and its
chunk.

Episodes: every instruction message and every ~/reset call starts a new episode: the action
history (continuity ring buffer) is cleared before the next step, and frames and stamps
received before are forgotten (every lifecycle transition forgets them too). What to step
on and when (instruction checks, episodes, frames paired by stamp, staleness) is
dysl_ros.runtime.session.PolicySession; the parameters and the model they load are
dysl_ros.nodes.policy_params; this node moves messages, runs the model thread and logs.

Shadow check (shadow_every > 0): after publishing every shadow_every-th chunk, the model
thread completes the same observation's pass at full depth (it delays the next step, never
the chunk) and measures the chunk drift (normalised L1); a drift above shadow_drift_threshold
makes the next shadow_fallback_steps steps run at full depth, logged, flagged in ~/step_stats
(shadow_fallback) and /diagnostics (WARN with the drift figures).

Bad input is logged (throttled), counted in /diagnostics (stats.ERROR_KINDS) and never stops
the node or keeps it from serving the next good frame: unsupported encodings, wrong or
oversized images, undecodable compressed data, negative stamps or stamps more than
max_future_stamp ahead of the clock, out-of-order or stale frames, empty, too long or wholly
unknown instructions, camera publishers with incompatible QoS, non-finite model output. A
refused frame yields no chunk, so the controller holds. Invalid parameter values are refused
when set, with the reason.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..runtime.frames import FrameGate, Rejected
from ..runtime.messages import ChunkTypes, ImageConversionError, chunk_to_msg, time_to_ns
from ..runtime.policy import NonFiniteOutput
from ..runtime.schedule import InferenceSchedule
from ..runtime.session import PolicySession, Waiting, policy_vocabulary, step_stats
from ..runtime.stats import PolicyStats, StepRecord
from .image_conversion import msg_to_rgb
from .params import declare_params, read_params
from .policy_params import CAMERA_QOS_CHOICES, PARAMS, PolicyNodeConfig, configure_policy
from .qos import CHUNK_QOS, INSTRUCTION_QOS, STATUS_QOS, SubscriptionEventCallbacks
from .spin import spin_node

_CHUNK_TYPES = ChunkTypes(JointTrajectory, JointTrajectoryPoint, Header, Time, Duration,
                          lambda a: a.tolist())


class PolicyNode(LifecycleNode):
    """Lifecycle node around a Policy; see the module docstring for its interface."""

    def __init__(self, node_name: str = 'policy_node', **kwargs: Any):
        super().__init__(node_name, **kwargs)
        # rclpy refuses out-of-range start values here; the rest is checked at configure
        self._values = declare_params(self, PARAMS, check=False)
        self.cfg: Optional[PolicyNodeConfig] = None
        self.policy: Any = None
        self.stats = PolicyStats(int(self._values['stats_window']))
        self.session: Optional[PolicySession] = None  # from the first configure on
        self.schedule: Optional[InferenceSchedule] = None  # from the first configure on
        self._prefix = False  # pass the schedule's executed window to the policy's steps
        self._seq = 0
        self._error_text = ''
        self._last_log: dict[str, float] = {}
        self._log_lock = threading.Lock()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._subs: list[Any] = []
        self._model_thread: Optional[ThreadPoolExecutor] = None
        self._serving: Optional[Future] = None
        self._wake = threading.Event()  # a new primary frame (or a rate tick), or stop
        self._stopping = False
        self._rate_timer: Any = None
        self._chunk_pub: Any = None
        self._stats_pub: Any = None
        self._reset_srv: Any = None
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', STATUS_QOS)
        self._diag_timer = self.create_timer(1.0 / float(self._values['diagnostics_rate']),
                                             self._publish_diagnostics)

    @property
    def error_text(self) -> str:
        """Why the last configure failed ('' when it did not)."""
        return self._error_text

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.cfg = PolicyNodeConfig(**read_params(self, PARAMS))
            self.schedule = self.cfg.inference_schedule()
            self._model_thread = ThreadPoolExecutor(max_workers=1,
                                                    thread_name_prefix='policy_model')
            self.policy = self._model_thread.submit(configure_policy, self.cfg,
                                                    self.get_logger().info).result()
        except Exception as e:  # a bad parameter or model: say what, stay unconfigured
            self._error_text = f'configure failed: {e}'
            self.get_logger().error(self._error_text)
            self._free()
            return TransitionCallbackReturn.FAILURE
        self._error_text = ''
        self.stats = PolicyStats(self.cfg.stats_window)
        self._chunk_pub = self.create_lifecycle_publisher(JointTrajectory, 'action_chunk',
                                                          CHUNK_QOS)
        self._stats_pub = self.create_lifecycle_publisher(String, '~/step_stats', STATUS_QOS)
        self._reset_srv = self.create_service(Trigger, '~/reset', self._on_reset,
                                              callback_group=self._input_group)
        cfg = self.cfg
        self.session = PolicySession(
            FrameGate(cfg.camera_names, cfg.max_image_age, cfg.max_future_stamp,
                      cfg.max_camera_skew),
            cfg.max_instruction_length, policy_vocabulary(self.policy), cfg.instruction,
            episode=self.session.episode + 1 if self.session else 1)
        self._prefix = cfg.prefix_history and hasattr(self.policy, 'guidance')
        if cfg.prefix_history and not self._prefix:
            self.get_logger().info(f'prefix_history: method {cfg.method} has no guidance '
                                   'history; ignored')
        spec = self.policy.spec
        self.get_logger().info(
            f'configured: {self.cfg.backend} backend, method {self.cfg.method}, model '
            f'{self.cfg.model_dir}, cameras '
            f'{dict(zip(self.cfg.camera_names, self.cfg.subscribed_topics))}, '
            f'chunk {spec.chunk_size} x {list(spec.action_names)}, schedule {cfg.schedule}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.cfg
        msg_type = CompressedImage if cfg.image_transport == 'compressed' else Image
        qos = CAMERA_QOS_CHOICES[cfg.camera_qos]
        for camera, topic in zip(cfg.camera_names, cfg.subscribed_topics):
            self._subs.append(self._camera_subscription(msg_type, camera, topic, qos))
        self._subs.append(self.create_subscription(
            String, 'instruction', self._on_instruction, INSTRUCTION_QOS,
            callback_group=self._input_group))
        self.session.start()
        self.schedule.reset()
        self._stopping = False
        self._wake.clear()
        self._serving = self._model_thread.submit(self._serve)
        if cfg.inference_rate > 0:  # a ROS timer: the rate follows simulated time too
            self._rate_timer = self.create_timer(1.0 / cfg.inference_rate, self._wake.set,
                                                 callback_group=self._input_group)
        self.get_logger().info('active: waiting for frames' + (
            '' if self.session.instruction else ' and an instruction'))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._stop_serving()
        with self.session.lock:  # no chunk can follow the hold: chunks are published under it
            self.session.stop()
            self._chunk_pub.publish(JointTrajectory(joint_names=self._action_names()))
        self.get_logger().info('inactive: published a hold (empty chunk)')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        self.get_logger().info('cleaned up: model freed')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._abort()

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._abort()

    def destroy_node(self) -> None:
        """Stop the inference loop and free the model first: a non-daemon model thread left
        waiting would keep the process from exiting."""
        if hasattr(self, '_diag_timer'):  # constructed (a failed __init__ leaves a bare node)
            self._abort()
        super().destroy_node()

    def _abort(self) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._stop_serving()
        if self.session is not None:
            self.session.stop()
        self._free()
        return TransitionCallbackReturn.SUCCESS

    # ---- inputs (executor threads, one mutually exclusive group) ------------------------------
    def _camera_subscription(self, msg_type: Any, camera: str, topic: str, qos: Any) -> Any:
        def lost(info: Any) -> None:
            self._complain('lost', f'camera {camera!r}: DDS lost {info.total_count} frames '
                           'so far', count=info.total_count_change)

        def incompatible(info: Any) -> None:
            self._complain('qos', f'camera {camera!r}: a publisher on {topic!r} offers QoS '
                           f'this subscription ({self.cfg.camera_qos}) cannot match: no frame '
                           'of it arrives (a best-effort camera needs camera_qos=best_effort)')

        def callback(msg: Any) -> None:
            self._on_image(camera, msg)

        try:
            events = SubscriptionEventCallbacks(incompatible_qos=incompatible, message_lost=lost)
            return self.create_subscription(msg_type, topic, callback, qos,
                                            event_callbacks=events,
                                            callback_group=self._input_group)
        except Exception:  # an RMW without message-lost events
            events = SubscriptionEventCallbacks(incompatible_qos=incompatible)
            return self.create_subscription(msg_type, topic, callback, qos,
                                            event_callbacks=events,
                                            callback_group=self._input_group)

    def _on_image(self, camera: str, msg: Any) -> None:
        cfg = self.cfg
        stamp, arrival = time_to_ns(msg.header.stamp), self._now_ns()
        try:
            self.session.check_frame(camera, stamp, arrival)  # a refused frame is not converted
            rgb = cfg.check_size(msg_to_rgb(msg))
        except (Rejected, ImageConversionError) as e:
            self._complain(e.kind, f'camera {camera!r}: frame rejected: {e}'
                           if isinstance(e, ImageConversionError) else str(e))
            return
        self.stats.frame(dropped_previous=self.session.put_frame(camera, rgb, stamp, arrival,
                                                                 self._now_ns()))
        if cfg.inference_rate <= 0:  # any camera: the primary's frame may wait for this one
            self._wake.set()

    def _on_instruction(self, msg: String) -> None:
        try:
            with self.session.lock:  # no chunk of the old episode may time the new one
                unknown = self.session.set_instruction(msg.data)
                self.schedule.reset()
        except Rejected as e:
            self._complain(e.kind, str(e))
            return
        if unknown:
            self._note('unknown_words', f'instruction words unknown to the model: {unknown}')
        self.stats.new_episode()
        self.get_logger().info(f'new episode {self.session.episode}: '
                               f'{self.session.instruction!r}')

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        with self.session.lock:
            episode = self.session.new_episode()
            self.schedule.reset()
        self.stats.new_episode()
        response.success = True
        response.message = f'episode {episode} started: action history cleared'
        return response

    # ---- inference (the model thread) ---------------------------------------------------------
    def _serve(self) -> None:
        """Step whenever woken, from activate until _stop_serving."""
        timeout = None
        while True:
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping:
                return
            try:
                timeout = self._infer()
            except Exception as e:  # the loop outlives any bug in one step
                timeout = None
                self._complain('inference', f'step failed: {type(e).__name__}: {e}')

    def _infer(self) -> Optional[float]:
        """One step if it is due and the frames are there; returns seconds until the step is
        due or a step that waits for a lagging camera goes ahead without it (None: nothing
        pending)."""
        now = self._now_ns()
        wait = self.schedule.wait_s(now)
        if wait > 0:
            return wait + 1e-4
        try:
            step_in = self.session.next_step(now)
        except Rejected as e:
            self._complain(e.kind, str(e))
            return None
        if isinstance(step_in, Waiting):
            if step_in.deadline_ns is not None:
                return max(step_in.deadline_ns - now, 0) * 1e-9 + 1e-4
            if step_in.reason:
                self._note('waiting', f'waiting for {step_in.reason}')
            return None
        primary = step_in.frames[self.cfg.camera_names[0]]
        stamp, episode = primary.stamp_ns, step_in.episode
        if step_in.new_episode:
            self.policy.reset()
        if not self.schedule.accepts(stamp):  # sync: the frame predates the due time
            return None
        due = self.schedule.due_ns
        # prefix_history: the guidance sees the chunk's actions expected to run
        window = {'executed': self.schedule.executed_window} if self._prefix else {}
        start = self._now_ns()
        t0 = time.perf_counter()
        try:
            chunk, step = self.policy.step(step_in.images, step_in.instruction, **window)
        except NonFiniteOutput:
            self.session.restart_history()
            self._complain('non_finite', 'non-finite values in the model output: no chunk, '
                           'action history cleared')
            return None
        except Exception as e:  # the node survives a failing step and says why
            self._complain('inference', f'policy step failed: {type(e).__name__}: {e}')
            return None
        if self.cfg.extra_latency_ms:  # stands in for a bigger model or a slower computer
            time.sleep(self.cfg.extra_latency_ms * 1e-3)
        policy_ms = (time.perf_counter() - t0) * 1e3
        if self.cfg.schedule == 'sync':  # the robot runs these, then waits for the next
            chunk = chunk[:self.cfg.executed_actions]
        msg = self._chunk_msg(stamp, chunk)
        with self.session.lock:
            if not self.session.current(episode):
                return None  # deactivated or a new episode began during the step
            self._chunk_pub.publish(msg)
            published = self._now_ns()
            self.schedule.published(stamp, published)
            c2c_ms = (published - stamp) * 1e-6
            self._seq += 1
            seq = self._seq
        shadow = getattr(self.policy, 'shadow', None)  # a ShadowCheck, or None (off)
        if shadow is not None:
            self._shadow_pass(shadow)
        self.stats.step(StepRecord(
            episode=episode, layers_run=step.layers_run, layers_guided=len(step.layer_ids),
            layers_total=step.layers_total, verified=bool(step.verified), policy_ms=policy_ms,
            camera_to_chunk_ms=c2c_ms))
        info = step_stats(seq, episode, primary, step, start, policy_ms, c2c_ms,
                          getattr(self.policy, 'budget', None), shadow)
        # due_lag_ms: how late the step started against its due time (None: due at once)
        info.extra.update(schedule=self.cfg.schedule,
                          due_lag_ms=None if due is None else (start - due) * 1e-6)
        if window:
            info.extra['executed_window'] = list(window['executed'])
        self._stats_pub.publish(String(data=info.to_json()))
        return None

    def _shadow_pass(self, shadow: Any) -> None:
        """The full-depth shadow pass of the step just published, if one is due."""
        try:
            drift = self.policy.shadow_pass()
        except Exception as e:  # the published chunk stands; the check is lost
            self._complain('inference', f'shadow pass failed: {type(e).__name__}: {e}')
            return
        if drift is not None and drift > shadow.drift_threshold:
            self.get_logger().warning(
                f'shadow check: chunk drift {drift:.3f} > shadow_drift_threshold '
                f'{shadow.drift_threshold:.3f}: full depth for the next '
                f'{shadow.fallback_steps} steps')

    def _chunk_msg(self, stamp_ns: int, chunk: np.ndarray) -> JointTrajectory:
        return chunk_to_msg(chunk, self._action_names(), stamp_ns, self.cfg.dt, _CHUNK_TYPES)

    # ---- helpers -----------------------------------------------------------------------------
    def _stop_serving(self) -> None:
        """End the inference loop; the step in progress, if any, finishes first."""
        if self._serving is not None:
            self._stopping = True
            self._wake.set()
            self._serving.result()
            self._serving = None

    def _free(self) -> None:
        self._stop_inputs()
        self._stop_serving()
        for pub in (self._chunk_pub, self._stats_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        if self._reset_srv is not None:
            self.destroy_service(self._reset_srv)
        self._chunk_pub = self._stats_pub = self._reset_srv = None
        if self._model_thread is not None:  # free the model on the thread that made it
            self._model_thread.submit(setattr, self, 'policy', None).result()
            self._model_thread.shutdown()
            self._model_thread = None
        self.policy = None

    def _stop_inputs(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._rate_timer is not None:
            self.destroy_timer(self._rate_timer)
            self._rate_timer = None

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _action_names(self) -> list[str]:
        return list(self.policy.spec.action_names) if self.policy is not None else []

    def _complain(self, kind: str, message: str, count: int = 1) -> None:
        """Count `count` errors of `kind` and log a warning, at most once per log_throttle
        seconds per kind."""
        self.stats.error(kind, count)
        if self._throttled(kind):
            return
        self.get_logger().warning(message)  # one call site per severity: rclpy insists

    def _note(self, key: str, message: str) -> None:
        """Log an info message (counted nowhere), throttled like _complain."""
        if self._throttled(f'note:{key}'):
            return
        self.get_logger().info(message)

    def _throttled(self, key: str) -> bool:
        now = time.monotonic()
        throttle = self.cfg.log_throttle if self.cfg is not None else 5.0
        with self._log_lock:
            if now - self._last_log.get(key, -1e9) < throttle:
                return True
            self._last_log[key] = now
            return False

    def _publish_diagnostics(self) -> None:
        s = self.stats.summary()
        budget = getattr(self.policy, 'budget', None)  # a LatencyBudget, or None (off)
        figures = budget.report() if budget is not None else {}
        shadow = getattr(self.policy, 'shadow', None)  # a ShadowCheck, or None (off)
        drifting = shadow is not None and shadow.last_drift is not None and \
            shadow.last_drift > shadow.drift_threshold
        if shadow is not None:
            figures = {**figures, **shadow.report()}
        if self.schedule is not None:
            figures = {**figures, **self.schedule.report()}
        session = self.session
        active, episode = (session.active, session.episode) if session else (False, 0)
        if self._error_text:
            level, text = DiagnosticStatus.ERROR, self._error_text
        elif not active:
            level, text = DiagnosticStatus.WARN, 'inactive' if self.policy else 'unconfigured'
        elif s['errors']:
            level, text = DiagnosticStatus.WARN, f'active, {s["errors"]} errors'
        elif figures.get('latency_budget_unmet'):
            level, text = DiagnosticStatus.WARN, (
                f'active, latency budget unmet: step p95 {figures["latency_p95_ms"]:.1f} ms > '
                f'{figures["latency_budget_ms"]:.1f} ms at the maximum threshold shift '
                f'{figures["max_threshold_shift"]:.2f}')
        elif self.schedule.falls_behind(self.policy.spec.chunk_size):
            level, text = DiagnosticStatus.WARN, (
                f'active, async schedule falls behind: camera-to-chunk p95 '
                f'{figures["schedule_latency_p95_ms"]:.0f} ms is over half a chunk '
                f'({self.policy.spec.chunk_size} x {self.cfg.dt * 1e3:.0f} ms / 2): the robot '
                'pauses between chunks (a faster backend or more skipping helps)')
        elif drifting:
            level, text = DiagnosticStatus.WARN, (
                f'active, shadow check: chunk drift {shadow.last_drift:.3f} > '
                f'{shadow.drift_threshold:.3f}, full depth for '
                f'{shadow.fallback_left} more steps')
        else:
            level, text = DiagnosticStatus.OK, 'active'
        backend = self.cfg.backend if self.cfg is not None else self._values['backend']
        status = DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: policy', message=text,
            hardware_id=backend,
            values=[KeyValue(key=k, value=_fmt(v))
                    for k, v in {**s, 'episode': episode, **figures}.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def _fmt(value: Any) -> str:
    if value is None:
        return 'n/a'
    return f'{value:.3f}' if isinstance(value, float) else str(value)


def _autostart(node: 'PolicyNode') -> None:
    """Configure and activate at start when the autostart parameter says so."""
    if node.get_parameter('autostart').value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()


def main(args: Optional[list[str]] = None) -> None:
    """Run the policy node alone (`ros2 run dysl_ros policy_node`, or python -m)."""
    spin_node(PolicyNode, args, on_start=_autostart)


if __name__ == '__main__':
    main()
