"""Hugging Face Llama decoder layers as a DySL block stack (the OpenVLA backbone shape).

DySL needs `x -> x` blocks. A Llama decoder layer also wants rotary position embeddings
and a causal mask; `LlamaBlock` supplies both (positions 0..T-1, causal attention through
SDPA), so `DySL(llama_blocks(model), ...)` runs over a real Llama stack unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


class LlamaBlock(nn.Module):
    """One decoder layer with the model's shared rotary embedding: (B, T, C) -> (B, T, C)."""

    def __init__(self, layer: nn.Module, rotary: nn.Module):
        super().__init__()
        self.layer = layer
        self.rotary = [rotary]  # shared by every block; a list keeps it out of this state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
        cos_sin = self.rotary[0](x, positions)
        # attention_mask=None: the SDPA path applies the causal mask itself (is_causal).
        out = self.layer(x, attention_mask=None, position_ids=positions,
                         position_embeddings=cos_sin)
        return out[0] if isinstance(out, tuple) else out


def llama_blocks(model: nn.Module) -> nn.ModuleList:
    """Wrap a `transformers` LlamaModel's decoder layers as DySL blocks."""
    impl = getattr(model.config, '_attn_implementation', None)
    if impl != 'sdpa':
        raise ValueError(f'attn_implementation={impl!r}: use "sdpa", whose causal mask '
                         'LlamaBlock relies on')
    return nn.ModuleList(LlamaBlock(layer, model.rotary_emb) for layer in model.layers)
