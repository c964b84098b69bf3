"""The demo's episode driver: sends instructions and collects what happened, over ROS only.

It publishes `instruction` (the sim resets to that task, the policy and the controller start
a new episode), follows `episode_status` until the episode is done, and gathers the policy's
per-chunk statistics from `<policy>/step_stats`.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import numpy as np
from rclpy.node import Node
from std_msgs.msg import String

from ..runtime.messages import EpisodeStatus, StepStats
from ..runtime.stats import percentile
from .qos import INSTRUCTION_QOS, STATUS_QOS


class EpisodeDriver(Node):
    """Runs one episode at a time through the topics; run_episode blocks (call it from a
    thread other than the executor's)."""

    def __init__(self, node_name: str = 'demo_driver', policy_node: str = 'policy_node',
                 **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self._cond = threading.Condition()
        self._status: Optional[EpisodeStatus] = None
        self._steps: list[StepStats] = []
        self.instruction_pub = self.create_publisher(String, 'instruction', INSTRUCTION_QOS)
        self.create_subscription(String, 'episode_status', self._on_status, STATUS_QOS)
        self.create_subscription(String, f'{policy_node}/step_stats', self._on_step, STATUS_QOS)

    def _on_status(self, msg: String) -> None:
        with self._cond:
            self._status = EpisodeStatus.from_json(msg.data)
            self._cond.notify_all()

    def _on_step(self, msg: String) -> None:
        with self._cond:
            self._steps.append(StepStats.from_json(msg.data))

    def forget_status(self) -> None:
        """Forget the sim's last status: a restarted sim numbers its episodes from 1 again."""
        with self._cond:
            self._status = None

    def run_episode(self, instruction: str, timeout: float) -> dict:
        """Start an episode with `instruction` and wait until the sim reports it done."""
        with self._cond:
            before = self._status.episode if self._status else 0
            self._steps = []
        t0 = time.monotonic()
        self.instruction_pub.publish(String(data=instruction))
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._status is not None and bool(
                    self._status.error or
                    (self._status.episode > before and self._status.done)), timeout)
            status = self._status
            steps = list(self._steps)
        if done and not status.error:  # chunks in flight when the sim stopped
            self._drain(quiet=0.25, limit=2.0)
            with self._cond:
                steps = list(self._steps)
        if not done:
            raise TimeoutError(f'episode {instruction!r} not done after {timeout:g} s '
                               f'(last status {status})')
        if status.error:
            raise ValueError(f'the sim rejected {instruction!r}: {status.error}')
        if steps:  # chunks of this episode only: the policy numbers its episodes too
            last = max(s.episode for s in steps)
            steps = [s for s in steps if s.episode == last]
        return summarize(status, steps, time.monotonic() - t0)

    def _drain(self, quiet: float, limit: float) -> None:
        """Wait until no step statistics arrived for `quiet` seconds (at most `limit`)."""
        end = time.monotonic() + limit
        count = -1
        while time.monotonic() < end:
            with self._cond:
                n = len(self._steps)
            if n == count:
                return
            count = n
            time.sleep(quiet)


def summarize(status: EpisodeStatus, steps: list[StepStats], wall_s: float) -> dict:
    """One table row: the sim's outcome and the policy's statistics for one episode."""
    layers = [s.layers_run for s in steps]
    return {
        'task': status.task, 'seed': status.seed, 'success': bool(status.success),
        'steps': int(status.step or 0), 'holds': int(status.holds or 0), 'chunks': len(steps),
        'layers_run_mean': float(np.mean(layers)) if layers else None,
        'layers_total': steps[-1].layers_total if steps else None,
        'verified': sum(bool(s.verified) for s in steps),
        'policy_ms_p50': percentile([s.policy_ms for s in steps], 50),
        'policy_ms_p95': percentile([s.policy_ms for s in steps], 95),
        'camera_to_chunk_ms_p50': percentile([s.camera_to_chunk_ms for s in steps], 50),
        'camera_to_chunk_ms_p95': percentile([s.camera_to_chunk_ms for s in steps], 95),
        'wall_s': wall_s,
    }
