"""Shared training plumbing: AdamW + warm-up/cosine, cycling inputs, frozen-weight guards."""
from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..validation import require


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(params: Sequence[nn.Parameter], lr: float, weight_decay: float,
                   warmup: int, total: int, min_ratio: float = 0.0
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over params with the warm-up + cosine schedule (stepped once per update)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError('no trainable parameters to optimise')
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_factor(s, total, warmup, min_ratio))
    return opt, sched


def check_reiterable(inputs: Iterable, name: str = 'inputs') -> None:
    """Training cycles over inputs many times: refuse one-shot iterators and generators."""
    if iter(inputs) is inputs:
        raise ValueError(f'{name} must be re-iterable (a list or a DataLoader), got a one-shot '
                         f'{type(inputs).__name__}')


def pick_device(name: str = 'auto') -> torch.device:
    """'auto' -> CUDA when available, else the CPU; 'cpu' / 'cuda' / 'cuda:1' as given."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device={name!r}: CUDA is not available here')
    return device


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device)


def cycle(inputs: Iterable[Any], device: torch.device,
          move: Callable[[Any, torch.device], Any] = _to) -> Iterator[Any]:
    """Yield input batches on `device` forever (move: how a batch gets there; default
    Tensor.to), re-iterating `inputs` at each pass."""
    while True:
        n = 0
        for x in inputs:
            n += 1
            yield move(x, device)
        if n == 0:
            raise ValueError('inputs is empty: need at least one batch')


def update(opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor,
           params: Iterable[nn.Parameter], clip: float) -> None:
    """One optimiser step on loss (refused when it is not finite), gradients clipped to
    `clip` (0: no clipping), then one scheduler step."""
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f'non-finite training loss {float(loss)}: lower lr or check '
                                 'the inputs')
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(list(params), clip)
    opt.step()
    sched.step()


def state_checksum(modules: Iterable[nn.Module]) -> str:
    """sha256 over the names and raw bytes of every parameter and buffer."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy()
                     .tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def frozen(modules: Sequence[nn.Module], what: str = 'backbone') -> Iterator[None]:
    """Freeze modules (no grad, eval mode) for the block; on exit restore their flags and
    modes and raise RuntimeError if any weight changed by a single bit."""
    modules = list(modules)
    before = state_checksum(modules)
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    modes = [[s.training for s in m.modules()] for m in modules]
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for m, fl, md in zip(modules, flags, modes):
            for p, f in zip(m.parameters(), fl):
                p.requires_grad_(f)
            for s, t in zip(m.modules(), md):
                s.training = t
    if state_checksum(modules) != before:
        raise RuntimeError(f'the frozen {what} changed during training: its weights must stay '
                           'bit-identical (an optimiser or in-place op touched them)')


def check_optimiser_fields(c: Any) -> None:
    """Validate the AdamW + warm-up/cosine fields every training config shares (lr,
    warmup_steps, min_lr_ratio, weight_decay, grad_clip)."""
    require(c.lr > 0, 'lr', c.lr, '> 0')
    require(c.warmup_steps >= 0, 'warmup_steps', c.warmup_steps, '>= 0')
    require(0.0 <= c.min_lr_ratio <= 1.0, 'min_lr_ratio', c.min_lr_ratio, 'a value in [0, 1]')
    require(c.weight_decay >= 0, 'weight_decay', c.weight_decay, '>= 0')
    require(c.grad_clip >= 0, 'grad_clip', c.grad_clip, '>= 0 (0 disables)')
