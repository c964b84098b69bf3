"""Behaviour-cloning samples from expert demonstrations (dysl_ros.datasets episodes).

One sample per (episode, step t): the cameras' images before action t, the instruction's
tokens, and the chunk of the next H actions a_t .. a_{t+H-1}, normalised with the dataset
statistics; past the episode end the last action is repeated and the mask is False.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..datasets import Episode, iter_episodes, load_stats, read_index
from ..model.processing import preprocess_images
from ..model.tokenizer import DEFAULT_WORDS, WordTokenizer
from ..model.vla import VLA

ACTION_MIN_STD = 1e-3  # std floor, as VLA.set_action_stats: constant dimensions stay finite
# uint8 -> [-1, 1] computed as preprocess_images does (float64, then float32): bit-identical
_PIXEL = torch.from_numpy((np.arange(256) * (2.0 / 255.0) - 1.0).astype(np.float32))


def demo_folders(directories: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """One folder or several, as a non-empty list of paths."""
    dirs = ([directories] if isinstance(directories, (str, os.PathLike))
            else list(directories))
    if not dirs:
        raise ValueError('no demo folder given')
    return [str(d) for d in dirs]


def load_demos(directories: str | os.PathLike | Sequence[str | os.PathLike]
               ) -> tuple[list[Episode], dict[str, np.ndarray]]:
    """Every episode of one or more demo folders (in order), and the action statistics of
    the first: extra folders (recovery demos) add samples, not a new normalisation."""
    dirs = demo_folders(directories)
    cameras = demo_cameras(dirs[0])[0]
    episodes = []
    for d in dirs:
        found_cameras = demo_cameras(d)[0]
        if found_cameras != cameras:
            raise ValueError(f'{d}: cameras {found_cameras} differ from {dirs[0]}\'s {cameras}')
        found = list(iter_episodes(d))
        if not found:
            raise ValueError(f'{d}: the demo folder holds no episodes')
        episodes += found
    return episodes, load_stats(dirs[0])


def demo_instructions(directory: str | os.PathLike) -> list[str]:
    """The distinct instructions of a demo folder (from index.json, in order)."""
    out: list[str] = []
    for entry in read_index(directory)['episodes']:
        if entry.get('instruction') not in out:
            out.append(str(entry['instruction']))
    return out


def demo_tokenizer(instructions: Sequence[str], max_tokens: int) -> WordTokenizer:
    """The default vocabulary plus every word of the given instructions."""
    return WordTokenizer.from_words(list(DEFAULT_WORDS) + list(instructions), max_tokens)


def demo_cameras(directory: str | os.PathLike) -> tuple[tuple[str, ...], int]:
    """(cameras, image size) the demonstrations were recorded with."""
    index = read_index(directory)
    return tuple(index['cameras']), int(index['image_size'])


class DemoDataset(Dataset):
    """Samples {'images' (N, 3, S, S) float32 in [-1, 1], 'tokens' (L,) int64,
    'actions' (H, D) float32 normalised, 'mask' (H,) bool} over every step of `episodes`.

    Frames are resized once at load (INTER_AREA, as preprocess_images) and kept as uint8.
    """

    def __init__(self, episodes: Sequence[Episode], stats: dict[str, np.ndarray],
                 cameras: Sequence[str], image_size: int, tokenizer: WordTokenizer,
                 chunk_size: int, action_names: Optional[Sequence[str]] = None):
        if not episodes:
            raise ValueError('episodes is empty: need at least one demonstration')
        if chunk_size < 1:
            raise ValueError(f'chunk_size={chunk_size} is invalid: expected >= 1')
        self.cameras, self.image_size, self.chunk_size = tuple(cameras), image_size, chunk_size
        self.tokenizer = tokenizer
        dim = episodes[0].actions.shape[1]
        if action_names is not None and len(action_names) != dim:
            raise ValueError(f'the model has {len(action_names)} action dimensions '
                             f'{tuple(action_names)}, the demonstrations {dim}')
        self.mean = np.asarray(stats['mean'], np.float32)  # (D,)
        self.std = np.maximum(np.asarray(stats['std'], np.float32), ACTION_MIN_STD)  # (D,)
        frames, actions, episode_of, ends, tokens = [], [], [], [], []
        start = 0
        for e, ep in enumerate(episodes):
            missing = [c for c in self.cameras if c not in ep.images]
            if missing:
                raise ValueError(f'{ep.path}: no images for cameras {missing}; it has '
                                 f'{sorted(ep.images)}')
            if ep.actions.shape[1] != dim:
                raise ValueError(f'{ep.path}: actions have {ep.actions.shape[1]} dimensions, '
                                 f'expected {dim}')
            frames.append(np.stack([_resize(ep.images[c], image_size) for c in self.cameras],
                                   axis=1))  # (T, N, S, S, 3)
            actions.append((ep.actions - self.mean) / self.std)
            episode_of.append(np.full(ep.length, e))
            ends.append(np.full(ep.length, start + ep.length))
            tokens.append(tokenizer.encode(ep.instruction))
            start += ep.length
        self.frames = np.concatenate(frames)  # (M, N, S, S, 3) uint8
        self.actions = np.concatenate(actions).astype(np.float32)  # (M, D)
        self.episode_of = np.concatenate(episode_of)  # (M,)
        self.ends = np.concatenate(ends)  # (M,) exclusive end of each step's episode
        self.tokens = np.stack(tokens)  # (E, L)
        # Not the Episode objects: their raw frames would double the memory.
        self.raw_actions = [ep.actions for ep in episodes]  # (T, D) each, unnormalised
        self.instructions = [ep.instruction for ep in episodes]

    @classmethod
    def for_model(cls, episodes: Sequence[Episode], stats: dict[str, np.ndarray],
                  vla: VLA) -> 'DemoDataset':
        """A dataset shaped for `vla` (its cameras, resolution, tokenizer, chunk size)."""
        c = vla.cfg
        return cls(episodes, stats, c.cameras, c.image_size, vla.tokenizer, c.chunk_size,
                   c.action_names)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f'sample {i} is out of range for {len(self)} samples')
        i %= len(self)
        images = preprocess_images({c: self.frames[i, n] for n, c in enumerate(self.cameras)},
                                   self.cameras, self.image_size)  # (N, 3, S, S)
        actions, mask = self._chunks(np.array([i]))
        return {'images': torch.from_numpy(images),
                'tokens': torch.from_numpy(self.tokens[self.episode_of[i]].copy()),
                'actions': torch.from_numpy(actions[0]), 'mask': torch.from_numpy(mask[0])}

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """The stacked samples at `indices`, in one vectorised step (same values as items)."""
        idx = np.asarray(indices, dtype=np.int64)
        frames = torch.from_numpy(self.frames[idx]).permute(0, 1, 4, 2, 3)  # (B, N, 3, S, S)
        images = _PIXEL[frames.long()]  # (B, N, 3, S, S) float32 in [-1, 1]
        actions, mask = self._chunks(idx)
        return {'images': images, 'tokens': torch.from_numpy(self.tokens[self.episode_of[idx]]),
                'actions': torch.from_numpy(actions), 'mask': torch.from_numpy(mask)}

    def episode_actions(self, mean: Optional[np.ndarray] = None,
                        std: Optional[np.ndarray] = None) -> list[np.ndarray]:
        """Each episode's (T, D) actions normalised with (mean, std); by default with this
        dataset's statistics."""
        mean = self.mean if mean is None else np.asarray(mean, np.float32)
        std = self.std if std is None else np.asarray(std, np.float32)
        return [(a - mean) / std for a in self.raw_actions]

    def _chunks(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps = idx[:, None] + np.arange(self.chunk_size)  # (B, H)
        last = self.ends[idx][:, None] - 1  # (B, 1)
        mask = steps <= last  # (B, H)
        return self.actions[np.minimum(steps, last)], mask  # (B, H, D), (B, H)


def augment_images(images: torch.Tensor, generator: torch.Generator, shift: int = 3,
                   brightness: float = 0.1, contrast: float = 0.1) -> torch.Tensor:
    """Light augmentation of (B, N, 3, S, S) images in [-1, 1], independent per image: a
    random shift of up to `shift` pixels (edges replicated), brightness +- brightness and
    contrast x (1 +- contrast) in [0, 1] units. Draws come from `generator` (CPU)."""
    B, N, _, S, _ = images.shape
    x = images.flatten(0, 1)  # (B*N, 3, S, S)
    n, dev = x.shape[0], x.device

    def uniform(scale: float) -> torch.Tensor:
        u = torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1
        return (u * scale).to(dev)

    if shift > 0:
        padded = F.pad(x, (shift,) * 4, mode='replicate')  # (B*N, 3, S+2s, S+2s)
        off = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).to(dev)
        ar = torch.arange(S, device=dev)
        rows = (off[0][:, None] + ar)[:, None, :, None]  # (B*N, 1, S, 1)
        cols = (off[1][:, None] + ar)[:, None, None, :]  # (B*N, 1, 1, S)
        x = padded[torch.arange(n, device=dev)[:, None, None, None],
                   torch.arange(3, device=dev)[None, :, None, None], rows, cols]
    if contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + uniform(contrast)) + mean
    if brightness > 0:
        x = x + 2 * uniform(brightness)  # [0, 1] units -> [-1, 1] units
    return x.clamp(-1.0, 1.0).view(B, N, 3, S, S)


class EmbeddedBatches:
    """Re-iterable batches of embedded hidden states (B, T, C) of random dataset samples,
    for calibration and distillation. Pass p draws with seed + p; pass 0 is the same in
    every run. with_actions=True yields (x, normalised action chunks (B, H, D)) pairs."""

    def __init__(self, vla: VLA, dataset: DemoDataset, batch_size: int, batches: int,
                 seed: int = 0, with_actions: bool = False):
        if batch_size < 1 or batches < 1:
            raise ValueError(f'batch_size={batch_size}, batches={batches}: expected >= 1')
        self.vla, self.dataset = vla, dataset
        self.batch_size, self.batches, self.seed = batch_size, batches, seed
        self.with_actions = with_actions
        self._passes = 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator:
        rng = np.random.default_rng(self.seed + self._passes)
        self._passes += 1
        device = self.vla.action_mean.device
        n = len(self.dataset)
        for _ in range(self.batches):
            idx = rng.choice(n, self.batch_size, replace=n < self.batch_size)
            b = self.dataset.batch(idx)
            with torch.no_grad():
                x = self.vla.embed(b['images'].to(device), b['tokens'].to(device))  # (B, T, C)
            yield (x, b['actions'].to(device)) if self.with_actions else x


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3), as preprocess_images resizes."""
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
