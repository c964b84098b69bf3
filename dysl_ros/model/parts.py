"""Modules that add trainable parts to a shared, frozen backbone (`self.blocks`)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    """How many numbers a list of parameters holds (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in params}.values())


class TrainableParts(nn.Module):
    """Checkpoints carry everything but the backbone: the parts trained on top of it.

    FROZEN: state-dict prefixes of shared modules that are not saved (the backbone's blocks;
    a subclass adds the VLA modules it borrows frozen, such as the action head).
    """

    FROZEN: tuple[str, ...] = ('blocks.',)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.FROZEN)}

    def num_trainable(self) -> int:
        """Parameters of the trainable parts (what a training run optimises)."""
        return count_parameters(self.trainable_parameters())

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint of exactly these parts, or raise ValueError saying what differs."""
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f'{type(self).__name__} checkpoint does not fit: missing '
                             f'{missing[:4]}, unexpected {extra[:4]}')
        self.load_state_dict(state, strict=False)
