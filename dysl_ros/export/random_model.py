"""A stand-in model: an untrained VLA with a calibrated layout, saved (and exported).

While no trained model exists the demo, the node benchmarks and the tests run one of these:
everything works end to end, nothing succeeds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..guidance import GuidanceConfig
from ..model import VLAConfig
from ..model.io import save_dysl, save_vla
from ..train.calibrate import fresh_model


def build_random_model(directory: Path, cfg: Optional[VLAConfig] = None, seed: int = 0,
                       tau: float = 0.5, export: bool = False) -> Path:
    """Save an untrained VLA with calibrated static layers and fresh DySL parts to
    `directory`, and with export=True its ONNX export to directory/onnx (a stand-in while no
    trained model exists; tests use small configs)."""
    vla, dysl = fresh_model(cfg or VLAConfig(), seed=seed)
    guidance = GuidanceConfig(tau=tau)
    save_vla(vla, directory)
    save_dysl(dysl, directory, dataclasses.asdict(guidance))
    if export:
        from .onnx_export import export_model
        export_model(vla, dysl, Path(directory) / 'onnx', guidance, check=False,
                     progress=False)
    return Path(directory)


def build_random_model_apart(directory: Path, seed: int = 0, export: bool = False,
                             cameras: Optional[Sequence[str]] = None,
                             action_names: Optional[Sequence[str]] = None) -> Path:
    """build_random_model in a child process: after torch.onnx.export this process would run
    the closed loop several times slower (measured: 40 steps in 16 s instead of 4 s).
    cameras / action_names: the default VLAConfig's with these instead (another suite's)."""
    overrides = {k: list(v) for k, v in (('cameras', cameras), ('action_names', action_names))
                 if v is not None}
    code = ('import json, sys; from dysl_ros.export.random_model import build_random_model; '
            'from dysl_ros.model import VLAConfig; '
            'build_random_model(sys.argv[1], VLAConfig(**json.loads(sys.argv[4])), '
            'seed=int(sys.argv[2]), export=sys.argv[3] == "1")')
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(d for d in (root, os.environ.get('PYTHONPATH', '')) if d)
    result = subprocess.run([sys.executable, '-c', code, str(directory), str(seed),
                             '1' if export else '0', json.dumps(overrides)],
                            env={**os.environ, 'PYTHONPATH': path},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'building the random model in {directory} failed:\n'
                           f'{result.stderr[-2000:]}')
    return Path(directory)
