"""The controller node: executes action chunks at the control rate.

Topics (relative names):

    subscribes  action_chunk   trajectory_msgs/JointTrajectory (CHUNK_QOS); an empty one (no
                               points) means stop: drop every chunk and hold
                instruction    std_msgs/String (INSTRUCTION_QOS): a new episode (drop chunks,
                               gripper back to its initial value)
    publishes   command        std_msgs/Float64MultiArray (COMMAND_QOS), one action per tick in
                               joint_names order, clipped to [lower_limits, upper_limits];
                               layout.dim[0].label is 'action', or 'hold' for a hold
                /diagnostics   diagnostic_msgs/DiagnosticArray at diagnostics_rate
                ~/tick_stats   std_msgs/String (STATUS_QOS), only with tick_stats: one JSON
                               object per tick, {"time": clock seconds, "hold", "switch",
                               "chunk_age_ms" (null on a hold), "command": the published list}
    services    ~/reset        std_srvs/Trigger: a new episode

How chunks are scheduled, blended (mode: replace; ensemble; prefix: as replace, with a new
chunk ramped in over blend_actions ticks), dropped (negative or future stamps, older than
max_chunk_age, from a previous episode, wrong names or sizes, too many points, uneven
time_from_start, non-finite), held and bounded at a switch between chunks (max_switch_jump)
is dysl_ros.runtime.chunking.ChunkExecutor; this node only moves messages. Every drop is
counted by reason in /diagnostics and logged (throttled); no message can stop the node. A
hold is zero for every delta joint and the last command for absolute joints (the gripper);
the node publishes a command every tick, hold or not.
"""
from __future__ import annotations

import json
import math
import threading
from typing import Any, Optional, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, MultiArrayLayout, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ..runtime.chunking import MODES, ChunkExecutor, ChunkExecutorConfig
from ..runtime.messages import CommandTypes, chunk_positions, command_to_msg
from ..runtime.stats import percentile
from .params import Param, declare_params
from .qos import CHUNK_QOS, COMMAND_QOS, INSTRUCTION_QOS, STATUS_QOS
from .spin import spin_node

_COMMAND_TYPES = CommandTypes(Float64MultiArray, MultiArrayLayout, MultiArrayDimension,
                              lambda a: a.tolist())
_DEFAULT = ChunkExecutorConfig()


def _switch_jump_problem(value: Any) -> Optional[str]:
    """Why max_switch_jump is invalid (its length is checked against joint_names when the
    executor's config is built), or None. None is off too: rcl's YAML parser leaves `[]`
    unset. A double array set from a file or a client arrives as an array.array."""
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0 for v in value):
        return 'expected empty (off) or finite numbers >= 0, one per joint of joint_names'
    return None
PARAMS = (
    Param('control_rate', 20.0, 'commands per second (one chunk action per tick)', 0.1,
          1000.0, read_only=True),
    Param('joint_names', list(_DEFAULT.joint_names), 'action names in command order; chunks '
          'must carry exactly these names', read_only=True),
    Param('mode', 'replace', 'replace: the newest chunk replaces the one in progress; '
          'ensemble: temporal ensembling of every chunk covering the tick; prefix: as replace, '
          'with the new chunk blended in over blend_actions ticks', choices=MODES,
          read_only=True),
    Param('ensemble_decay', 0.01, 'm of the ensembling weight exp(-m * i), i = 0 for the '
          'oldest chunk', 0.0, 10.0, read_only=True),
    Param('blend_actions', _DEFAULT.blend_actions, 'prefix mode: a new chunk\'s first ticks '
          'command (1 - w) * old + w * new, w = (k + 1) / (blend_actions + 1) on its k-th tick',
          1, 1000, read_only=True),
    Param('max_chunk_age', 0.5, 'seconds; a chunk whose observation is older on arrival is '
          'dropped', 0.001, 60.0, read_only=True),
    Param('lower_limits', list(_DEFAULT.lower_limits), 'per joint lower clip of every command',
          read_only=True),
    Param('upper_limits', list(_DEFAULT.upper_limits), 'per joint upper clip of every command',
          read_only=True),
    Param('absolute_joints', list(_DEFAULT.absolute_joints), 'joints commanded as absolute '
          'targets (held at their last value); the others are deltas (held at zero)',
          read_only=True),
    Param('initial_absolute', list(_DEFAULT.initial_absolute), 'hold value of each absolute '
          'joint before the first command of an episode', read_only=True),
    Param('latency_compensation', True, 'start a late chunk at the action for now, '
          'floor((now - stamp) / dt), instead of its first action', read_only=True),
    Param('max_future_stamp', _DEFAULT.max_future_stamp, 'seconds; a chunk stamped further '
          'ahead of this node\'s clock is dropped (its sender\'s clock is wrong)', 0.0, 60.0,
          read_only=True),
    Param('max_chunk_points', _DEFAULT.max_chunk_points, 'a chunk with more actions is dropped',
          1, 100000, read_only=True),
    Param('max_switch_jump', [], 'per joint bound on the command\'s change at a switch '
          'between chunks (a new chunk takes over or joins the ensemble), before the '
          'limits; empty: off; else one value >= 0 per joint of joint_names',
          read_only=True, check=_switch_jump_problem, dynamic_typing=True),
    Param('diagnostics_rate', 1.0, 'Hz of /diagnostics', 0.01, 100.0, read_only=True),
    Param('tick_stats', False, 'publish one JSON object per tick on ~/tick_stats (time, hold, '
          'switch, chunk_age_ms, command) for benchmarks', read_only=True),
)


def executor_config(values: dict) -> ChunkExecutorConfig:
    """ChunkExecutorConfig from the node's parameter values."""
    return ChunkExecutorConfig(
        joint_names=values['joint_names'], control_rate=values['control_rate'],
        mode=values['mode'], ensemble_decay=values['ensemble_decay'],
        blend_actions=values['blend_actions'],
        max_chunk_age=values['max_chunk_age'], lower_limits=values['lower_limits'],
        upper_limits=values['upper_limits'], absolute_joints=values['absolute_joints'],
        initial_absolute=values['initial_absolute'],
        latency_compensation=values['latency_compensation'],
        max_future_stamp=values['max_future_stamp'],
        max_chunk_points=values['max_chunk_points'],
        max_switch_jump=[float(v) for v in values['max_switch_jump'] or ()])


class ControllerNode(Node):
    """Turns chunks into one clipped command per control tick; see the module docstring."""

    def __init__(self, node_name: str = 'controller_node', **kwargs: Any):
        super().__init__(node_name, **kwargs)
        values = declare_params(self, PARAMS)
        self.cfg = executor_config(values)
        self.chunks = ChunkExecutor(self.cfg)
        self._lock = threading.Lock()
        self._tick_group = MutuallyExclusiveCallbackGroup()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._pub = self.create_publisher(Float64MultiArray, 'command', COMMAND_QOS)
        self.create_subscription(JointTrajectory, 'action_chunk', self._on_chunk, CHUNK_QOS,
                                 callback_group=self._input_group)
        self.create_subscription(String, 'instruction', self._on_instruction, INSTRUCTION_QOS,
                                 callback_group=self._input_group)
        self.create_service(Trigger, '~/reset', self._on_reset, callback_group=self._input_group)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', STATUS_QOS)
        self.create_timer(1.0 / values['diagnostics_rate'], self._publish_diagnostics)
        self._tick_pub = self.create_publisher(String, '~/tick_stats', STATUS_QOS) \
            if values['tick_stats'] else None
        self.commands = 0
        self._timer = self.create_timer(self.cfg.dt, self._on_tick,
                                        callback_group=self._tick_group)
        self._last_drop_log: dict[str, float] = {}
        self.get_logger().info(
            f'controller: {self.cfg.mode} at {self.cfg.control_rate:g} Hz, joints '
            f'{list(self.cfg.joint_names)}, max chunk age {self.cfg.max_chunk_age:g} s')

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_chunk(self, msg: JointTrajectory) -> None:
        if not msg.points:
            with self._lock:
                self.chunks.stop()
            self.get_logger().info('empty chunk: stop and hold')
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9  # may be negative
        points = msg.points[:self.cfg.max_chunk_points + 1]  # enough to refuse a long one
        n = len(self.cfg.joint_names)
        actions = chunk_positions(points, n)
        if actions is None:
            actions = np.zeros((len(points), 0))
        times = [_duration(p.time_from_start) for p in points]
        with self._lock:
            now = self._now()
            reason = self.chunks.add(stamp, list(msg.joint_names), actions, now, times)
        if reason is not None:
            self._log_drop(reason, f'chunk dropped ({reason}): stamp {stamp:.3f}, now '
                           f'{now:.3f}, names {list(msg.joint_names)}, {len(msg.points)} points')

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self.chunks.reset(self._now())

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        with self._lock:
            self.chunks.reset(self._now())
        response.success = True
        response.message = 'chunks dropped; holding until the next chunk'
        return response

    def _on_tick(self) -> None:
        with self._lock:
            now = self._now()
            command, hold = self.chunks.tick(now)
            tick = self.chunks.last_tick
        self._pub.publish(command_to_msg(command, hold, _COMMAND_TYPES))
        self.commands += 1
        if self._tick_pub is not None:
            age = None if tick.chunk_age is None else tick.chunk_age * 1e3
            self._tick_pub.publish(String(data=json.dumps(
                {'time': now, 'hold': tick.hold, 'switch': tick.switch, 'chunk_age_ms': age,
                 'command': command.tolist()})))

    def _log_drop(self, reason: str, text: str) -> None:
        now = self._now()
        if now - self._last_drop_log.get(reason, -1e9) >= 5.0:
            self._last_drop_log[reason] = now
            self.get_logger().warning(text)

    def _publish_diagnostics(self) -> None:
        with self._lock:
            s = self.chunks.stats
            values = {'ticks': s.ticks, 'hold_ticks': s.hold_ticks,
                      'clipped_ticks': s.clipped_ticks, 'switch_ticks': s.switch_ticks,
                      'limited_switches': s.limited_switches, 'chunks_received': s.received,
                      'chunks_accepted': s.accepted, 'busy': self.chunks.busy,
                      'arrival_delay_ms_p50': percentile(s.arrival_delay_ms[-100:], 50),
                      'arrival_delay_ms_p90': percentile(s.arrival_delay_ms[-100:], 90),
                      'chunk_age_ms_p50': percentile(s.chunk_age_ms, 50),
                      'chunk_age_ms_p95': percentile(s.chunk_age_ms, 95)}
            values.update({f'dropped_{k}': v for k, v in s.dropped.items()})
        dropped = sum(s.dropped.values())
        level = DiagnosticStatus.WARN if dropped else DiagnosticStatus.OK
        status = DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: controller',
            message=f'{"executing" if values["busy"] else "holding"}, {dropped} chunks dropped',
            hardware_id=self.cfg.mode,
            values=[KeyValue(key=k, value='n/a' if v is None else str(v))
                    for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def _duration(d: Any) -> float:
    return d.sec + d.nanosec * 1e-9


def main(args: Optional[list[str]] = None) -> None:
    """Run the controller node alone."""
    spin_node(ControllerNode, args)


if __name__ == '__main__':
    main()
