"""Modules that add trainable parts to a shared, frozen backbone (`self.blocks`)."""
from __future__ import annotations

import torch
from torch import nn


class TrainableParts(nn.Module):
    """Checkpoints carry everything but the backbone: the parts trained on top of it."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith('blocks.')}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint of exactly these parts, or raise ValueError saying what differs."""
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f'{type(self).__name__} checkpoint does not fit: missing '
                             f'{missing[:4]}, unexpected {extra[:4]}')
        self.load_state_dict(state, strict=False)
