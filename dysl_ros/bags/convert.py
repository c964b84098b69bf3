"""`python -m dysl_ros bag2demos`: recorded bags -> the demonstration format (datasets.py).

From camera frames, instructions and commands (a robot's teleoperation, or `record`) to one
.npz per episode + index.json + stats.json, the format `train-bc`, `calibrate` and `distill`
read (dysl_ros.datasets documents it), so DySL can be calibrated and distilled on a robot's
own demonstrations.

Episodes start at each instruction message (dysl_ros.bags.episodes). The action of
observation t is the first command logged at or after its frame and before the next frame
(the command the robot issued in response); an observation without one (the last frame of an
episode, say) is dropped. From the episode status (bags from `record`, or any JSON status
with these keys) come 'task', 'seed', 'success' and per-step 'phase'; otherwise the task is
a name made from the instruction, the seed is the episode's number and the phase 'unknown'.
Episodes whose status says success: false are dropped unless --keep-failed.

A bag made by `record` names its suite, action names and cameras (with their topics) in its
custom data, as `replay` reads them: those are used, for any suite (MT10's dx dy dz gripper
from /corner/image and /gripperPOV/image), unless --camera names the cameras; --action-names,
if given, must then agree. Other bags (a robot's) take --camera and --action-names (default:
the tabletop's). index.json carries the suite (when the bags name one), the action names and
the cameras, as gen-demos' does; bags of different suites, action names or cameras are
refused: convert each into its own dataset.

    python -m dysl_ros bag2demos bags/day1 bags/day2 --out data/robot_demos --image-size 64 \\
        --camera front=/camera/color/image_raw --command-topic /arm/command
    python -m dysl_ros bag2demos bags/mt10 --out data/mt10_demos   # a `record --suite` bag
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..datasets import FORMAT, action_stats, prepare_dataset_dir, save_episode
from ..model.config import ACTION_NAMES
from .bagfile import BagError, bag_info
from .episodes import BagEpisode, load_bag
from .topics import TopicMap, add_topic_arguments, topics_from_args


def episode_arrays(e: BagEpisode, cameras: Sequence[str], image_size: int = 0
                   ) -> Optional[dict[str, Any]]:
    """(images per camera, actions, phases) of one bag episode, or None with no step."""
    cmd_times = [t for t, _, _ in e.commands]
    obs = e.observations
    images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    actions, phases = [], []
    for i, o in enumerate(obs):
        end = obs[i + 1].log_ns if i + 1 < len(obs) else e.end_ns
        k = int(np.searchsorted(cmd_times, o.log_ns, side='left'))
        if k >= len(cmd_times) or cmd_times[k] >= end:
            continue  # no command answered this frame
        frames = o.images()
        for c in cameras:
            im = frames[c]
            if image_size and im.shape[:2] != (image_size, image_size):
                im = cv2.resize(im, (image_size, image_size), interpolation=cv2.INTER_AREA)
            images[c].append(im)
        actions.append(e.commands[k][1])
        phases.append(e.phase(o.log_ns) or 'unknown')
    if not actions:
        return None
    dims = {a.shape for a in actions}
    if len(dims) != 1:
        raise ValueError(f'episode {e.index} ({e.instruction!r}): commands of different sizes '
                         f'{sorted(dims)}')
    shapes = {c: {im.shape for im in v} for c, v in images.items()}
    for c, s in shapes.items():
        if len(s) != 1:
            raise ValueError(f'camera {c!r}: frames of different sizes {sorted(s)} in episode '
                             f'{e.index}; pass --image-size to resize them')
    return {'images': {c: np.stack(v) for c, v in images.items()},
            'actions': np.stack(actions).astype(np.float32), 'phases': np.array(phases)}


def task_name(instruction: str) -> str:
    """A file-name-safe task name from an instruction ('pick up the red block' ->
    'pick_up_the_red_block'), at most 40 characters."""
    name = re.sub(r'[^a-z0-9]+', '_', instruction.lower()).strip('_')
    return name[:40].strip('_') or 'task'


@dataclass(frozen=True)
class BagLayout:
    """What a bag's episodes are converted with.

    Args:
        suite: the simulation suite `record` names in the bag; None for other bags.
        action_names: the command values, in order.
        topics: where the streams are (cameras in the model's order, primary first).
    """

    suite: Optional[str]
    action_names: tuple[str, ...]
    topics: TopicMap

    def key(self) -> tuple:
        """What every bag of one dataset must share."""
        return self.suite, self.action_names, self.topics.camera_names

    def describe(self) -> str:
        return (f'{self.suite or "no suite"}, actions {" ".join(self.action_names)}, cameras '
                f'{" ".join(self.topics.camera_names)}')


def bag_layout(bag: Path | str, topics: TopicMap = TopicMap(),
               action_names: Optional[Sequence[str]] = None,
               cameras_from_bag: bool = True) -> BagLayout:
    """The layout of one bag: the suite, action names and cameras `record` stored in it
    (bagfile.bag_info, as replay reads them), else `topics` and `action_names` (None: the
    tabletop's). cameras_from_bag=False keeps topics.cameras (--camera given); given
    action_names must match the bag's (BagError otherwise)."""
    info = bag_info(bag) or {}
    recorded = info.get('action_names')
    if action_names is not None and recorded is not None \
            and tuple(recorded) != tuple(action_names):
        raise BagError(f'{bag}: recorded in actions {" ".join(recorded)} ({info.get("suite")}), '
                       f'not the given --action-names {" ".join(action_names)}: leave them out '
                       'to take the bag\'s')
    names = tuple(str(a) for a in (action_names or recorded or ACTION_NAMES))
    if not names or len(set(names)) != len(names):
        raise ValueError(f'action_names={list(names)} is invalid: expected distinct names, one '
                         'per command value')
    if cameras_from_bag and info.get('cameras'):
        topics = dataclasses.replace(topics, cameras=info['cameras'])  # [[name, topic], ...]
    return BagLayout(info.get('suite'), names, topics)


def bags_to_demos(bags: Sequence[Path | str], out: Path | str, topics: TopicMap = TopicMap(),
                  image_size: int = 0, instruction: Optional[str] = None,
                  action_names: Optional[Sequence[str]] = None, keep_failed: bool = False,
                  overwrite: bool = False, progress: bool = True,
                  cameras_from_bag: bool = True) -> dict:
    """Convert the bags into a demo folder; return a summary (episodes kept / dropped).

    Each bag's suite, action names and cameras are those `record` stored in it, else
    `topics` and `action_names` (see bag_layout); bags whose layouts differ are refused
    before anything is written."""
    if image_size < 0 or (image_size and image_size < 16):
        raise ValueError(f'image_size={image_size} is invalid: expected 0 (keep) or >= 16')
    if not bags:
        raise ValueError('bags is empty: expected one or more rosbag2 bags')
    layouts = [bag_layout(b, topics, action_names, cameras_from_bag) for b in bags]
    for bag, layout in zip(bags, layouts):
        if layout.key() != layouts[0].key():
            raise BagError(f'bags of different layouts in one dataset: {bags[0]} '
                           f'({layouts[0].describe()}), {bag} ({layout.describe()}); convert '
                           'the bags of each layout into a dataset of their own')
    action_names, cameras = layouts[0].action_names, layouts[0].topics.camera_names
    out = prepare_dataset_dir(out, overwrite)
    entries, all_actions, sizes, rates = [], [], set(), []
    dropped = {'failed': 0, 'empty': 0}
    per_task: dict[str, dict] = {}
    n = 0
    for bag, layout in zip(bags, layouts):
        data = load_bag(bag, layout.topics, need=('cameras', 'instruction', 'command'),
                        instruction=instruction)
        for e in tqdm(data.episodes, desc=f'{Path(bag).name}', unit='ep', disable=not progress):
            status = e.status
            if status.success is False and not keep_failed:
                dropped['failed'] += 1
                continue
            arrays = episode_arrays(e, cameras, image_size)
            if arrays is None:
                dropped['empty'] += 1
                continue
            if arrays['actions'].shape[1] != len(action_names):
                raise ValueError(f'{bag}: episode {e.index}: commands have '
                                 f'{arrays["actions"].shape[1]} values, expected '
                                 f'{len(action_names)} ({list(action_names)}): name them '
                                 'with --action-names')
            shapes = {im.shape[1:3] for im in arrays['images'].values()} | sizes
            if len(shapes) != 1 or next(iter(shapes))[0] != next(iter(shapes))[1]:
                raise ValueError(f'{bag}: episode {e.index}: frames of sizes {sorted(shapes)} '
                                 'in this dataset; the demo format takes one square size: '
                                 'pass --image-size to resize')
            task = str(status.task or task_name(e.instruction))
            seed = int(status.seed) if isinstance(status.seed, int) else n
            name = f'{task}_s{seed}.npz'
            if any(x['file'] == name for x in entries):
                name = f'{task}_s{seed}_{n}.npz'
            save_episode(out / name, {**arrays, 'instruction': e.instruction, 'task': task,
                                      'seed': seed, 'success': status.success is not False})
            length = int(arrays['actions'].shape[0])
            entries.append({'file': name, 'task': task, 'instruction': e.instruction,
                            'seed': seed, 'length': length, 'bag': str(bag),
                            'episode': e.index})
            all_actions.append(arrays['actions'])
            sizes |= {im.shape[1:3] for im in arrays['images'].values()}
            times = [o.log_ns for o in e.observations]
            if len(times) > 1:
                rates.append(1e9 / float(np.median(np.diff(times))))
            t = per_task.setdefault(task, {'kept': 0, 'steps': 0})
            t['kept'] += 1
            t['steps'] += length
            n += 1
    if not entries:
        raise ValueError(f'no episode with commands in {[str(b) for b in bags]} '
                         f'(dropped: {dropped})')
    side = next(iter(sizes))
    topics = layouts[0].topics  # the first bag's (the camera topics of others may differ)
    index = {'format': FORMAT, 'suite': layouts[0].suite, 'action_names': list(action_names),
             'cameras': list(cameras), 'image_size': int(side[0]),
             'control_hz': float(np.median(rates)) if rates else None,
             'source': 'bag2demos', 'bags': [str(b) for b in bags],
             'topics': {'cameras': [list(c) for c in topics.cameras],
                        'instruction': topics.instruction, 'command': topics.command},
             'episodes': entries, 'per_task': per_task, 'dropped': dropped}
    (out / 'index.json').write_text(json.dumps(index, indent=1))
    stats = action_stats(np.concatenate(all_actions), action_names)
    (out / 'stats.json').write_text(json.dumps(stats, indent=1))
    return {'out_dir': str(out), 'suite': layouts[0].suite, 'action_names': list(action_names),
            'cameras': list(cameras), 'episodes': len(entries), 'steps': stats['count'],
            'dropped': dropped, 'per_task': per_task}


# ---- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m dysl_ros bag2demos`."""
    parser.add_argument('bags', nargs='+', type=Path, help='rosbag2 bags (directories or files)')
    parser.add_argument('--out', required=True, type=Path, help='demo folder to write')
    parser.add_argument('--image-size', type=int, default=0,
                        help='resize frames to this square size (default: keep; frames must '
                        'then be square and all the same size)')
    parser.add_argument('--instruction', default=None,
                        help='for bags without instructions: one episode per bag with this '
                        'instruction')
    parser.add_argument('--action-names', nargs='+', default=None,
                        help='names of the command values, in order (default: those a bag '
                        'from `record` names, else the tabletop\'s ' + ' '.join(ACTION_NAMES)
                        + ')')
    parser.add_argument('--keep-failed', action='store_true',
                        help='keep episodes whose status says success: false')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing dataset')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    add_topic_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Convert and print a summary."""
    topics, given = topics_from_args(args)
    summary = bags_to_demos(args.bags, args.out, topics, args.image_size, args.instruction,
                            args.action_names, args.keep_failed, args.overwrite,
                            progress=not args.quiet, cameras_from_bag='cameras' not in given)
    print(f'{summary["suite"] or "no suite"}: actions {" ".join(summary["action_names"])}, '
          f'cameras {" ".join(summary["cameras"])}')
    print(f'{summary["episodes"]} episodes, {summary["steps"]} steps -> {summary["out_dir"]} '
          f'(dropped {summary["dropped"]["failed"]} failed, {summary["dropped"]["empty"]} '
          'without commands)')
    for task, t in summary['per_task'].items():
        print(f'  {task}: {t["kept"]} episodes, {t["steps"]} steps')
    return 0
