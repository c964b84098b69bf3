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
from ...skipping import NO_SKIP
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


class CudaGraphSegments:
    """The torch segment path with each segment captured once as a CUDA graph at full depth
    (allow point at its end: no controller is asked, nothing is decided, the graph is
    fixed). A segment at full depth replays its graph: one launch, no host read. A segment
    asked to decide runs eagerly (TorchRunner.segment: a host sync per controller asked).

    Graph k reads graph k-1's output buffer, so a chain of graphs copies only what enters
    it from elsewhere (the embedding; an eager segment's output) into its input buffer. A
    returned hidden state is that buffer: valid until its graph replays.
    """

    name = 'torch'
    runs_segments = True

    def __init__(self, runner: TorchRunner, x: torch.Tensor):
        self.inner, self.layout = runner, runner.layout
        self.graphs: list[tuple[Any, torch.Tensor, torch.Tensor]] = []  # graph, in, out
        segs = self.layout.segments
        with torch.inference_mode():
            x = x.clone()
            side = torch.cuda.Stream(x.device)  # warm up off the capture, as torch asks
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                y = x
                for k, seg in enumerate(segs):
                    y, _ = runner.segment(k, y, seg.end, 1.0)
            torch.cuda.current_stream(x.device).wait_stream(side)
            for k, seg in enumerate(segs):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out, _ = runner.segment(k, x, seg.end, 1.0)
                self.graphs.append((graph, x, out))
                x = out

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
        return self.inner.embed(images, tokens)

    def segment(self, k: int, x: torch.Tensor, allow_from: int, threshold: float
                ) -> tuple[torch.Tensor, int]:
        if allow_from < self.layout.segments[k].end:
            return self.inner.segment(k, x, allow_from, threshold)
        graph, inp, out = self.graphs[k]
        if x is not inp:
            with torch.inference_mode():
                inp.copy_(x)
        graph.replay()
        return out, NO_SKIP

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
