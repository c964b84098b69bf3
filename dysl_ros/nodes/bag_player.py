"""Live replay: a bag's camera and instruction streams over DDS into a policy node.

The rclpy half of `replay --live` (dysl_ros.bags.replay loads it only for --live; the chunks
are compared in dysl_ros.bags.evaluate). The frames keep their original header stamps. The
policy node drops frames older than max_image_age relative to its clock, and a bag's stamps
are as old as the bag, so the node runs on simulated time: this tool publishes /clock = each
frame's stamp just before the frame (so every frame is fresh on arrival), and the node is
started with use_sim_time = true (in-process) or must have been (--external: `ros2 run ...
--ros-args -p use_sim_time:=true`). With --no-clock the node needs a max_image_age covering
the stamps' age instead (the parameter allows at most 60 s: only for bags recorded moments
ago).

Messages go out in log-time order at the recorded rate times `rate` (cameras of one instant
before the primary camera, whose frame triggers inference). Everything the node publishes on
the chunk and step-statistics topics is recorded into <out>/live_bag together with the
published streams (original log times; received messages at the matching bag time), so the
live bag can itself be replayed step-locked: with --frames chunked that reproduces the node's
chunks exactly on the same backend.

DDS stays on this machine: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, and ROS_DOMAIN_ID as set,
else a random domain (dysl_ros.nodes.launcher.ros_environment).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory
from tqdm import tqdm

from ..bags.bagfile import BagWriter, read_messages
from ..bags.episodes import BagData, load_bag
from ..bags.evaluate import evaluate_live
from ..bags.topics import MSG_CHUNK, MSG_COMPRESSED, MSG_STRING, TopicMap
from ..validation import require
from .launcher import LocalLaunch, wait_for
from .qos import CAMERA_QOS, CLOCK_QOS, INSTRUCTION_QOS, RECORD_QOS

LIVE_BAG = 'live_bag'


@dataclass(frozen=True)
class LiveConfig:
    """Live replay settings.

    Args:
        rate: playback speed (1 = as recorded).
        launch: start a policy node in this process (False: one is already running).
        node_name: the policy node's name (its statistics are on /<node_name>/step_stats).
        publish_clock: publish /clock from the frame stamps (the node uses simulated time).
        timeout: seconds to wait for discovery, and for the node's chunks after the last
            frame.
        settle: seconds without a new chunk after the last frame that end the replay.
        domain_id: ROS_DOMAIN_ID; None keeps the environment's, else a random one.
    """

    rate: float = 1.0
    launch: bool = True
    node_name: str = 'policy_node'
    publish_clock: bool = True
    timeout: float = 60.0
    settle: float = 0.5
    domain_id: Optional[int] = None

    def __post_init__(self) -> None:
        require(0.01 <= self.rate <= 100.0, 'rate', self.rate, '[0.01, 100]')
        require(bool(self.node_name) and '/' not in self.node_name, 'node_name',
                self.node_name, 'a node name without a namespace')
        require(self.timeout > 0, 'timeout', self.timeout, '> 0 s')
        require(self.settle > 0, 'settle', self.settle, '> 0 s')


class _Recorder:
    """Raw messages received on the recorded topics, at bag time, until closed."""

    def __init__(self, to_bag_ns: Any):
        self.to_bag_ns = to_bag_ns
        self.lock = threading.Lock()
        self.items: list[tuple[str, str, int, bytes]] = []
        self.last = time.monotonic()
        self.closed = False

    def callback(self, topic: str, msgtype: str) -> Any:
        def on(raw: bytes) -> None:
            with self.lock:
                if self.closed:  # e.g. the hold chunk of our own deactivate
                    return
                self.items.append((topic, msgtype, self.to_bag_ns(), bytes(raw)))
                if msgtype == MSG_CHUNK:
                    self.last = time.monotonic()
        return on

    def count(self, topic: str, with_points: bool = False) -> int:
        """Messages received on `topic` (chunks: only those with points, not holds)."""
        from ..bags.topics import deserialize
        items = [i for i in self.items if i[0] == topic]
        if with_points:
            items = [i for i in items if len(deserialize(i[3], MSG_CHUNK).points) > 0]
        return len(items)


def _node_topic(topic: str, msgtype: str) -> tuple[str, str]:
    """(camera_topics entry, image_transport) the policy node needs to read `topic`."""
    if msgtype == MSG_COMPRESSED:
        if not topic.endswith('/compressed'):
            raise ValueError(f'camera topic {topic} carries CompressedImage but does not end '
                             'in /compressed, which the policy node expects')
        return topic[:-len('/compressed')], 'compressed'
    return topic, 'raw'


def replay_live(data: BagData, out: Path | str, cfg: LiveConfig = LiveConfig(),
                model: Optional[Path] = None, backend: str = 'torch', method: str = 'dysl',
                device: str = 'cpu', threads: int = 0,
                references: Sequence[str] = ('auto',), progress: bool = True
                ) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """Publish `data`'s streams into a policy node, record what it publishes into
    <out>/live_bag and compare its chunks with the references; returns (episodes, arrays,
    meta) for dysl_ros.bags.report.write_report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    live_bag = out / LIVE_BAG
    if live_bag.exists():
        raise FileExistsError(f'{live_bag} already exists: choose a new --out directory')
    topics = data.topics
    stats_topic = (topics.stats if topics.stats != TopicMap().stats
                   else f'/{cfg.node_name}/step_stats')
    outgoing = _outgoing(data)
    if not any(kind == 'camera' for kind, *_ in outgoing):
        raise ValueError(f'{data.path}: no camera frames to publish')
    recorder, published, launch_env = _run_graph(data, outgoing, stats_topic, cfg, model,
                                                 backend, method, device, threads, progress)
    with BagWriter(live_bag, 'mcap', {'format': 'dysl_ros.bag/1', 'source': 'live-replay',
                                      'replayed': str(data.path), 'rate': cfg.rate}) as bag:
        rows = [(log_ns, topic, msgtype, raw) for _, topic, msgtype, log_ns, raw in published]
        rows += [(log_ns, topic, msgtype, raw) for topic, msgtype, log_ns, raw in recorder.items]
        if topics.status in data.types:  # phases for the report; not sent over DDS
            rows += [(m.log_ns, m.topic, m.msgtype, m.raw)
                     for m in read_messages(data.path, [topics.status])]
        for log_ns, topic, msgtype, raw in sorted(rows, key=lambda r: r[0]):
            bag.write_raw(topic, msgtype, log_ns, raw)
    live_topics = TopicMap(cameras=topics.cameras, instruction=topics.instruction,
                           chunk=topics.chunk, command=topics.command, status=topics.status,
                           stats=stats_topic)
    live = load_bag(live_bag, live_topics, need=('cameras', 'instruction'))
    episodes, arrays, refs = evaluate_live(live, data, references, model, backend, device,
                                           threads, progress,
                                           have_model=cfg.launch or model is not None)
    meta = {'live_bag': str(live_bag), 'rate': cfg.rate,
            'node': 'in-process' if cfg.launch else f'external /{cfg.node_name}',
            'clock': cfg.publish_clock, 'ros_environment': launch_env,
            'frames_published': sum(1 for p in published if p[0] == 'camera'),
            'chunks_received': recorder.count(topics.chunk, with_points=True),
            'holds_received': recorder.count(topics.chunk) - recorder.count(topics.chunk, True),
            'step_stats_received': recorder.count(stats_topic),
            'references': list(refs)}
    return episodes, arrays, meta


def _outgoing(data: BagData) -> list[tuple[str, str, str, int, bytes]]:
    """(kind, topic, msgtype, log_ns, raw) to publish, in order: instructions and frames."""
    topics = data.topics
    cams = [t for _, t in topics.cameras]
    wanted = cams + ([topics.instruction] if topics.instruction in data.types else [])
    items = []
    for m in read_messages(data.path, wanted):
        kind = 'camera' if m.topic in cams else 'instruction'
        items.append((kind, m.topic, m.msgtype, m.log_ns, m.raw))
    if topics.instruction not in data.types:  # --instruction: send it before the first frame
        from ..bags.topics import serialize, string_msg
        first = min(i[3] for i in items) if items else 0
        items.append(('instruction', topics.instruction, MSG_STRING, first - 200_000_000,
                      serialize(string_msg(data.episodes[0].instruction), MSG_STRING)))
    primary = topics.cameras[0][1]
    # one instant: instruction first, then the other cameras, the primary camera last
    order = {'instruction': 0, 'camera': 1}
    items.sort(key=lambda i: (i[3], order[i[0]], i[1] == primary))
    return items


def _run_graph(data: BagData, outgoing: list, stats_topic: str, cfg: LiveConfig,
               model: Optional[Path], backend: str, method: str, device: str, threads: int,
               progress: bool) -> tuple[_Recorder, list, dict]:
    from .policy_node import PolicyNode
    from rclpy.lifecycle import TransitionCallbackReturn
    topics = data.topics
    types = {t: data.types[t] for _, t in topics.cameras}
    first_ns = outgoing[0][3]
    published = []
    with LocalLaunch(domain_id=cfg.domain_id, log_level='warn') as launch:
        t0 = time.monotonic_ns()
        recorder = _Recorder(lambda: first_ns + int((time.monotonic_ns() - t0) * cfg.rate))
        node = None
        if cfg.launch:
            node = launch.add(PolicyNode, node_name=cfg.node_name,
                              parameter_overrides=_node_params(topics, types, cfg, model,
                                                               backend, method, device,
                                                               threads),
                              cli_args=_remaps(topics))
        player = launch.add(rclpy.create_node, node_name='dysl_bag_replay')
        pubs = {t: player.create_publisher(CompressedImage if m == MSG_COMPRESSED else Image,
                                           t, CAMERA_QOS) for t, m in types.items()}
        instruction_pub = player.create_publisher(String, topics.instruction, INSTRUCTION_QOS)
        clock_pub = player.create_publisher(Clock, '/clock', CLOCK_QOS)
        player.create_subscription(JointTrajectory, topics.chunk,
                                   recorder.callback(topics.chunk, MSG_CHUNK), RECORD_QOS,
                                   raw=True)
        player.create_subscription(String, stats_topic,
                                   recorder.callback(stats_topic, MSG_STRING), RECORD_QOS,
                                   raw=True)
        launch.start()
        if node is not None:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f'the policy node did not configure: {node.error_text}')
            node.trigger_activate()
        where = (f'ROS_DOMAIN_ID={launch.env["ROS_DOMAIN_ID"]}, '
                 f'ROS_AUTOMATIC_DISCOVERY_RANGE={launch.env["ROS_AUTOMATIC_DISCOVERY_RANGE"]}')
        try:
            wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values())
                     and instruction_pub.get_subscription_count() > 0
                     and player.count_publishers(topics.chunk) > 0, cfg.timeout,
                     f'an active policy node subscribing to {sorted(pubs)} and '
                     f'{topics.instruction} and publishing {topics.chunk} ({where})')
        except TimeoutError as e:
            raise TimeoutError(f'{e}; with --external start the node with use_sim_time:=true '
                               'and activate it') from None
        time.sleep(0.2)  # let the node's side of every match settle too
        t0 = time.monotonic_ns()
        last_clock = -1
        for kind, topic, msgtype, log_ns, raw in tqdm(outgoing, desc='live replay',
                                                     unit='msg', disable=not progress):
            delay = (log_ns - first_ns) / cfg.rate * 1e-9 - (time.monotonic_ns() - t0) * 1e-9
            if delay > 0:
                time.sleep(delay)
            if kind == 'instruction':
                instruction_pub.publish(deserialize_message(raw, String))
            else:
                msg = deserialize_message(raw, CompressedImage if msgtype == MSG_COMPRESSED
                                          else Image)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                if cfg.publish_clock and stamp > last_clock:
                    clock_pub.publish(Clock(clock=TimeMsg(sec=msg.header.stamp.sec,
                                                          nanosec=msg.header.stamp.nanosec)))
                    last_clock = stamp
                pubs[topic].publish(msg)
            published.append((kind, topic, msgtype, log_ns, raw))
        end = time.monotonic() + cfg.timeout
        start_wait = time.monotonic()
        while time.monotonic() < end:
            with recorder.lock:
                quiet = time.monotonic() - max(recorder.last, start_wait)
            if quiet >= cfg.settle:
                break
            time.sleep(0.05)
        with recorder.lock:
            recorder.closed = True
        if node is not None:
            node.trigger_deactivate()
        env = dict(launch.env)
    return recorder, published, env


def _node_params(topics: TopicMap, types: dict[str, str], cfg: LiveConfig,
                 model: Optional[Path], backend: str, method: str, device: str,
                 threads: int) -> list[Parameter]:
    node_topics, transports = zip(*(_node_topic(t, types[t]) for _, t in topics.cameras))
    if len(set(transports)) != 1:
        raise ValueError('the policy node reads every camera with one image_transport: mixed '
                         f'Image / CompressedImage topics {dict(types)}')
    values = {'model_path': str(model) if model else '', 'backend': backend, 'method': method,
              'device': device, 'ort_threads': int(threads),
              'camera_names': list(topics.camera_names), 'camera_topics': list(node_topics),
              'image_transport': transports[0], 'use_sim_time': cfg.publish_clock}
    if not cfg.publish_clock:
        values['max_image_age'] = 60.0
    return [Parameter(k, value=v) for k, v in values.items()]


def _remaps(topics: TopicMap) -> list[str]:
    rules = []
    if topics.instruction != '/instruction':
        rules += ['-r', f'instruction:={topics.instruction}']
    if topics.chunk != '/action_chunk':
        rules += ['-r', f'action_chunk:={topics.chunk}']
    return ['--ros-args'] + rules if rules else []
