"""The demonstration data format: episode files, index.json and stats.json, read and written
here (numpy only: no MuJoCo, no torch, no ROS; robots convert bags too).

A demo folder holds one compressed .npz per episode, `<out>/<task>_s<seed>.npz`, with
T = number of control steps and these keys:

    images_<camera>  (T, H, W, 3) uint8  observation before action t, one key per camera
    actions          (T, D) float32      action t, in the index's action_names order (the
                                         suite's: 7 for the tabletop, 4 for Meta-World)
    phases           (T,) str            expert phase when action t was chosen
    instruction      () str              the language instruction
    task             () str              task name
    seed             () int64            env.reset seed: replays the episode exactly
    success          () bool             whether the episode succeeded
    takeover_step    () int64            recovery demos only: the step at which the expert
                                         took over from the model; the episode holds the
                                         steps from there on

Next to the episodes: `index.json` ({'format', 'action_names', 'cameras', 'image_size',
'control_hz', 'episodes': [{'file', 'task', 'instruction', 'seed', 'length'}], 'per_task'})
and `stats.json` ({'action_names', 'count', 'mean', 'std', 'min', 'max'}: per-dimension
statistics over every action of every kept episode, for normalisation; std is 0 for
dimensions the experts never use, droll and dpitch, so normalise with a floor on std).
Writers: sim/demos.py (gen-demos) and bags/convert.py (bag2demos).
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 'dysl_ros.demos/1'
_KEYS = ('actions', 'phases', 'instruction', 'task', 'seed', 'success')


class EpisodeFormatError(ValueError):
    """An episode file or dataset index is unreadable or incomplete."""


@dataclass(frozen=True)
class Episode:
    """One demonstration as stored on disk (see the module docstring)."""

    images: dict[str, np.ndarray]
    actions: np.ndarray
    phases: np.ndarray
    instruction: str
    task: str
    seed: int
    success: bool
    path: str = ''

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


# ---- reading -----------------------------------------------------------------------------------
def load_episode(path: str | os.PathLike) -> Episode:
    """Read one episode file; raise EpisodeFormatError naming the file if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'episode file {path} does not exist')
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise EpisodeFormatError(f'{path}: not a readable episode .npz ({e})') from e
    missing = [k for k in _KEYS if k not in data]
    cams = sorted(k[len('images_'):] for k in data if k.startswith('images_'))
    if missing or not cams:
        raise EpisodeFormatError(f'{path}: missing keys {missing or ["images_<camera>"]}; '
                                 f'found {sorted(data)}')
    actions, phases = data['actions'], data['phases']
    t = actions.shape[0] if actions.ndim == 2 else -1
    if actions.ndim != 2 or actions.shape[1] < 1 or t < 1:
        raise EpisodeFormatError(f'{path}: actions has shape {actions.shape}, expected (T, D)')
    if phases.shape != (t,):
        raise EpisodeFormatError(f'{path}: phases has shape {phases.shape}, expected ({t},)')
    images = {}
    for c in cams:
        im = data[f'images_{c}']
        if im.dtype != np.uint8 or im.ndim != 4 or im.shape[0] != t or im.shape[3] != 3:
            raise EpisodeFormatError(f'{path}: images_{c} is {im.shape} {im.dtype}, expected '
                                     f'({t}, H, W, 3) uint8')
        images[c] = im
    return Episode(images=images, actions=actions.astype(np.float32), phases=phases.astype(str),
                   instruction=str(data['instruction']), task=str(data['task']),
                   seed=int(data['seed']), success=bool(data['success']), path=str(path))


def read_index(directory: str | os.PathLike) -> dict:
    """Read `<directory>/index.json`."""
    path = Path(directory) / 'index.json'
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'{path} does not exist: not a demo folder (run gen-demos)')
    except (OSError, ValueError) as e:
        raise EpisodeFormatError(f'{path}: not readable JSON ({e})') from e
    if not isinstance(index, dict) or not isinstance(index.get('episodes'), list):
        raise EpisodeFormatError(f'{path}: expected an object with an "episodes" list')
    return index


def iter_episodes(directory: str | os.PathLike) -> Iterator[Episode]:
    """Yield the episodes of a demo folder in index.json order."""
    directory = Path(directory)
    for i, entry in enumerate(read_index(directory)['episodes']):
        if not isinstance(entry, dict) or 'file' not in entry:
            raise EpisodeFormatError(f'{directory / "index.json"}: episode {i} has no "file"')
        yield load_episode(directory / entry['file'])


def load_stats(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read `<directory>/stats.json` as float32 arrays (mean, std, min, max)."""
    path = Path(directory) / 'stats.json'
    try:
        raw = json.loads(path.read_text())
        return {k: np.asarray(raw[k], dtype=np.float32) for k in ('mean', 'std', 'min', 'max')}
    except FileNotFoundError:
        raise FileNotFoundError(f'{path} does not exist: not a demo folder (run gen-demos)')
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EpisodeFormatError(f'{path}: expected mean/std/min/max lists ({e})') from e


# ---- writing -----------------------------------------------------------------------------------
def prepare_dataset_dir(out_dir: Path | str, overwrite: bool) -> Path:
    """Create the dataset folder; one that already holds a dataset is refused, or emptied of
    it when overwrite is set."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / 'index.json').exists() or any(out.glob('*.npz')):
        if not overwrite:
            raise FileExistsError(f'{out} already holds a dataset; pass overwrite=True '
                                  '(--overwrite) to replace it')
        for p in list(out.glob('*.npz')) + [out / 'index.json', out / 'stats.json']:
            p.unlink(missing_ok=True)
    return out


def save_episode(path: str | os.PathLike, rec: dict) -> None:
    """Write one episode atomically: rec holds 'images' ({camera: (T, H, W, 3) uint8}) and
    the other keys above."""
    path = Path(path)
    arrays = {f'images_{c}': im for c, im in rec['images'].items()}
    arrays.update(actions=np.asarray(rec['actions'], dtype=np.float32),
                  phases=np.asarray(rec['phases'], dtype=str),
                  instruction=np.array(rec['instruction']), task=np.array(rec['task']),
                  seed=np.array(rec['seed'], dtype=np.int64),
                  success=np.array(bool(rec['success'])))
    if 'takeover_step' in rec:
        arrays['takeover_step'] = np.array(rec['takeover_step'], dtype=np.int64)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'wb') as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def action_stats(actions: np.ndarray, action_names: Sequence[str]) -> dict:
    """The contents of stats.json for these (N, D) actions."""
    a = np.asarray(actions).astype(np.float64)  # (N, D)
    return {'action_names': list(action_names), 'count': int(a.shape[0]),
            'mean': a.mean(0).tolist(), 'std': a.std(0).tolist(),
            'min': a.min(0).tolist(), 'max': a.max(0).tolist()}
