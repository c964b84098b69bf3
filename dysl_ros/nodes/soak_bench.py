"""Soak: the policy and controller nodes, each in its own process, under steady camera traffic.

This process starts the two nodes as `ros2 run` would (same ROS_DOMAIN_ID, DDS on loopback):

    python -m dysl_ros.nodes.policy_node --ros-args --params-file config/policy.yaml \\
        -p model_path:=MODEL -p backend:=... -p method:=... -p device:=... -p autostart:=true
    python -m dysl_ros.nodes.controller_node --ros-args --params-file config/policy.yaml

waits for both to connect, publishes the instruction, then N frame pairs at R Hz on `image`
and `wrist/image` (rgb8, one stamp per tick from this process's clock; reliable depth-1
publishers, which match reliable and best-effort subscriptions alike). It measures:

- RSS (VmRSS) of each node process about every second, against the frames sent so far;
  growth = the last sample - the first one after min(1000, N / 10) frames;
- camera -> chunk: arrival of a chunk here - its header stamp (its frame's stamp);
- the policy step: policy_ms of /policy_node/step_stats, per chunk;
- chunks per frame, the longest gap between two chunks, commands received;
- whether both processes are alive at the end, and their exit codes after SIGINT.

Exit status 1 (after the table) when no chunk came within --chunk-timeout of the first frame,
a node died or did not exit cleanly on SIGINT. The nodes are stopped (SIGINT, wait, kill) on
every path, Ctrl-C included.

    python -m dysl_ros bench soak --frames 3000 --rate 30 [--width 640 --height 480] [--json PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..runtime.messages import StepStats, command_from_msg
from .overhead_bench import INSTRUCTION, _arg, _model, add_policy_arguments

NODES = {'policy_node': 'dysl_ros.nodes.policy_node',
         'controller_node': 'dysl_ros.nodes.controller_node'}
STATS_TOPIC = '/policy_node/step_stats'
SAMPLE_PERIOD = 1.0  # s between two RSS samples
RSS_BASELINE_FRAMES = 1000  # RSS growth is counted after these frames (or N / 10 if fewer)
INSTRUCTION_SETTLE = 0.5  # s between the instruction and the first frame
STOP_TIMEOUT = 20.0  # s a node gets to exit after SIGINT before it is killed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_arguments(parser)
    parser.add_argument('--frames', type=int, default=3000, help='frame pairs (default 3000)')
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second (default 30)')
    parser.add_argument('--width', type=int, default=640, help='camera width (default 640)')
    parser.add_argument('--height', type=int, default=480, help='camera height (default 480)')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds for both nodes to load and connect (default 120)')
    parser.add_argument('--chunk-timeout', type=float, default=15.0,
                        help='seconds from the first frame to the first chunk before giving '
                             'up (default 15)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the frame (default 0)')
    parser.add_argument('--json', metavar='PATH', help='also write the figures as JSON')


def run(args: argparse.Namespace) -> int:
    from .launcher import ros_environment
    ros_environment()  # before rclpy loads anything; the node processes inherit it
    if args.frames < 1 or args.rate <= 0 or args.width < 1 or args.height < 1:
        print('error: --frames, --rate, --width and --height must be positive')
        return 2
    with tempfile.TemporaryDirectory(prefix='dysl_soak_') as tmp, _sigterm_as_interrupt():
        model = _model(args, Path(tmp))
        frame = np.random.default_rng(args.seed).integers(
            0, 256, (args.height, args.width, 3), np.uint8)  # (H, W, 3)
        procs: list[NodeProcess] = []
        try:
            for name, module in NODES.items():
                procs.append(NodeProcess(name, module, _node_arguments(name, args, model),
                                         Path(tmp) / f'{name}.log'))
            raw = _soak(args, frame, procs)
        except KeyboardInterrupt:
            print('soak: interrupted; stopping the nodes')
            return 130
        finally:
            stop_all(procs)
        if raw is None:
            for p in procs:
                print(f'--- {p.name} (pid {p.pid}, exit code {p.returncode}) log tail:\n'
                      f'{p.log_tail()}')
            return 1
        result = summarize(raw, procs, args, model)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
    for failure in result['failures']:
        print(f'FAILED: {failure}')
    if result['failures']:
        for p in procs:
            if p.name in result['log_tails']:
                print(f'--- {p.name} log tail:\n{result["log_tails"][p.name]}')
    return 0 if not result['failures'] else 1


def _node_arguments(name: str, args: argparse.Namespace, model: Path) -> list[str]:
    from .launcher import config_file, ros_args
    out = ros_args([config_file('policy.yaml')])
    if name == 'policy_node':
        values = {'model_path': str(model), 'backend': args.backend, 'method': args.method,
                  'device': args.device, 'autostart': True}
        out += [a for k, v in values.items() for a in ('-p', f'{k}:={_arg(v)}')]
    return out


class NodeProcess:
    """One node in its own process, started as `ros2 run` starts it; output to a log file."""

    def __init__(self, name: str, module: str, ros_arguments: Sequence[str], log: Path):
        self.name, self.log = name, log
        root = str(Path(__file__).resolve().parents[2])  # this source tree first
        path = os.pathsep.join(d for d in (root, os.environ.get('PYTHONPATH', '')) if d)
        # faulthandler: SIGABRT before a kill writes every thread's stack to the log
        env = {**os.environ, 'PYTHONPATH': path, 'PYTHONUNBUFFERED': '1',
               'PYTHONFAULTHANDLER': '1', 'RCUTILS_COLORIZED_OUTPUT': '0'}
        with open(log, 'wb') as out:
            # a session of its own: Ctrl-C reaches this process only, which stops the node
            self.proc = subprocess.Popen([sys.executable, '-m', module, *ros_arguments],
                                         stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.pid = self.proc.pid
        self.killed = False

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> Optional[float]:
        """Resident set size (VmRSS) in MiB; None once the process is gone."""
        try:
            status = Path(f'/proc/{self.pid}/status').read_text()
        except OSError:
            return None
        m = re.search(r'^VmRSS:\s+(\d+) kB', status, re.MULTILINE)
        return int(m.group(1)) / 1024 if m else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return '\n'.join(self.log.read_text(errors='replace').splitlines()[-lines:])
        except OSError:
            return '(no log)'

    def log_lines(self, severity: str) -> list[str]:
        """The node's log lines of one severity ('WARN', 'ERROR'), tracebacks with ERROR."""
        try:
            text = self.log.read_text(errors='replace')
        except OSError:
            return []
        out = [line for line in text.splitlines() if f'[{severity}]' in line]
        if severity == 'ERROR':
            out += [line for line in text.splitlines() if line.startswith('Traceback')]
        return out


def stop_all(procs: Sequence[NodeProcess], timeout: float = STOP_TIMEOUT) -> None:
    """SIGINT every live node, wait up to `timeout` seconds in all, then kill the rest (after
    a SIGABRT that has faulthandler write their threads' stacks to the log)."""
    for p in procs:
        if p.alive():
            p.proc.send_signal(signal.SIGINT)
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.killed = True
            p.proc.send_signal(signal.SIGABRT)
            try:
                p.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises KeyboardInterrupt in the main thread, so the nodes get stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _soak(args: argparse.Namespace, frame: np.ndarray, procs: Sequence[NodeProcess]
          ) -> Optional[dict[str, Any]]:
    """Publish the frames; the raw measurements, or None (with a message) if the nodes never
    came up."""
    from .launcher import LocalLaunch

    series: dict[str, list[list[float]]] = {p.name: [] for p in procs}

    def sample(sent: int, t: float) -> None:
        for p in procs:
            rss = p.rss_mb()
            if rss is not None:
                series[p.name].append([sent, round(t, 3), round(rss, 2)])

    with LocalLaunch() as launch:
        probe = launch.add(_Probe, frame=frame)
        launch.start()
        error = _wait_ready(probe, procs, args.startup_timeout)
        if error:
            print(f'error: {error}')
            return None
        probe.instruct()
        time.sleep(INSTRUCTION_SETTLE)  # both nodes start the episode before its first frame
        period, sent, failure = 1.0 / args.rate, 0, None
        bar = tqdm(total=args.frames, desc='soak', unit='frame', leave=False)
        t0 = start = time.monotonic()
        next_sample = start
        try:
            while sent < args.frames:
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + SAMPLE_PERIOD
                    sample(sent, now - start)
                    failure = _check(procs, probe, sent, now - start, args)
                    if failure:
                        break
                    bar.set_postfix(chunks=probe.chunk_count(), refresh=False)
                tick = t0 + sent * period
                if tick > now:
                    time.sleep(tick - now)
                elif now - tick > period:  # late by more than a tick: no burst to catch up
                    t0 = now - sent * period
                probe.publish_frame()
                sent += 1
                bar.update(1)
        finally:
            bar.close()
        duration = time.monotonic() - start
        probe.settle()  # the chunks and statistics of the last frames
        sample(sent, time.monotonic() - start)
        alive = {p.name: p.alive() for p in procs}
        stop_all(procs)  # while this process still listens: no message races its shutdown
        return {'sent': sent, 'duration_s': duration, 'failure': failure, 'alive': alive,
                'rss_series': series, **probe.results()}


def _wait_ready(probe: Any, procs: Sequence[NodeProcess], timeout: float) -> Optional[str]:
    end = time.monotonic() + timeout
    while not probe.ready():
        dead = [f'{p.name} (exit code {p.returncode})' for p in procs if not p.alive()]
        if dead:
            return f'{", ".join(dead)} exited before connecting'
        if time.monotonic() > end:
            return (f'the nodes did not connect within {timeout:g} s (--startup-timeout); '
                    f'missing: {probe.missing()}')
        time.sleep(0.1)
    return None


def _check(procs: Sequence[NodeProcess], probe: Any, sent: int, elapsed: float,
           args: argparse.Namespace) -> Optional[str]:
    """Why the soak must stop now, or None."""
    dead = [f'{p.name} (exit code {p.returncode})' for p in procs if not p.alive()]
    if dead:
        return f'{", ".join(dead)} died after {sent} frames'
    if probe.chunk_count() == 0 and elapsed > args.chunk_timeout:
        size = args.width * args.height * 3
        return (f'no chunk within {args.chunk_timeout:g} s of the first frame (--chunk-timeout)'
                f': {sent} frames of {size / 1024:.0f} KiB sent, {probe.stats_count()} step '
                'statistics received. Frames over about 500 KiB may never reach a best-effort '
                'camera subscription in another process on FastDDS; compare with --width 320 '
                '--height 240')
    return None


def summarize(raw: dict[str, Any], procs: Sequence[NodeProcess], args: argparse.Namespace,
              model: Path) -> dict[str, Any]:
    """The figures of one soak (a JSON-ready dict), with the reasons it failed, if any."""
    from ..runtime.stats import percentile
    sent = raw['sent']
    c2c = np.array([ms for _, ms in raw['camera_to_chunk']])
    stamps = [stamp for stamp, _ in raw['camera_to_chunk']]
    steps = [raw['policy_ms'][s] for s in stamps if s in raw['policy_ms']]
    arrivals = sorted(raw['chunk_arrivals'])
    baseline_frames = min(RSS_BASELINE_FRAMES, max(1, args.frames // 10))

    def figures(values: Any) -> dict[str, Optional[float]]:
        return {'p50': percentile(values, 50), 'p99': percentile(values, 99),
                'max': float(np.max(values)) if len(values) else None}

    nodes = {}
    for p in procs:
        nodes[p.name] = {
            'pid': p.pid, 'alive_at_end': raw['alive'][p.name], 'exit_code': p.returncode,
            'killed': p.killed, 'rss_mb': rss_figures(raw['rss_series'][p.name],
                                                     baseline_frames),
            'log_warnings': len(p.log_lines('WARN')), 'log_errors': len(p.log_lines('ERROR')),
            'log_warning_examples': _distinct(p.log_lines('WARN'))[:5]}
    failures = [raw['failure']] if raw['failure'] else []
    if not len(c2c):
        failures.append('no chunk answered a frame')
    for name, n in nodes.items():
        if not n['alive_at_end']:
            failures.append(f'{name} was not alive at the end (exit code {n["exit_code"]})')
        elif n['killed'] or n['exit_code'] != 0:
            failures.append(f'{name} did not exit cleanly on SIGINT (exit code '
                            f'{n["exit_code"]}{", killed" if n["killed"] else ""})')
    commands = raw['commands']
    return {
        'model': str(model), 'backend': args.backend, 'method': args.method,
        'device': args.device, 'width': args.width, 'height': args.height,
        'frames': args.frames, 'rate_hz': args.rate, 'frames_sent': sent,
        'duration_s': raw['duration_s'],
        'rate_achieved_hz': sent / raw['duration_s'] if raw['duration_s'] > 0 else None,
        'ros_domain_id': os.environ.get('ROS_DOMAIN_ID'),
        'load_average': os.getloadavg()[0],
        'chunks': len(c2c), 'chunks_per_frame': len(c2c) / sent if sent else None,
        'chunks_unknown_stamp': raw['chunks_unknown'],
        'first_chunk_s': (arrivals[0] - raw['first_frame']) if arrivals else None,
        'max_chunk_gap_s': float(np.max(np.diff(arrivals))) if len(arrivals) > 1 else None,
        'camera_to_chunk_ms': figures(c2c),
        'policy_ms': figures(steps), 'step_stats': len(steps),
        'publish_ms': figures(raw['publish_ms']),
        'commands': sum(commands.values()), 'commands_by_label': dict(commands),
        'commands_non_finite': raw['commands_non_finite'],
        'rss_baseline_frames': baseline_frames, 'nodes': nodes,
        'rss_series_columns': ['frames_sent', 'seconds', 'rss_mb'],
        'rss_series': raw['rss_series'],
        'chunk_columns': ['stamp_ns', 'camera_to_chunk_ms', 'policy_ms'],
        'chunk_samples': [[s, round(ms, 3), raw['policy_ms'].get(s)]
                          for s, ms in raw['camera_to_chunk']],
        'failures': failures,
        'log_tails': {p.name: p.log_tail() for p in procs} if failures else {},
    }


def rss_figures(series: Sequence[Sequence[float]], baseline_frames: int
                ) -> dict[str, Optional[float]]:
    """start / baseline / end / peak RSS (MiB) of [frames, seconds, rss_mb] samples; growth =
    end - the first sample with at least baseline_frames frames sent (0 without one)."""
    if not series:
        return {'start': None, 'baseline': None, 'end': None, 'peak': None, 'growth': None}
    after = [s for s in series if s[0] >= baseline_frames]
    base = after[0] if after else series[-1]
    return {'start': series[0][2], 'baseline': base[2], 'end': series[-1][2],
            'peak': max(s[2] for s in series), 'growth': round(series[-1][2] - base[2], 2)}


def _distinct(lines: list[str]) -> list[str]:
    """Log lines with their time stamp removed, each message once."""
    seen: dict[str, None] = {}
    for line in lines:
        seen.setdefault(re.sub(r'\[\d+\.\d+\] ', '', line)[:200], None)
    return list(seen)


def _ms(v: Optional[float]) -> str:
    return f'{v:.1f}' if v is not None else 'n/a'


def format_table(r: dict[str, Any]) -> str:
    rate = r['rate_achieved_hz']
    lines = [
        f'soak: {r["backend"]} / {r["method"]}, {r["model"]}, {r["width"]}x{r["height"]} rgb8 '
        f'x 2 cameras, {r["frames_sent"]} of {r["frames"]} frames at {r["rate_hz"]:g} Hz '
        f'({rate:.1f} achieved) in {r["duration_s"]:.1f} s; load average '
        f'{r["load_average"]:.1f}; ROS_DOMAIN_ID {r["ros_domain_id"]}',
        f'{"":<18}{"p50 ms":>9}{"p99 ms":>9}{"max ms":>9}']
    for name, key in (('camera -> chunk', 'camera_to_chunk_ms'), ('policy step', 'policy_ms'),
                      ('publish (2 frames)', 'publish_ms')):
        f = r[key]
        lines.append(f'{name:<18}{_ms(f["p50"]):>9}{_ms(f["p99"]):>9}{_ms(f["max"]):>9}')
    cpf = r['chunks_per_frame']
    gap = r['max_chunk_gap_s']
    lines.append(f'chunks: {r["chunks"]} for {r["frames_sent"]} frames ('
                 f'{"n/a" if cpf is None else f"{cpf:.2f}"} per frame), longest gap '
                 f'{"n/a" if gap is None else f"{gap:.2f} s"}; commands: {r["commands"]} '
                 f'{r["commands_by_label"]}, {r["commands_non_finite"]} non-finite')
    head = (f'{"node":<17}{"RSS start":>10}{"at " + str(r["rss_baseline_frames"]):>10}'
            f'{"end":>8}{"peak":>8}{"growth":>8}   alive  exit  warnings  errors')
    lines += [head + '   (RSS in MiB)', '-' * len(head)]
    for name, n in r['nodes'].items():
        m = n['rss_mb']
        cells = ''.join(f'{_ms(m[k]):>{w}}' for k, w in (('start', 10), ('baseline', 10),
                                                          ('end', 8), ('peak', 8)))
        growth = 'n/a' if m['growth'] is None else f'{m["growth"]:+.1f}'
        exit_code = f'{n["exit_code"]}{"*" if n["killed"] else ""}'
        lines.append(f'{name:<17}{cells}{growth:>8}   {"yes" if n["alive_at_end"] else "NO":<5}'
                     f'{exit_code:>6}{n["log_warnings"]:>10}{n["log_errors"]:>8}')
    return '\n'.join(lines)


def _Probe(context: Any, frame: np.ndarray) -> Any:
    """This process's node: the two cameras and the instruction out; chunks, step statistics
    and commands in."""
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.node import Node
    from rclpy.time import Time
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory

    from .image_conversion import rgb_to_image
    from .qos import CAMERA_QOS, CHUNK_QOS, COMMAND_QOS, INSTRUCTION_QOS, STATUS_QOS

    class Probe(Node):
        def __init__(self) -> None:
            super().__init__('soak_probe', context=context)
            # reliable depth 1: matches reliable and best-effort camera subscriptions alike
            self.front = self.create_publisher(Image, 'image', CAMERA_QOS)
            self.wrist = self.create_publisher(Image, 'wrist/image', CAMERA_QOS)
            self.instruction = self.create_publisher(String, 'instruction', INSTRUCTION_QOS)
            group = ReentrantCallbackGroup()
            self.create_subscription(JointTrajectory, 'action_chunk', self._on_chunk, CHUNK_QOS,
                                     callback_group=group)
            self.create_subscription(String, STATS_TOPIC, self._on_stats, STATUS_QOS,
                                     callback_group=group)
            self.create_subscription(Float64MultiArray, 'command', self._on_command,
                                     COMMAND_QOS, callback_group=group)
            self.msg = rgb_to_image(frame)  # built once; each tick only restamps it
            self._lock = threading.Lock()
            self._sent: set[int] = set()
            self._first_frame: Optional[float] = None  # monotonic
            self._c2c: list[tuple[int, float]] = []  # (stamp ns, camera -> chunk ms)
            self._arrivals: list[float] = []  # monotonic
            self._unknown = 0
            self._policy_ms: dict[int, float] = {}
            self._commands: dict[str, int] = {}
            self._non_finite = 0
            self._publish_ms: list[float] = []  # both publish calls of a tick

        def missing(self) -> list[str]:
            """What has not connected yet (empty: ready)."""
            out = [f'a subscription to {p.topic_name}' for p in (self.front, self.wrist)
                   if p.get_subscription_count() < 1]
            if self.instruction.get_subscription_count() < len(NODES):
                out.append('both instruction subscriptions')
            out += [f'a publisher of {t}' for t in ('action_chunk', STATS_TOPIC, 'command')
                    if self.count_publishers(t) < 1]
            return out

        def ready(self) -> bool:
            return not self.missing()

        def instruct(self) -> None:
            self.instruction.publish(String(data=INSTRUCTION))

        def publish_frame(self) -> None:
            now = self.get_clock().now()
            with self._lock:
                self._sent.add(now.nanoseconds)
                if self._first_frame is None:
                    self._first_frame = time.monotonic()
            self.msg.header.stamp = now.to_msg()
            t0 = time.perf_counter()
            self.wrist.publish(self.msg)
            self.front.publish(self.msg)  # the primary camera last: it triggers the step
            self._publish_ms.append((time.perf_counter() - t0) * 1e3)

        def chunk_count(self) -> int:
            with self._lock:
                return len(self._c2c)

        def stats_count(self) -> int:
            with self._lock:
                return len(self._policy_ms)

        def settle(self, quiet: float = 0.5, timeout: float = 5.0) -> None:
            """Wait until nothing has arrived for `quiet` seconds (at most `timeout`)."""
            end = time.monotonic() + timeout
            last = -1
            while time.monotonic() < end:
                with self._lock:
                    n = len(self._c2c) + len(self._policy_ms)
                if n == last:
                    return
                last = n
                time.sleep(quiet)

        def results(self) -> dict[str, Any]:
            with self._lock:
                return {'camera_to_chunk': list(self._c2c), 'chunk_arrivals': list(self._arrivals),
                        'chunks_unknown': self._unknown, 'policy_ms': dict(self._policy_ms),
                        'commands': dict(self._commands),
                        'commands_non_finite': self._non_finite,
                        'publish_ms': list(self._publish_ms),
                        'first_frame': self._first_frame}

        def _on_chunk(self, msg: JointTrajectory) -> None:
            received = self.get_clock().now().nanoseconds
            arrival = time.monotonic()
            stamp = Time.from_msg(msg.header.stamp).nanoseconds
            with self._lock:
                if stamp in self._sent:
                    self._c2c.append((stamp, (received - stamp) * 1e-6))
                    self._arrivals.append(arrival)
                else:
                    self._unknown += 1

        def _on_stats(self, msg: String) -> None:
            info = StepStats.from_json(msg.data)
            with self._lock:
                self._policy_ms[info.stamp_ns] = info.policy_ms

        def _on_command(self, msg: Float64MultiArray) -> None:
            action, label = command_from_msg(msg)
            label = label or ''
            with self._lock:
                if self._first_frame is None:
                    return  # before the soak
                self._commands[label] = self._commands.get(label, 0) + 1
                self._non_finite += int(not np.all(np.isfinite(action)))

    return Probe()
