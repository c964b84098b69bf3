"""Baselines of dysl-method.md section 4, over any stack of `x -> x` blocks and a chunk head.

- FlexiDepth-style per-layer skip: a router and a small adapter on every layer; a layer whose
  router says run (g > 0.5) runs, otherwise its adapter replaces it. No static layers.
- DeeR-style early exit: an exit every 2 layers, ONE action head shared by all exits; a pass
  stops at the first exit whose chunk differs from the previous exit's by less than eta_i.
- Static depth reduction (Shallow-pi style): a fixed subset of k layers (fine-tuned copies)
  and a fine-tuned head.

(Random skip needs no module: it is DySL's segment walk with controllers replaced by coin
flips and adapters by identity, see `dysl_ros.runtime.methods`.)

Decisions are per forward pass, not per token, for the same reason as DySL's (RECON: batch 1
latency). Every module offers `infer(x)` for batch-1 inference, returning an `Inference`.
Saved parts: `<dir>/baseline.safetensors` (trainable weights, never the shared backbone) and
`<dir>/baseline.json` (method name, config, thresholds, kept layers, ...), no pickle.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from ..validation import require
from .config import from_dict
from .dysl import Adapter, Controller
from .io import read_json, read_tensors, write_json
from .parts import TrainableParts
from .vla import VLA

BASELINE_WEIGHTS, BASELINE_JSON = 'baseline.safetensors', 'baseline.json'
FORMAT = 1



class Inference(NamedTuple):
    """One batch-1 baseline pass: the final hidden state, the backbone layers that ran, and
    the normalised chunk when the method already computed it (DeeR's exits do)."""

    hidden: torch.Tensor
    layer_ids: list[int]
    chunk: Optional[torch.Tensor] = None


def _check_batch1(x: torch.Tensor) -> None:
    if x.shape[0] != 1:
        raise ValueError(f'baseline inference takes batch 1, got batch {x.shape[0]}')


# -- FlexiDepth ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FlexiDepthConfig:
    """Per-layer router + adapter on every layer (FlexiDepth-style baseline).

    Args:
        router_width: hidden width of each router, shaped like a DySL controller
            (RMSNorm -> mean-pool -> Linear -> tanh -> Linear -> sigmoid), RECON.
        adapter_rank: rank of each layer's adapter x + W_u GELU(W_d RMSNorm(x)) (RECON: small,
            FlexiDepth's adapters are much narrower than the layer).
        threshold: a layer runs when its router output g exceeds this (FOUND: 0.5).
        router_init_bias: initial output bias of every router, RECON: 2.0 (g ~ 0.88), so
            training starts from full depth and the (sum g)^2 penalty pulls layers out.
    """

    router_width: int = 64
    adapter_rank: int = 16
    threshold: float = 0.5
    router_init_bias: float = 2.0

    def __post_init__(self) -> None:
        require(self.router_width >= 1, 'router_width', self.router_width, '>= 1')
        require(self.adapter_rank >= 1, 'adapter_rank', self.adapter_rank, '>= 1')
        require(0.0 < self.threshold < 1.0, 'threshold', self.threshold, 'a value in (0, 1)')
        require(math.isfinite(self.router_init_bias), 'router_init_bias',
                 self.router_init_bias, 'a finite number')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class FlexiDepth(TrainableParts):
    """Router g_l (probability to RUN layer l) and adapter A_l on every layer of a frozen stack.

    Inference runs F_l when g_l > threshold and A_l otherwise, one layer at a time (a
    skipped layer costs only its router and adapter); training mixes
    x_{l+1} = g_l * F_l(x_l) + (1 - g_l) * A_l(x_l), see forward_train.
    """

    def __init__(self, blocks: Sequence[nn.Module], d_model: int,
                 cfg: FlexiDepthConfig = FlexiDepthConfig()):
        super().__init__()
        self.cfg = cfg
        self.blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        n = len(self.blocks)
        self.routers = nn.ModuleList(Controller(d_model, cfg.router_width) for _ in range(n))
        self.adapters = nn.ModuleList(Adapter(d_model, cfg.adapter_rank) for _ in range(n))
        with torch.no_grad():
            for r in self.routers:
                r.out.bias.fill_(cfg.router_init_bias)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def forward_train(self, x: torch.Tensor, hard: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass; returns x and the gates g (B, L).

        hard=True (RECON default): the forward pass takes the inference decision
        (run when g > threshold, else adapter) and the gradient reaches g straight through
        the mix g * F_l(x) + (1 - g) * A_l(x), so training sees the states inference sees.
        hard=False uses the soft mix forward too (later routers then train on mixed states
        that hard inference never produces).
        """
        gates = []
        for block, router, adapter in zip(self.blocks, self.routers, self.adapters):
            g = router(x)  # (B,)
            w = g
            if hard:
                w = (g > self.cfg.threshold).to(g.dtype) + g - g.detach()  # straight through
            w = w.view(-1, 1, 1)
            x = w * block(x) + (1 - w) * adapter(x)  # (B, T, C)
            gates.append(g)
        return x, torch.stack(gates, dim=1)  # (B, T, C), (B, L)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor, routing: bool = True) -> Inference:
        """Batch-1 pass; routing=False runs every layer (exactly the full-depth model)."""
        _check_batch1(x)
        ran = []
        for i, (block, router, adapter) in enumerate(zip(self.blocks, self.routers,
                                                         self.adapters)):
            if not routing or float(router(x)[0]) > self.cfg.threshold:
                x = block(x)
                ran.append(i)
            else:
                x = adapter(x)
        return Inference(x, ran)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.routers.parameters()) + list(self.adapters.parameters())

    def meta(self) -> dict:
        return {'config': self.cfg.to_dict(), 'num_layers': self.num_layers}


# -- DeeR ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeeRConfig:
    """Early exits, each with its own head (DeeR-style baseline).

    Args:
        exit_every: an exit after every this many layers, and one after the last layer
            (FOUND: every 2 layers).
        adapter_rank: rank of each early exit's adapter, shaped like DySL's; exit i's chunk is
            the VLA's frozen head on A_i(h_i), so its trainable capacity matches DySL's
            adapters (RECON: train-baselines passes DySL's rank). The last exit is the VLA.
    """

    exit_every: int = 2
    adapter_rank: int = 12

    def __post_init__(self) -> None:
        require(self.exit_every >= 1, 'exit_every', self.exit_every, '>= 1')
        require(self.adapter_rank >= 1, 'adapter_rank', self.adapter_rank, '>= 1')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def exit_layers(num_layers: int, every: int) -> list[int]:
    """Layer counts at which exits sit: every, 2*every, ..., and num_layers."""
    require(num_layers >= 1, 'num_layers', num_layers, '>= 1')
    exits = list(range(every, num_layers + 1, every))
    if not exits or exits[-1] != num_layers:
        exits.append(num_layers)
    return exits


def chunk_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS difference of two normalised chunks (B, H, D) -> (B,) (RECON: DeeR's action
    consistency as an RMS, so thresholds do not depend on H and D)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1).sqrt()


class DeeR(TrainableParts):
    """Frozen blocks and head; an adapter per early exit; thresholds eta_i per decision exit.

    Exit i's chunk is head(A_i(h_i)) (the last exit: head(h_L), the VLA itself). Exit 0 only
    provides the first chunk to compare with; at exit i = 1 .. n-2 the pass stops when
    chunk_distance(exit i, exit i-1) < eta_i; the last exit always stops. Thresholds of 0 run
    full depth; infinite thresholds stop at exit 1.
    """

    FROZEN = ('blocks.', 'head.')  # the VLA's, shared

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module, d_model: int,
                 cfg: DeeRConfig = DeeRConfig(), thresholds: Optional[Sequence[float]] = None):
        super().__init__()
        self.cfg = cfg
        self.blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        self.head = head
        self.exits = exit_layers(len(self.blocks), cfg.exit_every)
        self.adapters = nn.ModuleList(Adapter(d_model, cfg.adapter_rank)
                                      for _ in self.exits[:-1])
        self.thresholds = [0.0] * self.num_decisions
        if thresholds is not None:
            self.set_thresholds(thresholds)

    @classmethod
    def from_vla(cls, vla: VLA, cfg: DeeRConfig = DeeRConfig()) -> 'DeeR':
        """Exits over the VLA's blocks and head (both shared, never changed)."""
        return cls(vla.blocks, vla.head, vla.cfg.d_model, cfg)

    @property
    def num_decisions(self) -> int:
        """Exits where a pass may stop early (all but the first and the last)."""
        return max(0, len(self.exits) - 2)

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        t = [float(v) for v in thresholds]
        if len(t) != self.num_decisions:
            raise ValueError(f'thresholds has {len(t)} values, expected {self.num_decisions} '
                             f'(one per decision exit at layers {self.exits[1:-1]})')
        if any(not v >= 0.0 for v in t):
            raise ValueError(f'thresholds={t} is invalid: expected values >= 0')
        self.thresholds = t

    def exit_chunk(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Exit i's normalised chunk (B, H, D) from the hidden state there."""
        return self.head(h if i == len(self.exits) - 1 else self.adapters[i](h))

    def exit_hiddens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states at every exit (batch pass, all layers)."""
        out, li = [], 0
        for e in self.exits:
            for i in range(li, e):
                x = self.blocks[i](x)
            li = e
            out.append(x)
        return out

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> Inference:
        """Batch-1 pass that stops at the first consistent exit."""
        _check_batch1(x)
        prev, li = None, 0
        for i, e in enumerate(self.exits):
            for r in range(li, e):
                x = self.blocks[r](x)
            li = e
            chunk = self.exit_chunk(i, x)  # (1, H, D)
            last = i == len(self.exits) - 1
            if last or (prev is not None
                        and float(chunk_distance(chunk, prev)[0]) < self.thresholds[i - 1]):
                return Inference(x, list(range(e)), chunk)
            prev = chunk
        raise AssertionError('unreachable: the last exit always stops')

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def meta(self) -> dict:
        return {'config': self.cfg.to_dict(), 'num_layers': len(self.blocks),
                'exits': self.exits, 'thresholds': self.thresholds}


# -- static depth --------------------------------------------------------------------------

class StaticDepth(TrainableParts):
    """Only the kept layers (own, fine-tunable copies), in order, then an own head."""

    def __init__(self, layers: Sequence[nn.Module], kept: Sequence[int], num_layers: int,
                 head: nn.Module):
        super().__init__()
        kept = [int(i) for i in kept]
        if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= num_layers:
            raise ValueError(f'kept={kept} is invalid: expected distinct increasing layers in '
                             f'[0, {num_layers})')
        if len(layers) != len(kept):
            raise ValueError(f'{len(layers)} layers for {len(kept)} kept indices')
        self.kept = kept
        self.num_layers = num_layers
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.head = head

    @classmethod
    def from_vla(cls, vla: VLA, kept: Sequence[int]) -> 'StaticDepth':
        """Copies of the kept blocks and of the head (the VLA itself stays untouched)."""
        kept = sorted(int(i) for i in kept)
        return cls([copy.deepcopy(vla.blocks[i]) for i in kept], kept, len(vla.blocks),
                   copy.deepcopy(vla.head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training pass over the kept layers: (B, T, C) -> final hidden state (B, T, C)."""
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> Inference:
        _check_batch1(x)
        return Inference(self(x), list(self.kept))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def meta(self) -> dict:
        return {'kept': self.kept, 'num_layers': self.num_layers}


# -- save / load ---------------------------------------------------------------------------

METHOD_OF = {FlexiDepth: 'flexidepth', DeeR: 'deer', StaticDepth: 'static-depth'}


def save_baseline(module: TrainableParts, directory: Path, extra: Optional[dict] = None) -> None:
    """Write baseline.safetensors (trainable parts) + baseline.json (method, meta, extra)."""
    method = METHOD_OF.get(type(module))
    if method is None:
        raise ValueError(f'not a baseline module: {type(module).__name__}')
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.trainable_state_dict().items()}
    save_file(state, str(directory / BASELINE_WEIGHTS))
    write_json(directory / BASELINE_JSON, {'format': FORMAT, 'method': method, **module.meta(),
                                           'extra': dict(extra or {})})


def load_baseline(directory: Path, vla: VLA) -> tuple[TrainableParts, dict]:
    """Rebuild a saved baseline over `vla` (eval mode, on its device); returns (module, json)."""
    directory = Path(directory)
    path = directory / BASELINE_JSON
    meta = read_json(path)
    if meta.get('format') != FORMAT:
        raise ValueError(f'{path}: format {meta.get("format")!r} is not the supported {FORMAT}')
    n = len(vla.blocks)
    if meta.get('num_layers') != n:
        raise ValueError(f'{path}: made for {meta.get("num_layers")} layers, the VLA has {n}')
    method = meta.get('method')
    if method == 'flexidepth':
        module = FlexiDepth(vla.blocks, vla.cfg.d_model,
                            from_dict(FlexiDepthConfig, meta['config']))
    elif method == 'deer':
        module = DeeR.from_vla(vla, from_dict(DeeRConfig, meta['config']))
        if module.exits != meta['exits']:
            raise ValueError(f'{path}: exits {meta["exits"]} differ from {module.exits}')
        module.set_thresholds(meta['thresholds'])
    elif method == 'static-depth':
        module = StaticDepth.from_vla(vla, meta['kept'])
    else:
        raise ValueError(f'{path}: unknown method {method!r}; expected one of '
                         f'{sorted(METHOD_OF.values())}')
    try:
        module.load_trainable_state_dict(read_tensors(directory / BASELINE_WEIGHTS))
    except (ValueError, RuntimeError) as e:
        raise ValueError(f'{directory / BASELINE_WEIGHTS}: {e}') from None
    return module.to(vla.action_mean.device).eval(), meta
