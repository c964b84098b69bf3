"""ONNX Runtime runner: one InferenceSession per exported graph; hidden states are numpy."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort

from .manifest import Manifest, ManifestError, check_tensors, unit_name

_ORT_TYPES = {'tensor(float)': 'float32', 'tensor(float16)': 'float16',
              'tensor(int64)': 'int64', 'tensor(int32)': 'int32'}


def default_providers() -> list[str]:
    """The CUDA execution provider when this onnxruntime has it, then the CPU."""
    available = ort.get_available_providers()
    return [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider') if p in available]


class OnnxRunner:
    """Runs the graphs of an export (a Manifest or its path) with ONNX Runtime: whole
    segments (`segment`) for a per-segment export, units for a per-unit one.

    Every unit file is checked against the manifest's sha256 as it is loaded (from the same
    bytes that are hashed), and every session's inputs and outputs against the manifest.
    Hidden states are C-contiguous numpy arrays on the host, owned by the runner's caller
    chain; `head` returns a fresh (H, D) float32 array owned by the caller. With
    `threads=0` ONNX Runtime picks one intra-op thread per core; idle threads do not spin
    (spinning threads of one session would steal cores from the next unit's session).
    """

    name = 'onnxruntime'

    def __init__(self, manifest: Manifest | Path | str, providers: Optional[Sequence[str]] = None,
                 threads: int = 0, spinning: bool = False):
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.providers = list(providers) if providers else default_providers()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: we report what matters ourselves
        if not spinning:
            opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        self._sessions: dict[str, tuple[ort.InferenceSession, list[str], list[str]]] = {}
        for unit in self.manifest.units:
            path = self.manifest.path(unit)
            data = self.manifest.read(unit)
            try:
                sess = ort.InferenceSession(data, opts, providers=self.providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise ManifestError(f'{path}: ONNX Runtime cannot load unit {unit.name} '
                                    f'({e})') from None
            ins, outs = sess.get_inputs(), sess.get_outputs()
            check_tensors(unit, [(a.name, a.shape, _ORT_TYPES.get(a.type, a.type)) for a in ins],
                          'inputs', unit.inputs, str(path))
            check_tensors(unit, [(a.name, a.shape, _ORT_TYPES.get(a.type, a.type))
                                 for a in outs], 'outputs', unit.outputs, str(path))
            self._sessions[unit.name] = (sess, [a.name for a in ins], [a.name for a in outs])
        # controller j -> layer j - 1 whose graph computes it
        self.fused = {u.fused_controller: u.index for u in self.manifest.units
                      if u.fused_controller is not None}
        self._fused_prob: Optional[tuple[int, np.ndarray, np.ndarray]] = None
        embed = self.manifest.unit('embed')
        self._embed_inputs = {t.name: t for t in embed.inputs}
        self.layout = self.manifest.layout
        self.runs_segments = self.manifest.granularity == 'segment'

    def _run(self, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
        if name not in self._sessions:
            raise RuntimeError(f'{self.manifest.manifest_path}: a {self.manifest.granularity} '
                               f'export has no graph {name!r}')
        sess, in_names, out_names = self._sessions[name]
        return sess.run(out_names, dict(zip(in_names, inputs)))

    def segment(self, k: int, x: np.ndarray, allow_from: int, threshold: float
                ) -> tuple[np.ndarray, np.ndarray]:
        """Segment k in one launch -> (output, skipped_at (1,) int64)."""
        out, skipped = self._run(unit_name('segment', k), x,
                                 np.array([allow_from], np.int64),
                                 np.array([threshold], np.float32))
        return out, skipped

    def read_skips(self, records: Sequence[np.ndarray]) -> list[int]:
        return [int(r[0]) for r in records]

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        for arr, key in ((images, 'images'), (tokens, 'tokens')):
            want = self._embed_inputs[key]
            if tuple(arr.shape) != want.shape or arr.dtype != np.dtype(want.dtype):
                raise ValueError(f'{key}: expected {want.shape} {want.dtype}, got '
                                 f'{tuple(arr.shape)} {arr.dtype} (use ModelSpec.prepare)')
        return self._run('embed', np.ascontiguousarray(images), np.ascontiguousarray(tokens))[0]

    def layer(self, i: int, x: np.ndarray) -> np.ndarray:
        outs = self._run(unit_name('layer', i), x)
        if i + 1 in self.fused:
            self._fused_prob = (i + 1, outs[0], outs[1])
        return outs[0]

    def adapter(self, j: int, x: np.ndarray) -> np.ndarray:
        return self._run(unit_name('adapter', j), x)[0]

    def controller(self, j: int, x: np.ndarray) -> float:
        if j in self.fused:
            last = self._fused_prob
            if last is None or last[0] != j or last[1] is not x:
                raise RuntimeError(f'controller {j} is fused into layer {j - 1}: it can only '
                                   f'judge that layer\'s latest output')
            return float(last[2][0])
        return float(self._run(unit_name('controller', j), x)[0][0])

    def head(self, x: np.ndarray) -> np.ndarray:
        return self._run('head', x)[0][0].astype(np.float32)  # (H, D), a new array

    def synchronize(self) -> None:
        """Nothing queued: ONNX Runtime returns finished host arrays."""

    def __enter__(self) -> 'OnnxRunner':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every session."""
        self._sessions.clear()
        self._fused_prob = None
