"""A bag as episodes of observations, with the chunks, commands and status around them.

Episodes follow the policy node's rule: every instruction message starts one (it clears the
action history), and it lasts until the next instruction message. Frames logged before the
first instruction belong to no episode and are counted, not used.

An observation is one primary-camera frame plus, for every other camera, its newest frame
stamped at or before the primary frame's stamp within the episode (the node also uses the
newest frame of each camera); a primary frame with a camera still missing is dropped and
counted. Chunks are matched to observations by header stamp, step statistics by their
'stamp_ns', phases from the episode status by log time.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .bagfile import BagError, RawMessage, bag_info, bag_topics, check_topics, read_messages
from ..runtime.messages import EpisodeStatus, StepStats, command_from_msg, time_to_ns
from .topics import (IMAGE_TYPES, MSG_CHUNK, MSG_COMMAND, MSG_STRING, TopicMap, chunk_to_array,
                     image_to_rgb)

ROLES = ('cameras', 'instruction', 'chunk', 'command', 'status', 'stats')
END = 2 ** 63 - 1


@dataclass
class Observation:
    """One primary frame and the matching frames of the other cameras."""

    index: int  # within the episode
    stamp_ns: int  # the primary frame's header stamp
    log_ns: int
    frames: dict[str, tuple[RawMessage, Any]]  # camera -> (raw, decoded message)

    def images(self) -> dict[str, np.ndarray]:
        """camera -> (H, W, 3) uint8 RGB; BagError naming the topic if one cannot convert."""
        out = {}
        for camera, (raw, msg) in self.frames.items():
            try:
                out[camera] = image_to_rgb(msg, raw.msgtype)
            except ValueError as e:
                raise BagError(f'topic {raw.topic} (camera {camera!r}), frame stamped '
                               f'{self.stamp_ns} ns: {e}') from None
        return out


@dataclass
class BagEpisode:
    """One instruction's worth of a bag."""

    index: int
    instruction: str
    start_ns: int  # log time of its instruction message
    end_ns: int  # log time of the next instruction (END for the last episode)
    observations: list[Observation] = field(default_factory=list)
    chunks: dict[int, tuple[list[str], np.ndarray, int]] = field(default_factory=dict)
    stats: dict[int, StepStats] = field(default_factory=dict)  # by stamp_ns
    statuses: list[tuple[int, EpisodeStatus]] = field(default_factory=list)  # (log_ns, status)
    commands: list[tuple[int, np.ndarray, Optional[str]]] = field(default_factory=list)
    incomplete: int = 0  # primary frames dropped for lack of another camera's frame

    def phase(self, log_ns: int) -> Optional[str]:
        """The 'phase' of the newest status logged at or before log_ns (None if none)."""
        phase = None
        for t, status in self.statuses:
            if t > log_ns:
                break
            phase = status.extra.get('phase', phase)
        return phase

    @property
    def status(self) -> EpisodeStatus:
        """The last status of the episode (every key None when the bag has none)."""
        return self.statuses[-1][1] if self.statuses else EpisodeStatus()

    def chunk_for(self, obs: Observation) -> Optional[np.ndarray]:
        """The recorded chunk stamped with this observation's stamp, or None."""
        entry = self.chunks.get(obs.stamp_ns)
        return None if entry is None else entry[1]


@dataclass
class BagData:
    """The episodes of one bag and what was found in it."""

    path: Path
    topics: TopicMap
    types: dict[str, str]  # topic -> message type, of the topics used
    episodes: list[BagEpisode]
    before_first_instruction: int  # primary frames logged before any instruction
    info: Optional[dict]  # what `record` stored in the bag (None for other bags)

    @property
    def has_chunks(self) -> bool:
        return any(e.chunks for e in self.episodes)


def role_topics(topics: TopicMap) -> dict[str, list[str]]:
    """role -> its topics in the map."""
    return {'cameras': [t for _, t in topics.cameras], 'instruction': [topics.instruction],
            'chunk': [topics.chunk], 'command': [topics.command], 'status': [topics.status],
            'stats': [topics.stats]}


_TYPES = {'cameras': IMAGE_TYPES, 'instruction': (MSG_STRING,), 'chunk': (MSG_CHUNK,),
          'command': (MSG_COMMAND,), 'status': (MSG_STRING,), 'stats': (MSG_STRING,)}


def load_bag(path: Path | str, topics: TopicMap = TopicMap(),
             need: Sequence[str] = ('cameras', 'instruction'),
             instruction: Optional[str] = None) -> BagData:
    """Read a bag's episodes. Roles in `need` must be in the bag (BagError naming the
    missing topic otherwise); the others are used when present. With `instruction`, the
    instruction topic is ignored and the whole bag is one episode with that instruction."""
    path = Path(path)
    unknown = sorted(set(need) - set(ROLES))
    if unknown:
        raise ValueError(f'need={unknown} is invalid: expected roles from {ROLES}')
    need = [r for r in need if not (r == 'instruction' and instruction is not None)]
    roles_of = role_topics(topics)
    if instruction is not None:
        roles_of['instruction'] = []
    wanted, required, names = {}, [], {}
    for role, role_list in roles_of.items():
        for t in role_list:
            if t in wanted:
                raise ValueError(f'topic {t} is given for two roles ({names[t]}, {role})')
            wanted[t] = _TYPES[role]
            names[t] = role if role != 'cameras' else f'camera {_camera_of(topics, t)!r}'
            if role in need:
                required.append(t)
    types = check_topics(path, bag_topics(path), wanted, required, names)
    if topics.cameras[0][1] not in types:
        raise BagError(f'{path}: the primary camera topic {topics.cameras[0][1]} is not in the '
                       'bag')
    camera_of = {t: c for c, t in topics.cameras}

    instructions: list[tuple[int, str]] = []
    frames: dict[str, list[tuple[int, int, RawMessage, Any]]] = {c: [] for c in camera_of.values()}
    chunks, stats, statuses, commands = [], [], [], []
    def decode(m: RawMessage) -> Any:
        try:
            return m.decode()
        except BagError as e:
            raise BagError(f'{path}: {e}') from None

    for m in read_messages(path, list(types)):
        if m.topic in camera_of:
            msg = decode(m)
            frames[camera_of[m.topic]].append((time_to_ns(msg.header.stamp), m.log_ns, m, msg))
        elif m.topic == topics.instruction:
            instructions.append((m.log_ns, str(decode(m).data).strip()))
        elif m.topic == topics.chunk:
            msg = decode(m)
            try:
                names, positions = chunk_to_array(msg)
            except ValueError as e:
                raise BagError(f'{path}: topic {m.topic} at {m.log_ns} ns: {e}') from None
            chunks.append((m.log_ns, time_to_ns(msg.header.stamp), names, positions))
        elif m.topic == topics.command:
            data, label = command_from_msg(decode(m))
            commands.append((m.log_ns, data, label))
        elif m.topic in (topics.status, topics.stats):
            text = str(decode(m).data)
            is_status = m.topic == topics.status
            try:
                value = (EpisodeStatus if is_status else StepStats).from_json(text)
            except (ValueError, KeyError, TypeError) as e:  # KeyError: step statistics
                if m.topic not in required:  # an optional topic of another format: unused
                    continue
                what = 'an episode status' if is_status else 'step statistics'
                raise BagError(f'{path}: topic {m.topic} at {m.log_ns} ns is not {what} '
                               f'({type(e).__name__}: {e}): {text[:80]!r}') from None
            (statuses if is_status else stats).append((m.log_ns, value))

    if instruction is not None:
        instructions = [(-1, instruction.strip())]
    if not instructions:
        raise BagError(f'{path}: no message on {topics.instruction}: episodes start with an '
                       'instruction (or pass --instruction TEXT for a bag without one)')
    episodes = []
    for k, (t, text) in enumerate(instructions):
        end = instructions[k + 1][0] if k + 1 < len(instructions) else END
        episodes.append(BagEpisode(index=k, instruction=text, start_ns=t, end_ns=end))
    starts = [e.start_ns for e in episodes]

    def episode_at(log_ns: int) -> Optional[BagEpisode]:
        k = bisect.bisect_right(starts, log_ns) - 1
        return episodes[k] if k >= 0 else None

    # A chunk (and its statistics) belongs to the episode of the image it was computed from:
    # the one for an episode's last frame may be logged after the next instruction.
    frame_log = {f[0]: f[1] for f in frames.get(topics.primary, [])}

    def episode_of_image(stamp: int, log_ns: int) -> Optional[BagEpisode]:
        return episode_at(frame_log.get(stamp, log_ns))

    for log_ns, stamp, names, positions in chunks:
        e = episode_of_image(stamp, log_ns)
        if e is not None and positions.shape[0] > 0:  # an empty chunk is a hold
            e.chunks[stamp] = (names, positions, log_ns)
    for log_ns, s in stats:
        e = episode_of_image(s.stamp_ns, log_ns)
        if e is not None:
            e.stats[s.stamp_ns] = s
    for log_ns, s in statuses:
        e = episode_at(log_ns)
        if e is not None:
            e.statuses.append((log_ns, s))
    for log_ns, data, label in commands:
        e = episode_at(log_ns)
        if e is not None:
            e.commands.append((log_ns, data, label))

    for e in episodes:  # storages yield log-time order; keep it whatever the plugin does
        e.statuses.sort(key=lambda x: x[0])
        e.commands.sort(key=lambda x: x[0])
    primary = topics.primary
    before = 0
    by_log = {c: sorted(items, key=lambda f: f[1]) for c, items in frames.items()}
    log_times = {c: [f[1] for f in items] for c, items in by_log.items()}
    for e in episodes:
        per_cam = {}
        for c, items in by_log.items():
            lo = bisect.bisect_left(log_times[c], e.start_ns)
            hi = bisect.bisect_left(log_times[c], e.end_ns)
            inside = sorted(items[lo:hi], key=lambda f: (f[0], f[1]))  # by stamp
            per_cam[c] = (inside, [f[0] for f in inside])
        for stamp, log_ns, raw, msg in sorted(per_cam[primary][0], key=lambda f: (f[1], f[0])):
            obs_frames = {primary: (raw, msg)}
            for c in topics.camera_names[1:]:
                inside, stamps = per_cam[c]
                i = bisect.bisect_right(stamps, stamp) - 1
                if i < 0:
                    break
                obs_frames[c] = (inside[i][2], inside[i][3])
            if len(obs_frames) < len(topics.cameras):
                e.incomplete += 1
                continue
            e.observations.append(Observation(len(e.observations), stamp, log_ns, obs_frames))
    if instructions[0][0] >= 0:
        before = sum(1 for f in frames[primary] if f[1] < instructions[0][0])
    return BagData(path=path, topics=topics, types=types, episodes=episodes,
                   before_first_instruction=before, info=bag_info(path))


def _camera_of(topics: TopicMap, topic: str) -> str:
    return next(c for c, t in topics.cameras if t == topic)
