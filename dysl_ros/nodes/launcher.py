"""A pure-Python launcher: the nodes of launch/*.launch.py in one process, where `ros2 launch`
does not exist (PyPI ROS 2). One Context, the same parameter files, one MultiThreadedExecutor
spinning in a background thread; real DDS topics between the nodes.

    with LocalLaunch([config_file('policy.yaml'), config_file('sim.yaml')]) as launch:
        sim = launch.add(SimNode)
        policy = launch.add(PolicyNode, parameter_overrides=[Parameter('backend', ...)])
        launch.start()
        policy.trigger_configure(); policy.trigger_activate()
"""
from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node

from ..paths import package_path

# the DDS domains whose ports stay clear of Linux's ephemeral range
LOCAL_DOMAINS = range(1, 102)


def ros_environment(domain_id: Optional[int] = None) -> dict[str, str]:
    """Keep DDS on this machine, in domain `domain_id`, else ROS_DOMAIN_ID when set, else a
    random one of LOCAL_DOMAINS. Call before rclpy.init; returns the variables it set."""
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if os.environ.get('ROS_DISTRO') == 'humble':  # Humble predates the discovery range
        os.environ['ROS_LOCALHOST_ONLY'] = '1'
    if domain_id is not None:
        os.environ['ROS_DOMAIN_ID'] = str(domain_id)
    else:
        os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().choice(LOCAL_DOMAINS)))
    large_frames_profile()
    return {k: os.environ[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID')}


LARGE_FRAMES_PROFILE = 'fastdds_large_frames.xml'


def large_frames_profile() -> Optional[str]:
    """Point FastDDS at config/fastdds_large_frames.xml (shared-memory segments that carry
    camera frames whole) unless the user chose a profile or another RMW; call before
    rclpy.init. Returns the profile file in use, if any."""
    if os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        return None
    names = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
    chosen = next((os.environ[n] for n in names if os.environ.get(n)), None)
    if chosen is None:
        chosen = str(config_file(LARGE_FRAMES_PROFILE))
        # Humble's FastDDS 2.6 reads the older name; FastDDS 3 warns that it is deprecated
        os.environ[names[1] if os.environ.get('ROS_DISTRO') == 'humble' else names[0]] = chosen
    return chosen


def config_file(name: str) -> Path:
    """config/<name> of this package (source tree or ROS share)."""
    path = package_path('config', name)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such parameters file')
    return path


def ros_args(params_files: Sequence[Path] = (), log_level: Optional[str] = None) -> list[str]:
    """rclpy.init arguments: these parameter files (for every node of the process) and a
    logging level ('debug', 'info', 'warn', 'error')."""
    args = []
    for f in params_files:
        args += ['--params-file', str(f)]
    if log_level:
        args += ['--log-level', log_level]
    return ['--ros-args'] + args if args else []


def spin_yielding(executor: MultiThreadedExecutor, running: Callable[[], bool]) -> None:
    """executor.spin(), giving the GIL away after each callback it hands to its threads.

    rclpy's MultiThreadedExecutor yields a callback it has already submitted to its thread
    pool again and again until a pool thread starts it, so its spin loop busy-waits holding
    the GIL that the pool thread needs to start (ros2/rclpy#1452, fixed the same way in
    rclpy 10.0.4; Humble's rclpy and this machine's 9.1 spin). In the demo on 2 cores it ran
    13-50 loops per callback, took up to a core, and stretched 5 ms policy steps to hundreds
    of ms waiting for the GIL. Returns after executor.shutdown() once `running` is false.
    """
    while running():
        executor.spin_once()  # returns once it has submitted a callback, or on shutdown
        os.sched_yield()  # releases the GIL: the pool thread given the callback takes it


class LocalLaunch:
    """Nodes in one process over real DDS; a context manager that tears everything down.

    num_threads: executor threads. The policy's inference and the sim's step each hold a
    thread while they wait for their model / env thread, so a CPU-count default (2 here)
    would starve every other callback. The executor spins with spin_yielding.
    """

    def __init__(self, params_files: Sequence[Path] = (), num_threads: int = 8,
                 domain_id: Optional[int] = None, log_level: Optional[str] = None):
        self.env = ros_environment(domain_id)
        self.context = Context()
        rclpy.init(args=ros_args(params_files, log_level), context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=num_threads, context=self.context)
        self.nodes: list[Node] = []
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def add(self, node_class: Callable[..., Any], **kwargs: Any) -> Any:
        """Create a node in this launch's context and add it to the executor."""
        node = node_class(context=self.context, **kwargs)
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def start(self) -> 'LocalLaunch':
        """Spin the executor in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._spin, name='executor', daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        try:
            spin_yielding(self.executor, lambda: self.context.ok() and not self._stop.is_set())
        except Exception:  # shutdown races end the spin; nothing to report then
            if self.context.ok():
                raise

    def close(self) -> None:
        """Stop spinning, shut lifecycle nodes down, destroy every node, shut the context
        down."""
        self._stop.set()
        self.executor.shutdown(timeout_sec=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for node in reversed(self.nodes):
            if isinstance(node, LifecycleNode):
                try:  # on_shutdown frees what configure made (the model and its thread)
                    node.trigger_shutdown()
                except Exception:  # already finalized, or on_shutdown failed: tear down anyway
                    pass
            node.destroy_node()
        self.nodes.clear()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> 'LocalLaunch':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             period: float = 0.01) -> None:
    """Poll `condition` until true; TimeoutError naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f'timed out after {timeout:g} s waiting for {what}')
        time.sleep(period)


def publishers_matched(nodes: Sequence[Node], topics: Sequence[str]) -> bool:
    """Whether every publisher of `nodes` on one of `topics` (fully qualified names) has a
    matched subscription: call before the first message that must not be lost."""
    found = set()
    for node in nodes:
        for pub in node.publishers:
            if pub.topic_name in topics:
                if pub.get_subscription_count() < 1:
                    return False
                found.add(pub.topic_name)
    return found == set(topics)
