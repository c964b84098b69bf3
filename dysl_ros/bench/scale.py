"""Random-weight models for latency at scale: a Llama decoder stack between the VLA's
embedder and chunk head (the OpenVLA-OFT shape: a Llama-2-7B backbone, ~300 tokens).

Only latency is meaningful on these models; their decisions come from a decision trace.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model import DySL, DySLConfig, VLAConfig
from ..model.llama import llama_blocks
from ..model.tokenizer import DEFAULT_WORDS, WordTokenizer
from ..model.vla import ChunkHead, Embedder


@dataclass(frozen=True)
class LlamaScale:
    """A Llama-shaped backbone.

    Args:
        name: the --scale name.
        layers: decoder layers.
        width: hidden size.
        heads: attention heads (= key/value heads).
        mlp: intermediate size of the SwiGLU MLP.
        dtype: parameter dtype ('float16' on CUDA; 'float32' for CPU smoke runs).
    """

    name: str
    layers: int
    width: int
    heads: int
    mlp: int
    dtype: str

    def vla_config(self) -> VLAConfig:
        # 1 camera of 14 x 14 patches + 96 instruction tokens + 8 action queries = 300 tokens
        return VLAConfig(image_size=224, cameras=('front',), patch_size=16, d_model=self.width,
                         n_layers=self.layers, n_heads=self.heads, max_instruction_tokens=96,
                         chunk_size=8)


SCALES = {
    'llama7b': LlamaScale('llama7b', 32, 4096, 32, 11008, 'float16'),
    'llama-tiny': LlamaScale('llama-tiny', 8, 256, 4, 688, 'float32'),
}


class _CastEmbed(nn.Module):
    """The VLA embedder on float32 images, in the model's dtype."""

    def __init__(self, embed: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.embed, self.dtype = embed, dtype

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(images.to(self.dtype), tokens)  # (B, T, C)


class LlamaVLA(nn.Module):
    """embed -> Llama decoder layers -> chunk head; VLA-shaped (cfg, tokenizer, embed,
    blocks, head, action statistics), so TorchRunner, ModelSpec and the exporter take it."""

    def __init__(self, scale: LlamaScale):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel
        self.cfg = scale.vla_config()
        self.tokenizer = WordTokenizer.from_words(DEFAULT_WORDS, self.cfg.max_instruction_tokens)
        dtype = getattr(torch, scale.dtype)
        self.embed = _CastEmbed(Embedder(self.cfg, len(self.tokenizer)), dtype)
        llama_cfg = LlamaConfig(hidden_size=scale.width, intermediate_size=scale.mlp,
                                num_hidden_layers=scale.layers, num_attention_heads=scale.heads,
                                num_key_value_heads=scale.heads, vocab_size=8,
                                max_position_embeddings=512, attn_implementation='sdpa')
        self.llama = LlamaModel(llama_cfg)  # its token embedding and final norm go unused
        self.blocks = llama_blocks(self.llama)
        self.head = ChunkHead(self.cfg)
        self.register_buffer('action_mean', torch.zeros(self.cfg.action_dim))
        self.register_buffer('action_std', torch.ones(self.cfg.action_dim))


def build_llama(scale: LlamaScale, device: str, seed: int = 0
                ) -> tuple[LlamaVLA, DySL]:
    """A random-weight LlamaVLA with a calibrated layout (stage 0 on random inputs) and DySL
    parts, on `device` in the scale's dtype."""
    from ..train.calibrate import layer_similarity, select_static
    torch.manual_seed(seed)
    dtype = getattr(torch, scale.dtype)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: a 7B stack never exists in fp32
    try:
        with torch.device(device):
            vla = LlamaVLA(scale)
    finally:
        torch.set_default_dtype(default)
    vla = vla.to(dtype).eval()
    vla.action_mean, vla.action_std = vla.action_mean.float(), vla.action_std.float()
    cfg = vla.cfg
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = torch.rand(1, 1, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
        tokens = torch.randint(2, len(vla.tokenizer), (1, cfg.max_instruction_tokens),
                               generator=g)
        x = vla.embed(images.to(device), tokens.to(device))
        layout = select_static(layer_similarity(vla.blocks, [x], progress=False), ratio=0.2)
    dysl = DySL(vla.blocks, cfg.d_model, layout, DySLConfig()).to(device, dtype).eval()
    return vla, dysl
