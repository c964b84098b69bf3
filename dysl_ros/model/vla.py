"""The embedded default VLA: patch tokens + instruction tokens + action queries -> a chunk.

A plain pre-norm transformer, small enough for a laptop CPU and deep enough (24 blocks)
that skipping matters. The backbone is `blocks`, a stack of `x -> x` modules: the DySL
wrapper runs over it without knowing anything else about the model.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import VLAConfig
from .tokenizer import DEFAULT_WORDS, WordTokenizer


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # bidirectional: observation tokens
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        self.fc = nn.Linear(d_model, ratio * d_model)
        self.proj = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block, (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Embedder(nn.Module):
    """Images (B, N, 3, S, S) in [-1, 1] + token ids (B, L) -> tokens (B, T, C)."""

    def __init__(self, cfg: VLAConfig, vocab_size: int):
        super().__init__()
        C, n_cam = cfg.d_model, len(cfg.cameras)
        c1, c2 = cfg.stem_channels
        k = cfg.patch_size // 4
        self.patch = nn.Sequential(  # (3, S, S) -> (C, S/patch, S/patch): a 4x conv stem
            nn.Conv2d(3, c1, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c2, C, k, stride=k))
        self.patch_pos = nn.Parameter(torch.randn(1, cfg.patches_per_camera, C) * 0.02)
        self.camera = nn.Parameter(torch.randn(n_cam, 1, C) * 0.02)
        self.word = nn.Embedding(vocab_size, C)
        self.word_pos = nn.Parameter(torch.randn(1, cfg.max_instruction_tokens, C) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, cfg.chunk_size, C) * 0.02)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, N = images.shape[:2]
        p = self.patch(images.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B*N, P, C)
        p = (p.view(B, N, -1, p.shape[-1]) + self.patch_pos.unsqueeze(1) + self.camera)
        w = self.word(tokens) + self.word_pos  # (B, L, C)
        q = self.queries.expand(B, -1, -1)  # (B, H, C)
        return torch.cat([p.flatten(1, 2), w, q], dim=1)  # (B, T, C)


class ChunkHead(nn.Module):
    """Final norm + linear map of the H action-query tokens -> normalised chunk (B, H, D)."""

    def __init__(self, cfg: VLAConfig):
        super().__init__()
        self.chunk_size = cfg.chunk_size
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.action_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x[:, -self.chunk_size:]))  # (B, H, D)


class VLA(nn.Module):
    """embed -> blocks -> head. Action normalisation statistics live with the model."""

    def __init__(self, cfg: VLAConfig, tokenizer: WordTokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or WordTokenizer.from_words(DEFAULT_WORDS,
                                                               cfg.max_instruction_tokens)
        if self.tokenizer.max_tokens != cfg.max_instruction_tokens:
            raise ValueError(f'tokenizer max_tokens={self.tokenizer.max_tokens} differs from '
                             f'max_instruction_tokens={cfg.max_instruction_tokens}')
        self.embed = Embedder(cfg, len(self.tokenizer))
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.n_layers))
        self.head = ChunkHead(cfg)
        self.register_buffer('action_mean', torch.zeros(cfg.action_dim))
        self.register_buffer('action_std', torch.ones(cfg.action_dim))
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Full-depth pass: (B, N, 3, S, S), (B, L) -> normalised chunk (B, H, D)."""
        x = self.embed(images, tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def set_action_stats(self, mean: np.ndarray, std: np.ndarray, min_std: float = 1e-3) -> None:
        """Store normalisation statistics; tiny std (a constant dimension) is floored."""
        self.action_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.action_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(min_std))

    def normalise(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def unnormalise(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    def with_chunk_size(self, chunk_size: int) -> 'VLA':
        """A copy predicting `chunk_size` actions per pass, for fine-tuning to a new chunk
        length: every weight is kept; the first queries are this model's, and queries past
        its chunk start as copies of its last one (the nearest future it was trained on)."""
        grown = VLA(dataclasses.replace(self.cfg, chunk_size=chunk_size), self.tokenizer)
        state = self.state_dict()
        q = state['embed.queries']
        extra = q[:, -1:].expand(-1, max(chunk_size - q.shape[1], 0), -1)
        state['embed.queries'] = torch.cat([q[:, :chunk_size], extra], dim=1)
        grown.load_state_dict(state)
        return grown.train(self.training)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
