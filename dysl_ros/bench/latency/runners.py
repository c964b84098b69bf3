"""The subject on each backend and execution path.

Paths: 'unit' (the policy walks the units: one launch per layer, adapter and controller,
one host read per controller asked) and 'segment' (one launch per static segment, the skip
positions read once per step); for torch on CUDA also 'cuda-graph' (CudaGraphSegments).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from ...runtime.loading import RUNS_EXPORT, make_runner
from ...runtime.manifest import MANIFEST_NAME, Manifest
from ...runtime.runner import Runner
from ...runtime.torch_runner import TorchRunner
from ...skipping import NO_SKIP, segment_pass
from .subjects import Subject

PATHS = ('unit', 'segment')
CUDA_GRAPH = 'cuda-graph'


def _tensorrt_missing() -> Optional[str]:
    """Why TensorRT cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'tensorrt does not import'
    return None if torch.cuda.is_available() else 'torch sees no CUDA GPU'


def available_backends(subject: Subject) -> list[str]:
    out = ['torch']
    import onnxruntime as ort
    if subject.device == 'cpu' or 'CUDAExecutionProvider' in ort.get_available_providers():
        out.append('onnxruntime')
    if _tensorrt_missing() is None:
        out.append('tensorrt')
    return out


def not_run(subject: Subject, backends: list[str]) -> list[str]:
    """The GPU variants this run leaves out, and why."""
    out = []
    trt = _tensorrt_missing()
    if 'tensorrt' not in backends:
        out.append(f'tensorrt (unit and segment engines): not run: {trt or "not asked for"}')
    if 'torch' in backends and subject.device != 'cuda':
        why = ('torch sees no CUDA GPU' if not torch.cuda.is_available()
               else 'the torch device is the CPU (pass --device cuda)')
        out.append(f'torch {CUDA_GRAPH} (a CUDA graph per segment at fixed allow points): '
                   f'not run: {why}')
    return out


def _export(subject: Subject, args: argparse.Namespace, tmp: Path, granularity: str
            ) -> Manifest:
    """The subject's export of `granularity`: --export DIR itself when its manifest has that
    granularity, else DIR/<granularity>s (reused when it fits, else made there)."""
    from ...export.onnx_export import export_model
    root = Path(args.export) if args.export else tmp / 'onnx'
    out = root / f'{granularity}s'
    if (root / MANIFEST_NAME).is_file() and Manifest.load(root).granularity == granularity:
        out = root
    if (out / MANIFEST_NAME).is_file():
        manifest = Manifest.load(out)
        if manifest.layout != subject.dysl.layout or manifest.granularity != granularity:
            raise SystemExit(f'{out}: not a {granularity} export of this model\'s layout; '
                             'pass another --export DIR')
        if any(u.fused_controller is not None for u in manifest.units):
            raise SystemExit(f'{out}: fused controllers cannot be timed on their own; pass '
                             'an export made without --fuse-controllers')
        return manifest
    tqdm.write(f'exporting ONNX {granularity}s to {out} ...')
    manifest, _ = export_model(subject.vla, subject.dysl, out, subject.guidance,
                               granularity=granularity, check=subject.device == 'cpu')
    return manifest


class CudaGraph:
    """fn(input buffer) captured once as a CUDA graph. A call copies x into the input buffer
    unless x is that buffer, replays, and returns the output buffer: valid until the graph
    replays again. Each graph keeps its own memory pool, so replays in any order are safe."""

    def __init__(self, fn: Any, inp: torch.Tensor):
        self.fn, self.inp = fn, inp
        self.out = self._capture()

    @staticmethod
    def warm_up(fn: Any, device: torch.device) -> None:
        """fn() once on a side stream, before any capture, as torch asks."""
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(device).wait_stream(side)

    def _capture(self) -> torch.Tensor:
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return self.fn(self.inp)

    def _replay(self) -> None:
        self.graph.replay()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.inp:
            self.inp.copy_(x)
        self._replay()
        return self.out


class _UnitGraphs:
    """Every unit as its own graph, chained as at full depth: layer i reads layer i - 1's
    output buffer, and adapter j and controller j read layer j's input, so a walk copies
    only after a skip (the adapter's output into the next static layer's input)."""

    def __init__(self, runner: TorchRunner, x: torch.Tensor, graph: type):
        dysl, layout = runner.dysl, runner.layout
        self.layers: list[CudaGraph] = []
        self.adapters: dict[int, CudaGraph] = {}
        self.controllers: dict[int, CudaGraph] = {}
        self.replays = 0  # graph launches so far
        for i in range(layout.num_layers):
            if i in layout.dynamic:
                self.adapters[i] = graph(lambda t, i=i: dysl.adapter(i, t), x)
                self.controllers[i] = graph(lambda t, i=i: dysl.skip_prob(i, t), x)
            self.layers.append(graph(lambda t, i=i: runner.vla.blocks[i](t), x))
            x = self.layers[-1].out

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        self.replays += 1
        return self.layers[i](x)

    def adapter(self, j: int, x: torch.Tensor) -> torch.Tensor:
        self.replays += 1
        return self.adapters[j](x)

    def controller(self, j: int, x: torch.Tensor) -> float:
        self.replays += 1
        return float(self.controllers[j](x)[0])  # the host read: a sync


class CudaGraphSegments:
    """The torch segment path on CUDA graphs. Each segment is captured once at full depth
    (allow point at its end: no controller asked, nothing decided) and a segment at full
    depth replays it: one launch, no host read. A segment asked to decide walks the same
    skip logic (skipping.segment_pass) over per-unit graphs: one replay per unit and a host
    read per controller asked, but no eager kernel launches, which bound a 7B-shaped
    backbone's eager step on the host.

    Graph k reads graph k-1's output buffer, so a chain of graphs copies only what enters
    it from elsewhere (the embedding; a unit graph's output) into its input buffer. A
    returned hidden state is a graph's output buffer: valid until that graph replays.
    `graph` captures and replays (CudaGraph; a test may pass a stand-in with its interface).
    `replays` counts graph launches, so the bench counts a deciding segment's unit graphs.
    """

    name = 'torch'
    runs_segments = True

    def __init__(self, runner: TorchRunner, x: torch.Tensor, graph: type = CudaGraph):
        self.inner, self.layout = runner, runner.layout
        self.graphs: list[CudaGraph] = []
        with torch.inference_mode():
            x = x.clone()
            graph.warm_up(lambda: self._walk_every_unit(runner, x), x.device)
            inp = x
            for k, seg in enumerate(self.layout.segments):
                self.graphs.append(graph(lambda t, k=k, end=seg.end:
                                         runner.segment(k, t, end, 1.0)[0], inp))
                inp = self.graphs[-1].out
            self.units = _UnitGraphs(runner, x.clone(), graph)
        self.segment_replays = 0

    @staticmethod
    def _walk_every_unit(runner: TorchRunner, x: torch.Tensor) -> None:
        for i in range(runner.layout.num_layers):
            if i in runner.layout.dynamic:
                runner.dysl.adapter(i, x)
                runner.dysl.skip_prob(i, x)
            x = runner.vla.blocks[i](x)

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
        return self.inner.embed(images, tokens)

    @torch.inference_mode()
    def segment(self, k: int, x: torch.Tensor, allow_from: int, threshold: float
                ) -> tuple[torch.Tensor, int]:
        seg = self.layout.segments[k]
        if allow_from < seg.end:
            return segment_pass(seg, x, allow_from, threshold, self.units)
        self.segment_replays += 1
        return self.graphs[k](x), NO_SKIP

    @property
    def replays(self) -> int:
        """Graph launches so far: whole segments and units."""
        return self.segment_replays + self.units.replays

    def read_skips(self, records: list[int]) -> list[int]:
        return self.inner.read_skips(records)

    def head(self, x: torch.Tensor) -> np.ndarray:
        return self.inner.head(x)

    def synchronize(self) -> None:
        self.inner.synchronize()


def path_runners(backend: str, subject: Subject, args: argparse.Namespace, tmp: Path,
                 notes: list[str]) -> dict[str, Runner]:
    """path -> the subject's runner on `backend`: torch straight from the modules, the
    other backends through the runner factory from a unit and a segment export. A
    variant that cannot be made is left out with a line in `notes`."""
    if not RUNS_EXPORT[backend]:
        out: dict[str, Any] = {p: TorchRunner(subject.vla, subject.dysl,
                                              segments=p == 'segment') for p in PATHS}
        if subject.device == 'cuda':
            x = out['segment'].embed(*subject.spec.prepare(*subject.observations[0]))
            try:
                out[CUDA_GRAPH] = CudaGraphSegments(out['segment'], x)
            except RuntimeError as e:  # a capture that fails says why, the rest still runs
                notes.append(f'torch {CUDA_GRAPH}: not run: capture failed ({e})')
        return out
    return {p: make_runner(backend, _export(subject, args, tmp, p).manifest_path,
                           threads=args.threads, engine_cache=args.engine_cache,
                           precision=args.precision, log=tqdm.write) for p in PATHS}
