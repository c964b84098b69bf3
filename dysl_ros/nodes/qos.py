"""Named QoS profiles: one per kind of traffic, shared by every node and test.

All profiles are VOLATILE: a TRANSIENT_LOCAL subscription would not match the VOLATILE
publishers that tools such as `ros2 topic pub` create.
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

try:  # Iron and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks  # noqa: F401


def _volatile(depth: int, reliability: ReliabilityPolicy) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


# Cameras, best effort: newest frame only (a late frame is worth less than the next one).
# Matches every camera publisher, but across processes FastDDS loses best-effort frames
# larger than its shared-memory segment (~0.5 MB: 640x480 rgb8 and up) almost always.
SENSOR_QOS = _volatile(1, ReliabilityPolicy.BEST_EFFORT)
# Cameras, reliable depth 1 (the policy node's default): newest frame only, and large frames
# arrive, since lost fragments are resent. Matches reliable publishers (image_transport's and
# most camera drivers' default), not best-effort ones.
CAMERA_QOS = _volatile(1, ReliabilityPolicy.RELIABLE)
# Action chunks: reliable, and only the newest matters.
CHUNK_QOS = _volatile(1, ReliabilityPolicy.RELIABLE)
# Instructions: reliable, none lost when two come close together.
INSTRUCTION_QOS = _volatile(10, ReliabilityPolicy.RELIABLE)
# Commands at the control rate: reliable, a few in flight so that none is lost to jitter.
COMMAND_QOS = _volatile(5, ReliabilityPolicy.RELIABLE)
# Episode status and /diagnostics: reliable, a short history.
STATUS_QOS = _volatile(10, ReliabilityPolicy.RELIABLE)
# Recording a node's output (bag replay): reliable, deep enough that no message is lost.
RECORD_QOS = _volatile(100, ReliabilityPolicy.RELIABLE)
# /clock published by a player on simulated time.
CLOCK_QOS = _volatile(10, ReliabilityPolicy.RELIABLE)
