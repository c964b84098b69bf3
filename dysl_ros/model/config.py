"""Configuration of the default VLA and of the DySL wrapper (frozen, validated once)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..validation import require

ACTION_NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')



@dataclass(frozen=True)
class VLAConfig:
    """The embedded default VLA: cameras + instruction -> one action chunk per pass.

    Args:
        image_size: square input resolution in pixels (images are resized to it).
        cameras: camera names, in the order the embedder stacks them.
        patch_size: pixels per image token side; a multiple of 4 (a small conv stem
            downsamples 4x, then a patch projection the rest); image_size must be a multiple.
        stem_channels: widths of the two stride-2 stem convolutions.
        d_model: transformer width.
        n_layers: number of backbone blocks (deep enough that skipping matters).
        n_heads: attention heads; must divide d_model.
        mlp_ratio: hidden width of each block's MLP, as a multiple of d_model.
        max_instruction_tokens: instruction length after padding / truncation.
        chunk_size: H, actions predicted per pass (OpenVLA-OFT style).
        action_names: names of the D action dimensions, in order.
    """

    image_size: int = 64
    cameras: tuple[str, ...] = ('front', 'wrist')
    patch_size: int = 16
    stem_channels: tuple[int, int] = (32, 64)
    d_model: int = 128
    n_layers: int = 24
    n_heads: int = 4
    mlp_ratio: int = 4
    max_instruction_tokens: int = 12
    chunk_size: int = 8
    action_names: tuple[str, ...] = ACTION_NAMES

    def __post_init__(self) -> None:
        object.__setattr__(self, 'cameras', tuple(self.cameras))
        object.__setattr__(self, 'action_names', tuple(self.action_names))
        require(1 <= len(self.cameras) <= 4, 'cameras', self.cameras, '1 to 4 camera names')
        require(len(set(self.cameras)) == len(self.cameras), 'cameras', self.cameras,
                 'distinct names')
        object.__setattr__(self, 'stem_channels', tuple(self.stem_channels))
        require(self.patch_size >= 4 and self.patch_size % 4 == 0, 'patch_size',
                 self.patch_size, 'a positive multiple of 4')
        require(len(self.stem_channels) == 2 and min(self.stem_channels) >= 1, 'stem_channels',
                 self.stem_channels, 'two positive widths')
        require(self.image_size > 0 and self.image_size % self.patch_size == 0, 'image_size',
                 self.image_size, f'a positive multiple of patch_size={self.patch_size}')
        require(self.n_layers >= 2, 'n_layers', self.n_layers, '>= 2')
        require(self.n_heads > 0 and self.d_model % self.n_heads == 0, 'd_model',
                 self.d_model, f'a positive multiple of n_heads={self.n_heads}')
        require(self.mlp_ratio >= 1, 'mlp_ratio', self.mlp_ratio, '>= 1')
        require(self.max_instruction_tokens >= 1, 'max_instruction_tokens',
                 self.max_instruction_tokens, '>= 1')
        require(self.chunk_size >= 1, 'chunk_size', self.chunk_size, '>= 1')
        require(len(self.action_names) >= 1, 'action_names', self.action_names, 'non-empty')

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def patches_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Sequence length: image patches, instruction tokens, action queries."""
        return (len(self.cameras) * self.patches_per_camera + self.max_instruction_tokens
                + self.chunk_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'VLAConfig':
        return from_dict(cls, d)


@dataclass(frozen=True)
class DySLConfig:
    """The trainable DySL parts over a frozen block stack.

    Args:
        static_ratio: rho, share of layers chosen static (FOUND: about 0.2; 0.1-0.3 studied).
        first_layer_static: RECON, layer 0 is always static, so no dynamic layer precedes
            the first static one.
        adapter_rank: r of each adapter A(x) = x + W_u GELU(W_d RMSNorm(x)) (RECON).
        controller_width: d_c of each controller RMSNorm -> mean-pool -> Linear -> tanh ->
            Linear -> sigmoid (RECON).
        skip_threshold: a controller skips when its probability exceeds this (FOUND: 0.5).

    RECON: r = 12 and d_c = 8 keep the parts within 2% of the blocks' parameters on the
    default VLA (d = 128, 24 layers, 19 dynamic: 85.7k of 4.76M, 1.8%); the paper's parts
    are about 0.5% of a 3B backbone. `parts_fraction` gives the figure for any model.
    """

    static_ratio: float = 0.2
    first_layer_static: bool = True
    adapter_rank: int = 12
    controller_width: int = 8
    skip_threshold: float = 0.5

    def __post_init__(self) -> None:
        require(0.0 <= self.static_ratio <= 1.0, 'static_ratio', self.static_ratio,
                 'a value in [0, 1]')
        require(self.adapter_rank >= 1, 'adapter_rank', self.adapter_rank, '>= 1')
        require(self.controller_width >= 1, 'controller_width', self.controller_width, '>= 1')
        require(0.0 < self.skip_threshold < 1.0, 'skip_threshold', self.skip_threshold,
                 'a value in (0, 1)')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'DySLConfig':
        return from_dict(cls, d)


def from_dict(cls: type, d: dict) -> Any:
    """Build a config dataclass from a dict, naming unknown keys instead of a TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f'{cls.__name__}: unknown keys {unknown}; known: {sorted(names)}')
    return cls(**d)
