"""The one `main` body of every node: init, spin on a MultiThreadedExecutor, clean up."""
from __future__ import annotations

from typing import Callable, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node


def spin_node(make_node: Callable[[], Node], args: Optional[list[str]] = None,
              on_start: Optional[Callable[[Node], None]] = None) -> None:
    """Run one node until Ctrl-C or shutdown (Humble-safe: no `with rclpy.init()`)."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        if on_start is not None:
            on_start(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
