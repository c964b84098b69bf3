"""The subject on each backend, through the runtime's runner factory."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from ...runtime.loading import RUNS_EXPORT, make_runner
from ...runtime.manifest import MANIFEST_NAME, Manifest
from ...runtime.runner import Runner
from .subjects import Subject


def available_backends(subject: Subject) -> list[str]:
    out = ['torch']
    import onnxruntime as ort
    if subject.device == 'cpu' or 'CUDAExecutionProvider' in ort.get_available_providers():
        out.append('onnxruntime')
    try:
        import tensorrt  # noqa: F401
        if torch.cuda.is_available():
            out.append('tensorrt')
    except ImportError:
        pass
    return out


def _export(subject: Subject, args: argparse.Namespace, tmp: Path) -> Manifest:
    """An export of the subject: reused from --export DIR when it fits, else made there."""
    from ...export.onnx_export import export_model
    out = Path(args.export) if args.export else tmp / 'onnx'
    if (out / MANIFEST_NAME).is_file():
        manifest = Manifest.load(out)
        if manifest.layout != subject.dysl.layout:
            raise SystemExit(f'{out}: its layout differs from the model\'s; pass another '
                             '--export DIR')
        if any(u.fused_controller is not None for u in manifest.units):
            raise SystemExit(f'{out}: fused controllers cannot be timed on their own; pass '
                             'an export made without --fuse-controllers')
        return manifest
    print(f'exporting ONNX units to {out} ...')
    manifest, _ = export_model(subject.vla, subject.dysl, out, subject.guidance,
                               check=subject.device == 'cpu')
    return manifest


def subject_runner(backend: str, subject: Subject, args: argparse.Namespace, tmp: Path
                   ) -> Runner:
    """The subject on `backend` through the runner factory: torch straight from the modules,
    the other backends from an export."""
    source = (_export(subject, args, tmp).manifest_path if RUNS_EXPORT[backend]
              else (subject.vla, subject.dysl))
    return make_runner(backend, source, threads=args.threads, engine_cache=args.engine_cache,
                       precision=args.precision, log=tqdm.write)
