"""`python -m dysl_ros engines`: build the TensorRT engines of an export ahead of time.

Fills the engine cache (runtime/engine_cache.py; the build itself: runtime/engine_build.py)
so that the policy node only loads and checks them; on the robot, run it once per JetPack /
TensorRT upgrade.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..runtime.engine_build import (DEFAULT_OPTIMIZATION_LEVEL, DEFAULT_WORKSPACE_GB, PRECISIONS,
                                    trt_logger)
from ..runtime.engine_cache import EngineCache
from ..runtime.manifest import Manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--export', type=Path, required=True,
                        help='export directory (manifest.json + ONNX units)')
    parser.add_argument('--cache', type=Path, default=None,
                        help='engine cache directory (default: <export>/engines)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp16',
                        help='engine precision (default fp16; RMSNorm layers stay fp32)')
    parser.add_argument('--workspace-gb', type=float, default=DEFAULT_WORKSPACE_GB,
                        help='builder workspace limit in GiB (default 2; lower it on small '
                             'Jetsons if builds run out of memory)')
    parser.add_argument('--optimization-level', type=int, default=DEFAULT_OPTIMIZATION_LEVEL,
                        choices=range(6), metavar='{0-5}',
                        help='builder optimisation level (default 3, TensorRT\'s)')
    parser.add_argument('--device', type=int, default=0, help='CUDA device index (default 0)')


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    manifest = Manifest.load(args.export)
    cache = EngineCache(manifest, args.cache, args.precision, args.device, args.workspace_gb,
                        log=tqdm.write, optimization_level=args.optimization_level)
    trt = cache.trt
    logger = trt_logger(tqdm.write)  # must outlive the runtime
    runtime = trt.Runtime(logger)
    d = cache.device_info
    print(f'TensorRT {trt.__version__} on {d.name} (compute {d.compute_capability}, '
          f'{d.multiprocessors} SMs, {d.total_memory / (1 << 30):.1f} GiB), '
          f'{args.precision}, optimisation level {args.optimization_level}, '
          f'cache {cache.directory}')
    t0 = time.perf_counter()
    for unit in tqdm(manifest.units, desc='engines', unit='unit'):
        cache.engine(runtime, unit, build=True)
    print(f'{len(manifest.units)} engines ready ({cache.builds} built) in '
          f'{time.perf_counter() - t0:.1f} s; timing cache {cache.timing_cache}')
    return 0
