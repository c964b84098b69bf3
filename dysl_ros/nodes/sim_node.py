"""A simulation suite as a ROS node: the MuJoCo tabletop (dysl_ros.sim.TabletopEnv, the
default) or Meta-World MT10 (parameter `suite`: metaworld-mt10), from sim/suites.py.

The suite fixes the action layout and what the other parameters default to: cameras (empty:
the suite's, tabletop front + wrist, MT10 corner + gripperPOV), camera_topics (empty: front
on `image`, any other camera on `<camera>/image`) and control_rate (0: the suite's, 20 Hz or
80 Hz). A value the suite cannot take (a camera it does not have, a rate its env does not
step at, MT10's max_steps over 500) stops the node at start with one line saying why.

Topics (relative names):

    subscribes  command          std_msgs/Float64MultiArray (COMMAND_QOS): one action in the
                                 suite's action_names order (tabletop (7,): dx dy dz droll
                                 dpitch dyaw gripper; MT10 (4,): dx dy dz gripper): deltas and
                                 an absolute gripper
                instruction      std_msgs/String (INSTRUCTION_QOS): reset to the task it names
                                 (next seed) and start stepping
    publishes   camera_topics[i] sensor_msgs/Image rgb8 (CAMERA_QOS), all cameras of one step
                                 with the same stamp, frame_id = the camera name; the first
                                 camera (the policy's primary, which triggers inference) is
                                 published last, so its frame finds the others there
                episode_status   std_msgs/String (STATUS_QOS), one JSON object per reset and per
                                 step: {"episode", "seed", "task", "instruction", "step",
                                 "done", "success", "timeout", "holds", "error"}
    services    ~/reset          std_srvs/Trigger: restart the current task with the next seed

Stepping: a timer at control_rate steps the episode while it runs, with the oldest queued
command (up to command_queue are kept, so jitter between the controller's and the sim's
timers loses no command); with none queued it holds (zero deltas, gripper unchanged: the
suite's initial value before the first command, tabletop 0, MT10 -1, both open). The
status counts as `holds` the steps that held, for lack of a command or because the
controller sent a hold (a command whose layout dimension is labelled 'hold'). After
success or the time limit it stops stepping and publishes nothing more until the next
instruction or reset.

Every env call (build, reset, step, close) runs on one dedicated thread: an EGL / OSMesa
rendering context belongs to the thread that made it current, and executor threads vary.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from ..runtime.messages import HOLD_LABEL, EpisodeStatus, camera_topic, command_from_msg
from ..sim.suites import DEFAULT_SUITE, SUITES, Suite, get_suite
from .image_conversion import rgb_to_image
from .params import Param, declare_params
from .qos import CAMERA_QOS, COMMAND_QOS, INSTRUCTION_QOS, STATUS_QOS
from .spin import spin_node

PARAMS = (
    Param('suite', DEFAULT_SUITE, 'simulation suite: its env, tasks, cameras, action layout '
          'and rate', choices=tuple(SUITES), read_only=True),
    Param('control_rate', 0.0, 'simulation steps per second (one command per step); 0: the '
          'suite\'s (tabletop 20, metaworld-mt10 80, its only rate)', 0.0, 500.0,
          read_only=True),
    Param('image_size', 64, 'square camera resolution in pixels (metaworld-mt10: at most 480)',
          16, 1024, read_only=True),
    Param('cameras', [], 'cameras rendered and published, in the order of camera_topics, the '
          'primary first; empty: the suite\'s (tabletop front, wrist; metaworld-mt10 corner, '
          'gripperPOV)', read_only=True, dynamic_typing=True),
    Param('camera_topics', [], 'image topic per camera; empty: front on image, any other '
          'camera on <camera>/image', read_only=True, dynamic_typing=True),
    Param('seed', 0, 'seed of the first episode; each reset uses the next one', 0, 2 ** 31 - 1,
          read_only=True),
    Param('max_steps', 0, 'episode time limit in steps; 0 uses each task\'s own limit '
          '(metaworld-mt10: at most 500)', 0, 100000, read_only=True),
    Param('instruction', '', 'start an episode with this instruction at start-up; empty waits '
          'for the instruction topic', read_only=True),
    Param('command_queue', 2, 'commands kept until their step (older ones are dropped)', 1,
          100, read_only=True),
)


def sim_setup(values: dict) -> tuple[Suite, Any, list[tuple[str, str]]]:
    """The suite, its env config and the (camera, topic) pairs the node's parameter values
    ask for (ROS-free); ValueError naming the suite and the value that does not fit it."""
    suite = get_suite(values['suite'])
    cameras = tuple(values['cameras'] or ()) or suite.cameras
    topics = list(values['camera_topics'] or ()) or [camera_topic(c) for c in cameras]
    if len(topics) != len(cameras):
        raise ValueError(f'camera_topics={topics} is invalid: expected one topic per camera '
                         f'of {list(cameras)}')
    try:
        cfg = suite.env_config(values['control_rate'], 'control_rate',
                               image_size=values['image_size'],
                               cameras=cameras, max_steps=values['max_steps'] or None)
    except ValueError as e:
        raise ValueError(f'suite {suite.name}: {e}') from None
    return suite, cfg, list(zip(cameras, topics))


class SimNode(Node):
    """Steps a suite's env at its control rate; see the module docstring for its interface."""

    def __init__(self, node_name: str = 'sim_node', **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self._env_thread: Optional[ThreadPoolExecutor] = None  # none while parameters fail
        v = declare_params(self, PARAMS)
        self.suite, cfg, pairs = sim_setup(v)
        self._env_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix='sim_env')
        self.env = self._env_thread.submit(self.suite.make_env, cfg).result()
        self.action_dim = len(self.suite.action_names)
        self._next_seed = int(v['seed'])
        self._running = False
        self._instruction = ''
        self._holds = 0
        self._last: Optional[np.ndarray] = None  # this episode's last action
        self._queue: deque = deque(maxlen=v['command_queue'])
        self._queue_lock = threading.Lock()
        self._last_log = -1e9
        # the env is used from one callback group only: timer, instruction and reset
        self._sim_group = MutuallyExclusiveCallbackGroup()
        self._image_pubs = {c: self.create_publisher(Image, t, CAMERA_QOS)
                            for c, t in pairs[1:] + pairs[:1]}  # primary last
        self._status_pub = self.create_publisher(String, 'episode_status', STATUS_QOS)
        self.create_subscription(Float64MultiArray, 'command', self._on_command, COMMAND_QOS)
        self.create_subscription(String, 'instruction', self._on_instruction, INSTRUCTION_QOS,
                                 callback_group=self._sim_group)
        self.create_service(Trigger, '~/reset', self._on_reset, callback_group=self._sim_group)
        self.create_timer(1.0 / cfg.control_hz, self._on_tick, callback_group=self._sim_group)
        self.get_logger().info(f'{self.suite.name} at {cfg.control_hz:g} Hz, cameras '
                               f'{dict(pairs)}, actions {list(self.suite.action_names)}')
        if v['instruction']:
            self.start_episode(v['instruction'])

    def start_episode(self, instruction: str) -> Optional[str]:
        """Reset to the task of `instruction` with the next seed; returns an error or None."""
        seed = self._next_seed
        try:
            obs = self._env_thread.submit(self.env.reset, seed, instruction).result()
        except ValueError as e:
            self.get_logger().error(f'instruction {instruction!r} not started: {e}')
            self._publish_status(error=str(e), instruction=instruction)
            return str(e)
        self._next_seed += 1
        self._instruction = instruction
        self._running = True
        self._holds = 0
        self._last = None
        with self._queue_lock:
            self._queue.clear()
        self.get_logger().info(f'episode {self.env.episode}: {self.env.task.name} (seed {seed})')
        self._publish(obs.images, {'success': False, 'timeout': False})
        return None

    def _on_instruction(self, msg: String) -> None:
        self.start_episode(msg.data)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        if not self._instruction:
            response.success, response.message = False, 'no task yet: send an instruction'
            return response
        error = self.start_episode(self._instruction)
        response.success = error is None
        response.message = error or f'episode {self.env.episode} (seed {self.env.seed})'
        return response

    def _on_command(self, msg: Float64MultiArray) -> None:
        a, label = command_from_msg(msg)
        if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)):
            now = self.get_clock().now().nanoseconds * 1e-9
            if now - self._last_log > 5.0:
                self._last_log = now
                self.get_logger().warning(
                    f'command ignored: expected {self.action_dim} finite values '
                    f'{list(self.suite.action_names)}, got {list(msg.data)}')
            return
        with self._queue_lock:
            self._queue.append((a, label == HOLD_LABEL))

    def _on_tick(self) -> None:
        if not self._running:
            return
        with self._queue_lock:
            action, hold = self._queue.popleft() if self._queue else (None, True)
        if action is None:  # hold: zero deltas, gripper unchanged
            action = self.suite.hold_action(self._last)
        self._holds += int(hold)
        self._last = action
        obs, done, info = self._env_thread.submit(self.env.step, action).result()
        self._running = not done
        self._publish(obs.images, info)

    def _publish(self, images: dict, info: dict) -> None:
        stamp = self.get_clock().now().to_msg()
        for camera, pub in self._image_pubs.items():
            pub.publish(rgb_to_image(images[camera], stamp=stamp, frame_id=camera))
        self._publish_status(success=bool(info['success']), timeout=bool(info['timeout']))

    def _publish_status(self, success: bool = False, timeout: bool = False,
                        error: Optional[str] = None, instruction: Optional[str] = None) -> None:
        env = self.env
        status = EpisodeStatus(
            episode=env.episode, seed=env.seed, task=env.task.name if env.episode else None,
            instruction=self._instruction if instruction is None else instruction,
            step=env.step_count, done=bool(env.episode and env.done), success=success,
            timeout=timeout, holds=self._holds, error=error)
        self._status_pub.publish(String(data=status.to_json()))

    def destroy_node(self) -> None:
        self._running = False
        if self._env_thread is not None:  # None: the parameters stopped the start
            self._env_thread.submit(self.env.close).result()
            self._env_thread.shutdown()
            self._env_thread = None
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> None:
    """Run the simulation node alone."""
    spin_node(SimNode, args)


if __name__ == '__main__':
    main()
