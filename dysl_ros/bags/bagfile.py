"""Reading and writing rosbag2 bags with rosbags, with errors that name the bag and topic.

Written bags are rosbag2 format version 8: the newest whose metadata Humble's rosbag2 still
parses (version 9 stores the offered QoS profiles as a YAML list where Humble expects a
string). Storage is MCAP by default (Humble: `ros-humble-rosbag2-storage-mcap`) or sqlite3
(Humble's default plugin). Each topic carries the QoS profile the nodes publish it with, so
`ros2 bag play` offers the same QoS.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .topics import IMAGE_TYPES, MSG_CHUNK, MSG_COMMAND, deserialize, serialize

STORAGES = ('mcap', 'sqlite3')
BAG_VERSION = 8
CUSTOM_KEY = 'dysl_ros'  # custom_data entry: JSON describing how the bag was made


class BagError(ValueError):
    """A bag that cannot be used as asked: the message names the bag and the topic or type."""


# What a command reports as `error: <message>` (exit status 2) instead of a traceback.
@dataclass(frozen=True)
class RawMessage:
    """One message as stored: topic, type, log time (ns) and CDR bytes."""

    topic: str
    msgtype: str
    log_ns: int
    raw: bytes

    def decode(self) -> Any:
        """The rosbags message; BagError naming topic and time when the bytes are bad."""
        try:
            return deserialize(self.raw, self.msgtype)
        except Exception as e:  # rosbags raises assorted errors on truncated CDR
            raise BagError(f'topic {self.topic}: cannot decode the {self.msgtype} logged at '
                           f'{self.log_ns} ns ({type(e).__name__}: {e})') from None


def _qos(reliable: bool, depth: int) -> Any:
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.VOLATILE, deadline=zero, lifespan=zero,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
               avoid_ros_namespace_conventions=False)


def offered_qos(msgtype: str, topic: str) -> Any:
    """The QoS the nodes publish `msgtype` with (dysl_ros.nodes.qos)."""
    if msgtype in IMAGE_TYPES:
        return _qos(True, 1)  # CAMERA_QOS (ros2 bag play then matches the policy node)
    if msgtype == MSG_CHUNK:
        return _qos(True, 1)  # CHUNK_QOS
    if msgtype == MSG_COMMAND:
        return _qos(True, 5)  # COMMAND_QOS
    return _qos(True, 10)  # INSTRUCTION_QOS, STATUS_QOS


class BagWriter:
    """A new bag; topics are added on first write. Use as a context manager: on an error the
    bag is closed as far as written (a readable, shorter bag)."""

    def __init__(self, path: Path | str, storage: str = 'mcap', info: Optional[dict] = None):
        from rosbags.rosbag2 import StoragePlugin, Writer
        if storage not in STORAGES:
            raise ValueError(f'storage={storage!r} is invalid: expected one of {STORAGES}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} already exists: choose a new bag path')
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugin)
        if info is not None:
            self._writer.set_custom_data(CUSTOM_KEY, json.dumps(info))
        self._writer.open()
        self._connections: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, msgtype: str, log_ns: int, msg: Any) -> None:
        """Serialise a rosbags message and write it at log time `log_ns`."""
        self.write_raw(topic, msgtype, log_ns, serialize(msg, msgtype))

    def write_raw(self, topic: str, msgtype: str, log_ns: int, raw: bytes) -> None:
        """Write CDR bytes as they are."""
        from .topics import typestore
        key = (topic, msgtype)
        if key not in self._connections:
            if any(t == topic for t, _ in self._connections):
                raise BagError(f'{self.path}: topic {topic} written with two types')
            self._connections[key] = self._writer.add_connection(
                topic, msgtype, typestore=typestore(),
                offered_qos_profiles=[offered_qos(msgtype, topic)])
        self._writer.write(self._connections[key], int(log_ns), raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        """Write the index and metadata.yaml."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open(path: Path) -> Any:
    from rosbags.rosbag2 import Reader
    if not path.exists():
        raise BagError(f'{path}: no such bag (a rosbag2 directory, .mcap or .db3 file)')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # ReaderError, YAML errors, sqlite / MCAP errors
        raise BagError(f'{path}: not a readable rosbag2 bag ({type(e).__name__}: {e})') from None
    return reader


def bag_topics(path: Path | str) -> dict[str, str]:
    """topic -> message type of every topic in the bag."""
    path = Path(path)
    reader = _open(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def bag_info(path: Path | str) -> Optional[dict]:
    """The JSON this package stored in the bag's custom_data, or None."""
    reader = _open(Path(path))
    try:
        custom = getattr(reader.storage.metadata, 'custom', None) or {}
    except AttributeError:
        custom = {}
    finally:
        reader.close()
    try:
        return json.loads(custom[CUSTOM_KEY]) if CUSTOM_KEY in custom else None
    except ValueError:
        return None


def check_topics(path: Path, available: dict[str, str], wanted: dict[str, tuple[str, ...]],
                 required: Sequence[str], roles: dict[str, str]) -> dict[str, str]:
    """The wanted topics present in the bag, their types checked; BagError for a required
    topic that is missing or any wanted topic of a type not in its allowed list."""
    found = {}
    for topic, types in wanted.items():
        if topic not in available:
            if topic in required:
                listing = ', '.join(f'{t} ({m})' for t, m in sorted(available.items()))
                raise BagError(f'{path}: topic {topic} ({roles.get(topic, "")}) is not in the '
                               f'bag; it holds: {listing or "no topics"}. Name the right topic '
                               'with the topic options (--camera NAME=TOPIC, '
                               '--instruction-topic, ...)')
            continue
        if available[topic] not in types:
            raise BagError(f'{path}: topic {topic} ({roles.get(topic, "")}) has message type '
                           f'{available[topic]}, expected {" or ".join(types)}')
        found[topic] = available[topic]
    return found


def read_messages(path: Path | str, topics: Sequence[str]) -> Iterator[RawMessage]:
    """The messages of `topics` in log-time order; BagError naming the bag when its data is
    corrupt (truncated files fail here or at open)."""
    path = Path(path)
    reader = _open(path)
    n = 0
    try:
        connections = [c for c in reader.connections if c.topic in set(topics)]
        if not connections:
            return
        for conn, log_ns, raw in reader.messages(connections=connections):
            n += 1
            yield RawMessage(conn.topic, conn.msgtype, int(log_ns), bytes(raw))
    except BagError:
        raise
    except Exception as e:
        raise BagError(f'{path}: corrupt bag data after {n} messages '
                       f'({type(e).__name__}: {e})') from None
    finally:
        reader.close()
