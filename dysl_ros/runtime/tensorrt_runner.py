"""TensorRT runner: one engine per graph of an export, hidden states stay on the GPU.

A per-segment export (the default) runs one engine per static segment, its skip decisions
in-engine (the ONNX `If` nodes become IIfConditional): `segment` queues the engine with the
allow point and threshold as device tensors (one per value, made once) and returns the skip
position as a device tensor; `read_skips` brings a step's positions to the host in one copy.
A per-unit export runs one engine per unit, with a host read per controller asked.

TensorRT 10 name-based API only (num_io_tensors, get_tensor_name, get_tensor_mode,
set_input_shape, set_tensor_address, execute_async_v3). Device buffers are torch CUDA
tensors: JetPack ships torch, its caching allocator makes a fresh output per launch cheap,
and it creates the CUDA context in whichever thread first uses the runner (no invalid
handles when a ROS executor thread runs inference). Everything is queued on one stream of
the runner's; the only host synchronisations are `read_skips` (per segment export, once per
step) or a controller's probability (per unit export, `.item()` per controller asked), the
head's chunk, and `synchronize()`.

Engines come from `runtime.engine_cache.EngineCache` (built or loaded, keyed by ONNX
sha256 + TensorRT version + device + build settings); every engine's tensors are checked
against the manifest and every graph runs at construction (each segment in every branch,
its skip positions checked), so a bad engine fails at load time.

Graphs run one at a time on the one stream, so their execution contexts are created without
scratch memory of their own (ExecutionContextAllocationStrategy.USER_MANAGED) and share one
torch-allocated buffer, sized for the engine that needs most: one scratch buffer instead of
one per graph (about 60 for a Llama-7B-sized stack exported per unit).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..skipping import NO_SKIP
from .engine_build import EngineError, require_tensorrt, trt_logger
from .engine_cache import EngineCache
from .manifest import Manifest, check_tensors, unit_name

_TRT_DTYPES = {'FLOAT': 'float32', 'HALF': 'float16', 'INT64': 'int64', 'INT32': 'int32'}
_TORCH_DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'int64': torch.int64,
                 'int32': torch.int32}


def scratch_size(engine: Any) -> int:
    """Bytes of scratch memory an execution context of `engine` needs."""
    if hasattr(engine, 'device_memory_size_v2'):  # TensorRT 10.1+
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def set_scratch(context: Any, address: int, size: int) -> None:
    """Give a USER_MANAGED execution context `size` bytes of scratch memory at `address`."""
    if hasattr(context, 'set_device_memory'):  # TensorRT 10.1+
        context.set_device_memory(address, size)
    else:
        context.device_memory = address


@dataclass
class _Bound:
    """An engine with its execution context and I/O, ready to run."""

    engine: Any
    context: Any
    inputs: list[str]
    outputs: list[tuple[str, tuple[int, ...], torch.dtype]]


class TensorRTRunner:
    """Runs the graphs of an export with TensorRT engines (fp16 by default): whole segments
    (`segment`, `read_skips`) for a per-segment export, units for a per-unit one.

    Hidden states and skip records are CUDA tensors owned by the runner's caller chain (a
    fresh tensor per output); `head` returns a host (H, D) float32 array owned by the caller.
    build=False refuses (EngineError) instead of building a missing or stale engine.
    """

    name = 'tensorrt'

    def __init__(self, manifest: Manifest | Path | str, cache_dir: Optional[Path] = None,
                 precision: str = 'fp16', build: bool = True, device: int = 0,
                 workspace_gb: float = 2.0, log: Any = print):
        trt = require_tensorrt()
        if not torch.cuda.is_available():
            raise EngineError('the tensorrt backend needs a CUDA GPU, and torch sees none')
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.device = torch.device('cuda', device)
        self.stream = torch.cuda.Stream(self.device)
        self.cache = EngineCache(self.manifest, cache_dir, precision, device, workspace_gb, log)
        self._logger = trt_logger(log)
        self._runtime = trt.Runtime(self._logger)
        self._units: dict[str, _Bound] = {}
        self._scratch: Optional[torch.Tensor] = None
        # (dtype, value) -> a (1,) device tensor: the segments' allow_from / threshold inputs
        self._scalars: dict[tuple[torch.dtype, Any], torch.Tensor] = {}
        with torch.cuda.device(self.device):
            for unit in self.manifest.units:
                engine, path = self.cache.engine(self._runtime, unit, build=build)
                self._units[unit.name] = self._bind(trt, unit, engine, path)
            self._share_scratch()
        self.fused = {u.fused_controller: u.index for u in self.manifest.units
                      if u.fused_controller is not None}
        self._fused_prob: Optional[tuple[int, torch.Tensor, torch.Tensor]] = None
        embed = self.manifest.unit('embed')
        self._embed_inputs = {t.name: t for t in embed.inputs}
        self.layout = self.manifest.layout
        self.runs_segments = self.manifest.granularity == 'segment'
        self._warm_up()

    @staticmethod
    def _bind(trt: Any, unit: Any, engine: Any, path: Path) -> _Bound:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

        def meta(n: str) -> tuple[str, tuple[int, ...], str]:
            dt = engine.get_tensor_dtype(n).name
            return n, tuple(engine.get_tensor_shape(n)), _TRT_DTYPES.get(dt, dt)

        by_name = lambda specs: sorted(specs, key=lambda t: t.name)  # noqa: E731
        check_tensors(unit, sorted(meta(n) for n in ins), 'engine inputs', by_name(unit.inputs),
                      str(path))
        check_tensors(unit, sorted(meta(n) for n in outs), 'engine outputs',
                      by_name(unit.outputs), str(path))
        # no scratch memory of its own: _share_scratch gives every context the same buffer
        context = engine.create_execution_context(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise EngineError(f'{path}: TensorRT could not create an execution context '
                              '(out of GPU memory?)')
        for t in unit.inputs:
            if not context.set_input_shape(t.name, t.shape):
                raise EngineError(f'{path}: input {t.name} does not accept shape {t.shape}')
        return _Bound(engine, context, [t.name for t in unit.inputs],  # the manifest's order
                      [(t.name, t.shape, _TORCH_DTYPES[t.dtype]) for t in unit.outputs])

    def _share_scratch(self) -> None:
        """One scratch buffer for every context, as large as the largest engine needs: safe
        because graphs never overlap (one stream, one graph at a time)."""
        size = max(scratch_size(b.engine) for b in self._units.values())
        with torch.cuda.stream(self.stream):  # used, and freed at close, on this stream
            # >= 1 byte, so every context gets a valid address; torch aligns to 512 bytes
            self._scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        for b in self._units.values():
            set_scratch(b.context, self._scratch.data_ptr(), self._scratch.numel())

    @property
    def scratch_bytes(self) -> int:
        """Bytes of the execution contexts' shared scratch memory."""
        return 0 if self._scratch is None else self._scratch.numel()

    def _run(self, name: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        b = self._units.get(name)
        if b is None:
            raise RuntimeError(f'{self.manifest.manifest_path}: a {self.manifest.granularity} '
                               f'export has no graph {name!r}')
        with torch.cuda.stream(self.stream):  # outputs are allocated for this stream
            outs = [torch.empty(shape, dtype=dtype, device=self.device)
                    for _, shape, dtype in b.outputs]
        for n, t in zip(b.inputs, inputs):
            b.context.set_tensor_address(n, t.data_ptr())
        for (n, _, _), t in zip(b.outputs, outs):
            b.context.set_tensor_address(n, t.data_ptr())
        if not b.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f'TensorRT failed to run graph {name}')
        return outs

    def _scalar(self, value: Any, dtype: torch.dtype) -> torch.Tensor:
        """`value` as a (1,) device tensor, made once per value (a fill queued on the stream,
        no host copy) and kept: the engines only read it."""
        t = self._scalars.get((dtype, value))
        if t is None:
            with torch.cuda.stream(self.stream):
                t = torch.full((1,), value, dtype=dtype, device=self.device)
            self._scalars[(dtype, value)] = t
        return t

    def _warm_up(self) -> None:
        """Run every graph on zeros: kernels load now, not in the first control step. Each
        segment runs forced to skip at each dynamic layer (threshold -1: every controller
        asked says skip) and at full depth, so every branch runs; their skip positions must
        be those."""
        imgs = {k: np.zeros(t.shape, dtype=t.dtype) for k, t in self._embed_inputs.items()}
        x = self.embed(imgs['images'], imgs['tokens'])
        if self.runs_segments:
            records, expected = [], []
            for k, seg in enumerate(self.layout.segments):
                for j in seg.dynamic:
                    records.append(self.segment(k, x, j, -1.0)[1])
                x, skipped = self.segment(k, x, seg.end, self.manifest.skip_threshold)
                records.append(skipped)
                expected += list(seg.dynamic) + [NO_SKIP]
            got = self.read_skips(records)
            if got != expected:
                raise EngineError(f'{self.cache.directory}: forced to skip, the segment engines '
                                  f'skip at {got}, expected {expected} ({NO_SKIP}: none): '
                                  'TensorRT does not run their conditionals as exported')
        else:
            for i in range(self.layout.num_layers):
                y = self.layer(i, x)
                if i + 1 in self.fused:
                    self.controller(i + 1, y)
                x = y
            for j in self.layout.dynamic:
                self.adapter(j, x)
                if j not in self.fused:
                    self.controller(j, x)
        self.head(x)
        self.synchronize()

    # -- the Runner protocol --------------------------------------------------------------

    def segment(self, k: int, x: torch.Tensor, allow_from: int, threshold: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment k in one launch, queued (no host read) -> (output, skipped_at: a (1,)
        int64 device tensor, for read_skips)."""
        out, skipped = self._run(unit_name('segment', k), x,
                                 self._scalar(int(allow_from), torch.int64),
                                 self._scalar(float(threshold), torch.float32))
        return out, skipped

    def read_skips(self, records: Sequence[torch.Tensor]) -> list[int]:
        """The skip positions of `records` in one device->host copy (it waits for the
        launches queued before it)."""
        if not records:
            return []
        with torch.cuda.stream(self.stream):
            return [int(j) for j in torch.cat(list(records)).cpu().tolist()]

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
        for arr, key in ((images, 'images'), (tokens, 'tokens')):
            want = self._embed_inputs[key]
            if tuple(arr.shape) != want.shape or arr.dtype != np.dtype(want.dtype):
                raise ValueError(f'{key}: expected {want.shape} {want.dtype}, got '
                                 f'{tuple(arr.shape)} {arr.dtype} (use ModelSpec.prepare)')
        with torch.cuda.stream(self.stream):
            imgs = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            toks = torch.from_numpy(np.ascontiguousarray(tokens)).to(self.device)
        return self._run('embed', imgs, toks)[0]

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        outs = self._run(unit_name('layer', i), x)
        if i + 1 in self.fused:
            self._fused_prob = (i + 1, outs[0], outs[1])
        return outs[0]

    def adapter(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self._run(unit_name('adapter', j), x)[0]

    def controller(self, j: int, x: torch.Tensor) -> float:
        if j in self.fused:
            last = self._fused_prob
            if last is None or last[0] != j or last[1] is not x:
                raise RuntimeError(f'controller {j} is fused into layer {j - 1}: it can only '
                                   f'judge that layer\'s latest output')
            prob = last[2]
        else:
            prob = self._run(unit_name('controller', j), x)[0]
        with torch.cuda.stream(self.stream):
            return float(prob[0].item())  # the one host synchronisation per controller

    def head(self, x: torch.Tensor) -> np.ndarray:
        chunk = self._run('head', x)[0]
        with torch.cuda.stream(self.stream):
            return chunk[0].float().cpu().numpy()  # (H, D), synchronises

    def synchronize(self) -> None:
        self.stream.synchronize()

    def __enter__(self) -> 'TensorRTRunner':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free contexts and engines (before the CUDA context goes away)."""
        self.synchronize()
        self._units.clear()  # contexts first: they use the scratch memory
        self._scratch = None
        self._scalars.clear()
        self._fused_prob = None
