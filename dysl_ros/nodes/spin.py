"""The one `main` body of every node: init, spin, clean up.

A node in its own process spins on a SingleThreadedExecutor. Nothing here needs more: the
policy node steps its model on a thread of its own and the other callbacks are short. And
rclpy's MultiThreadedExecutor costs a 2-core robot dearly: it hands every callback to a pool
thread and, until that thread starts it, spins on the still-ready entity holding the GIL
(ros2/rclpy#1452; Humble's rclpy does this), which stalls the model thread too.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from .launcher import large_frames_profile


def spin_node(make_node: Callable[[], Node], args: Optional[list[str]] = None,
              on_start: Optional[Callable[[Node], None]] = None) -> None:
    """Run one node until Ctrl-C or shutdown (Humble-safe: no `with rclpy.init()`).

    A node that cannot start (an invalid start parameter: out of range, or refused by the
    node) exits with status 2 and one line saying why, not a traceback. FastDDS gets the package's large-frames profile unless the
    environment names one (launcher.large_frames_profile).
    """
    large_frames_profile()
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except (ValueError, ParameterException) as e:  # invalid start parameters
            print(f'error: {e}', file=sys.stderr)
            sys.exit(2)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if on_start is not None:
            on_start(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C shut the context down while a callback ran (a timer's publish then fails
        # with "publisher's context is invalid"): a clean stop, not a crash
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
