"""`python -m dysl_ros check-device`: the acceptance check a user runs on the robot.

One line per check, PASS / FAIL / SKIP (with the reason), and a JSON report (--json, default
<out>/check_device.json). In order:

  versions        L4T, CUDA, TensorRT, torch, numpy, onnx, ONNX Runtime (FAIL: one missing
                  that export or the runtimes need)
  gpu             name, SM count, compute capability, memory
  export          the model's ONNX export: <model>/onnx when it holds one (per segment or
                  per unit), else made in <out>/onnx per segment (per unit with a torch
                  older than 2.6, which cannot export segment graphs)
  parity-onnxruntime    every graph on ONNX Runtime (CPU) against PyTorch (CPU), within the
                  export's bound (compare_export): per segment, every segment at every
                  allow point (forced to skip at each dynamic layer, full depth, deciding
                  at the threshold), FAIL when one skips elsewhere than PyTorch; per unit,
                  every unit
  engines-fp32/-fp16    TensorRT engines built (or loaded from --engine-cache), with times
  parity-tensorrt-fp32/-fp16  the same for the engines, relative error <= 1e-3 (fp32),
                  3e-2 (fp16)
  decisions       the same seeded frames (trace_frames: no simulator) through PyTorch on
                  the CPU (the reference, saved as <out>/trace.json) and every other
                  backend, fp32 and fp16 engines alike: per-step layer ids, skips,
                  verification, allow points
  launches        per exported backend over the decisions' steps: graphs launched and host
                  reads of skip decisions per step. Per segment: FAIL unless every step
                  reads once and launches embed, each segment and the head (a verified step:
                  again the segments from the first that skipped, and the head); per unit:
                  reported (a read per controller asked)
  latency         full depth vs DySL per backend, fraction of ideal (bench latency's
                  measurement); FAIL below 0.5 of ideal (the bench's target is 0.9), not
                  judged with --quick
  device-memory   device memory in use (SKIP on the CPU, with the process RSS)
  finite-steps    1,000 DySL steps on the fastest backend, no non-finite output
  configure-cleanup     a PolicyNode in this process configured and cleaned up three
                  times; FAIL when RSS (or CUDA memory) grows by 20 MiB or more after the
                  first cycle

GPU lines SKIP, saying why, where tensorrt does not import or torch sees no CUDA GPU; a
backend named in --backends that cannot run FAILs. Exit status 0 when nothing FAILed, else 1.

The JSON report: command, dysl_ros version, time, host, model, out, export (its directory or
null), backends, backend_problems (backend -> why it cannot run), quick, ok (no FAIL) and
checks: per check its name, status, detail (the screen line), seconds and data, e.g.
  export          directory, granularity ('segment' or 'unit'), graphs, seconds
  parity-*        tolerance, against, granularity, units: per UnitCheck (a unit, or
                  'segment_<k> <case>' with case skip@<j>, full or decide) max_abs,
                  mean_abs, rel
  decisions       steps, trace, steps_skipping, steps_verified, mean_layers_run,
                  min_controller_margin, differing_steps (label -> steps), reference
  launches        per label: granularity, launches and reads per step, expected_launches
                  (per segment; null per unit), steps_off (steps not as expected)
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..runtime.loading import BACKENDS  # numpy only: safe before the checks
from ..runtime.runner import RunnerWrapper

TRT_TOLERANCE = {'fp32': 1e-3, 'fp16': 3e-2}  # engine vs PyTorch (CPU), relative
MIN_FRACTION_OF_IDEAL = 0.5  # DySL backbone vs full depth x layer fraction
MAX_GROWTH_MIB = 20.0  # memory growth over configure / cleanup cycles 2 and 3
CYCLES = 3
INSTRUCTION = 'pick up the red block'
REQUIRED = ('torch', 'numpy', 'onnx', 'onnxruntime')  # export and the CPU runtimes


class Skip(Exception):
    """The check cannot run here; the message says why."""

    def __init__(self, reason: str, data: Optional[dict] = None):
        super().__init__(reason)
        self.data = data or {}


class Failure(Exception):
    """The check failed; the message says what was wrong."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=Path, default=None,
                        help='model directory, vla.json + dysl.json (default: models/default)')
    parser.add_argument('--out', type=Path, default=Path('check_device'),
                        help='work directory: export, engines, trace.json, report '
                             '(default ./check_device)')
    parser.add_argument('--json', type=Path, default=None,
                        help='report path (default <out>/check_device.json)')
    parser.add_argument('--backends', nargs='+', choices=BACKENDS, default=None,
                        help='backends to check (default: every one that runs here)')
    parser.add_argument('--engine-cache', type=Path, default=None,
                        help='TensorRT engine cache (default <out>/engines)')
    parser.add_argument('--precision', choices=tuple(TRT_TOLERANCE), default='fp16',
                        help='TensorRT precision for latency, the long run and the node '
                             '(default fp16)')
    parser.add_argument('--quick', action='store_true',
                        help='fewer steps everywhere (tests, a first look)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the frames (default 0)')


def run(args: argparse.Namespace) -> int:
    check = DeviceCheck(args)
    return 0 if check.run_all() else 1


# -- helpers -----------------------------------------------------------------------------

def trace_frames(cameras: tuple[str, ...], size: int, steps: int, seed: int = 0
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic, video-like camera frames (no simulator): per camera a coloured block
    moving smoothly over a gradient, under sensor noise rising from 0 to 80 grey levels, so
    the guidance sees calm stretches (skipping) and turbulent ones (continuity drops,
    verification)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size  # (S, S)
    bases = [np.stack([xx, yy, 1 - xx], -1) * rng.uniform(60, 200, 3) for _ in cameras]
    colours = rng.uniform(0, 255, (len(cameras), 3))
    for t in range(steps):
        noise = 80.0 * t / max(steps - 1, 1)
        frame = {}
        for k, camera in enumerate(cameras):
            cx, cy = 0.5 + 0.3 * np.cos(0.15 * t + k), 0.5 + 0.3 * np.sin(0.23 * t + k)
            img = bases[k].copy()  # (S, S, 3)
            img[(np.abs(xx - cx) < 0.12) & (np.abs(yy - cy) < 0.12)] = colours[k]
            img += rng.normal(0, noise, img.shape)
            frame[camera] = np.clip(img, 0, 255).astype(np.uint8)
        yield frame


def l4t_release(path: Path = Path('/etc/nv_tegra_release')) -> Optional[str]:
    """'R36.3.0' from /etc/nv_tegra_release; None off a Jetson."""
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(r'R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)', text)
    return f'R{m.group(1)}.{m.group(2)}' if m else text.strip().splitlines()[0].strip('# ')


def rss_mib() -> float:
    """This process's resident set size (VmRSS) in MiB; nan without /proc."""
    try:
        m = re.search(r'^VmRSS:\s+(\d+) kB', Path('/proc/self/status').read_text(), re.M)
    except OSError:
        return float('nan')
    return int(m.group(1)) / 1024 if m else float('nan')


def cuda_used_mib() -> Optional[float]:
    """Device memory in use (all processes) in MiB; None without a CUDA GPU."""
    import torch
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def backend_problems() -> dict[str, str]:
    """Why each backend that cannot run here cannot ({} when all can)."""
    problems = {}
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        problems['onnxruntime'] = f'onnxruntime does not import ({e})'
    import torch
    if importlib.util.find_spec('tensorrt') is None:
        problems['tensorrt'] = 'no tensorrt module (TensorRT 10 comes with JetPack 6)'
    elif not torch.cuda.is_available():
        problems['tensorrt'] = 'torch sees no CUDA GPU'
    else:
        from ..runtime.engine_build import require_tensorrt
        try:
            require_tensorrt()
        except Exception as e:  # too old, or its libraries do not load
            problems['tensorrt'] = f'{type(e).__name__}: {e}'.replace('ImportError: ', '')
    return problems


def compare_export(vla: Any, dysl: Any, runner: Any, pixels: np.ndarray, tokens: np.ndarray,
                   to_hidden: Callable[[np.ndarray], Any] = lambda a: a,
                   to_numpy: Callable[[Any], np.ndarray] = np.asarray) -> list:
    """Every graph of `runner` against PyTorch (vla, dysl) on the same input, one UnitCheck
    per case: a runner of segments at every allow point, with PyTorch's skip positions
    (compare_segments; one that skips elsewhere raises Failure naming it), else every unit
    (compare_units). to_hidden / to_numpy: numpy <-> the runner's hidden states."""
    from ..export.onnx_export import ExportError, compare_segments, compare_units
    compare = compare_segments if getattr(runner, 'runs_segments', False) else compare_units
    try:
        return compare(vla, dysl, runner, pixels, tokens, to_hidden, to_numpy)
    except ExportError as e:
        raise Failure(str(e)) from None


def segment_launches(layout: Any, stats: Any) -> int:
    """Graphs a step launches on a runner of segments: embed, every segment, the head; a
    verified step again the segments from the first that skipped, and the head."""
    n = len(layout.segments)
    first = next((k for k, j in enumerate(stats.skipped_at) if j is not None), n)
    return n + 2 + ((n - first + 1) if stats.verified else 0)


class _Launches(RunnerWrapper):
    """A runner passed through (a runner of segments stays one), counting the graphs it
    launches and its host reads of skip decisions: read_skips of a runner of segments, or
    each controller asked on a unit walk (its probability comes to the host; a controller
    fused into the layer before it launches nothing)."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.runs_segments = getattr(inner, 'runs_segments', False)
        self.layout = getattr(inner, 'layout', None)
        self.launches = self.reads = 0

    def take(self) -> tuple[int, int]:
        """(launches, reads) since the last take."""
        counts = (self.launches, self.reads)
        self.launches = self.reads = 0
        return counts

    def embed(self, images: np.ndarray, tokens: np.ndarray) -> Any:
        self.launches += 1
        return self.inner.embed(images, tokens)

    def segment(self, k: int, x: Any, allow_from: int, threshold: float) -> tuple[Any, Any]:
        self.launches += 1
        return self.inner.segment(k, x, allow_from, threshold)

    def read_skips(self, records: Any) -> list[int]:
        self.reads += 1
        return self.inner.read_skips(records)

    def layer(self, i: int, x: Any) -> Any:
        self.launches += 1
        return self.inner.layer(i, x)

    def adapter(self, j: int, x: Any) -> Any:
        self.launches += 1
        return self.inner.adapter(j, x)

    def controller(self, j: int, x: Any) -> float:
        self.launches += j not in getattr(self.inner, 'fused', {})
        self.reads += 1
        return self.inner.controller(j, x)

    def head(self, x: Any) -> np.ndarray:
        self.launches += 1
        return self.inner.head(x)


class _Margins(RunnerWrapper):
    """A runner of units passed through, recording |skip probability - threshold| of every
    controller call: how close the reference came to deciding the other way. Wrap the
    PyTorch reference walked by units (TorchRunner(segments=False)): the same skip logic
    on the host as its segments, so it decides as they do, with each probability in view."""

    def __init__(self, inner: Any, threshold: float):
        super().__init__(inner)
        self.threshold = threshold
        self.margins: list[float] = []

    def controller(self, j: int, x: Any) -> float:
        p = self.inner.controller(j, x)
        self.margins.append(abs(p - self.threshold))
        return p


def _decision(stats: Any) -> tuple:
    return (list(stats.layer_ids), list(stats.skipped_at), bool(stats.verified),
            list(stats.allow_points))


# -- the checks --------------------------------------------------------------------------

class DeviceCheck:
    """Runs the checks in order, printing a line and updating the report after each."""

    def __init__(self, args: argparse.Namespace):
        from ..paths import default_model_dir
        from ..runtime.loading import load_torch_model
        self.args, self.quick = args, args.quick
        self.model = Path(args.model) if args.model else default_model_dir()
        self.out = Path(args.out)
        self.json_path = Path(args.json) if args.json else self.out / 'check_device.json'
        self.engine_cache = Path(args.engine_cache or self.out / 'engines')
        for name in ('vla.json', 'dysl.json'):
            if not (self.model / name).is_file():
                raise FileNotFoundError(f'{self.model}: no {name}; pass --model DIR (a model '
                                        'directory with its DySL parts)')
        self.problems = backend_problems()
        self.explicit = set(args.backends or ())
        self.selected = [b for b in (args.backends or BACKENDS)
                         if b in self.explicit or b not in self.problems]
        self.vla, self.dysl, self.guidance = load_torch_model(self.model, 'cpu')
        from ..runtime.policy import ModelSpec
        self.spec = ModelSpec.from_model(self.vla, self.dysl.layout, self.dysl.cfg.skip_threshold)
        n = 16 if self.quick else 48
        self.frames = list(trace_frames(self.spec.cameras, self.spec.image_size, n, args.seed))
        self.manifest: Any = None
        self.ort_cpu: Any = None
        self.runners: dict[str, Any] = {}  # backend label -> runner, for the later checks
        self.runner_mib: dict[str, float] = {}
        # exported backend label -> (runs segments, (launches, reads) and stats per
        # decisions step)
        self.launch_counts: dict[str, tuple[bool, list[tuple[int, int]], list[Any]]] = {}
        self.fastest: Optional[str] = None
        self.results: list[dict] = []

    def run_all(self) -> bool:
        self.out.mkdir(parents=True, exist_ok=True)
        skipped = {b: self.problems[b] for b in BACKENDS
                   if b not in self.selected and b in self.problems}
        print(f'check-device: model {self.model}, work dir {self.out}, backends '
              f'{" ".join(self.selected)}' +
              ''.join(f'; {b}: {why}' for b, why in skipped.items()), flush=True)
        checks: list[tuple[str, Callable[[], tuple]]] = [
            ('versions', self.versions), ('gpu', self.gpu), ('export', self.export),
            ('parity-onnxruntime', self.parity_onnxruntime),
            ('engines-fp32', lambda: self.engines('fp32')),
            ('engines-fp16', lambda: self.engines('fp16')),
            ('parity-tensorrt-fp32', lambda: self.parity_tensorrt('fp32')),
            ('parity-tensorrt-fp16', lambda: self.parity_tensorrt('fp16')),
            ('decisions', self.decisions), ('launches', self.launches),
            ('latency', self.latency),
            ('device-memory', self.device_memory), ('finite-steps', self.finite_steps),
            ('configure-cleanup', self.configure_cleanup)]
        try:
            for name, fn in checks:
                self._record(name, fn)
        finally:
            self._release()
        counts = {s: sum(r['status'] == s for r in self.results) for s in ('PASS', 'FAIL', 'SKIP')}
        print(f'{len(self.results)} checks: {counts["PASS"]} PASS, {counts["FAIL"]} FAIL, '
              f'{counts["SKIP"]} SKIP; report {self.json_path}')
        return counts['FAIL'] == 0

    def _record(self, name: str, fn: Callable[[], tuple]) -> None:
        if sys.stdout.isatty():
            print(f'....  {name}', end='\r', flush=True)
        t0 = time.perf_counter()
        try:
            status, detail, data = fn()
        except Skip as e:
            status, detail, data = 'SKIP', str(e), e.data
        except Failure as e:
            status, detail, data = 'FAIL', str(e), {}
        except Exception as e:  # any error is that check's FAIL; the others still run
            status, detail, data = 'FAIL', f'{type(e).__name__}: {e}', {}
        seconds = time.perf_counter() - t0
        self.results.append({'name': name, 'status': status, 'detail': detail,
                             'seconds': round(seconds, 3), 'data': data})
        print(f'{status:<5} {name:<21} {detail}', flush=True)
        self._write_report()

    def _write_report(self) -> None:
        import dysl_ros
        report = {
            'command': 'check-device', 'dysl_ros': dysl_ros.__version__,
            'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'host': platform.node(),
            'model': str(self.model), 'out': str(self.out),
            'export': str(self.manifest.directory) if self.manifest else None,
            'backends': self.selected, 'backend_problems': self.problems,
            'quick': self.quick, 'ok': all(r['status'] != 'FAIL' for r in self.results),
            'checks': self.results}
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(report, indent=2, default=str) + '\n')

    def _release(self) -> None:
        """Close and drop every runner the checks made."""
        for runner in self.runners.values():
            if hasattr(runner, 'close'):
                runner.close()
        self.runners.clear()
        self.ort_cpu = None
        gc.collect()

    def _need(self, backend: str) -> None:
        """Skip (or fail, when --backends asked for it) a check of a backend that cannot
        run here or was not selected."""
        if backend in self.explicit and backend in self.problems:
            raise Failure(f'--backends {backend}, but it cannot run here: '
                          f'{self.problems[backend]}')
        if backend in self.problems:
            raise Skip(self.problems[backend])
        if backend not in self.selected:
            raise Skip(f'{backend} not in --backends')

    def _need_export(self) -> None:
        if self.manifest is None:
            raise Skip('no export (see the export line)')

    def _sample(self) -> tuple[np.ndarray, np.ndarray]:
        return self.spec.prepare(self.frames[0], INSTRUCTION)

    # each check returns (status, detail, data) or raises Skip / Failure

    def versions(self) -> tuple:
        import torch
        v: dict[str, Any] = {'l4t': l4t_release(), 'python': platform.python_version(),
                             'machine': platform.machine(), 'ros': os.environ.get('ROS_DISTRO'),
                             'cuda': torch.version.cuda}
        for module in ('tensorrt',) + REQUIRED:
            try:
                v[module] = importlib.import_module(module).__version__
            except Exception:  # ImportError, or a library that fails to load (OSError)
                v[module] = None
        if v['onnxruntime']:
            import onnxruntime
            v['onnxruntime_providers'] = onnxruntime.get_available_providers()
        shown = [('L4T', 'l4t'), ('CUDA', 'cuda'), ('TensorRT', 'tensorrt'), ('torch', 'torch'),
                 ('numpy', 'numpy'), ('onnx', 'onnx'), ('onnxruntime', 'onnxruntime'),
                 ('Python', 'python'), ('ROS', 'ros')]
        detail = ', '.join(f'{label} {v[key] or "-"}' for label, key in shown)
        missing = [m for m in REQUIRED if v[m] is None]
        if missing:
            return 'FAIL', f'{detail}; missing: {", ".join(missing)}', v
        return 'PASS', detail, v

    def gpu(self) -> tuple:
        import torch
        if not torch.cuda.is_available():
            raise Skip('torch sees no CUDA GPU' + (' (a CPU-only torch build)'
                                                   if torch.version.cuda is None else ''))
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        data = {'name': p.name, 'sm_count': p.multi_processor_count,
                'compute_capability': f'{p.major}.{p.minor}', 'memory_mib': total / 2**20,
                'free_mib': free / 2**20}
        return 'PASS', (f'{p.name}, {p.multi_processor_count} SMs, compute {p.major}.{p.minor}, '
                        f'{total / 2**30:.1f} GiB ({free / 2**30:.1f} free)'), data

    def export(self) -> tuple:
        from ..runtime.manifest import MANIFEST_NAME, Manifest
        if not {'onnxruntime', 'tensorrt'} & set(self.selected):
            raise Skip('no exported backend (onnxruntime, tensorrt) to check')
        inside = self.model / 'onnx'
        t0 = time.perf_counter()
        if (inside / MANIFEST_NAME).is_file():
            manifest = Manifest.load(inside)
            manifest.verify()
            how = f'{inside} (present)'
        else:
            from ..export.onnx_export import export_model, segments_exportable
            granularity = 'segment' if segments_exportable() else 'unit'  # torch < 2.6: units
            manifest, _ = export_model(self.vla, self.dysl, self.out / 'onnx', self.guidance,
                                       granularity=granularity, check=False, progress=False)
            how = f'exported to {manifest.directory} in {time.perf_counter() - t0:.1f} s'
        if manifest.layout != self.dysl.layout:
            raise Failure(f'{manifest.directory}: layout static {list(manifest.layout.static)} '
                          f'differs from the model\'s {list(self.dysl.layout.static)}; '
                          're-export (python -m dysl_ros export)')
        self.manifest = manifest
        return 'PASS', (f'{how}: {len(manifest.units)} graphs per {manifest.granularity}, '
                        f'{manifest.precision}, opset {manifest.opset}'), {
            'directory': str(manifest.directory), 'granularity': manifest.granularity,
            'graphs': len(manifest.units), 'seconds': time.perf_counter() - t0}

    def _parity(self, checks: list, bound: float, against: str) -> tuple:
        bad = [c for c in checks if not c.rel <= bound]  # NaN is beyond any bound
        worst = max(checks, key=lambda c: c.rel if np.isfinite(c.rel) else np.inf)
        granularity = self.manifest.granularity
        data = {'tolerance': bound, 'against': against, 'granularity': granularity,
                'units': {c.unit: {'max_abs': c.max_abs, 'mean_abs': c.mean_abs, 'rel': c.rel}
                          for c in checks}}
        if bad:
            return 'FAIL', (f'{len(bad)} of {len(checks)} {granularity} checks beyond relative '
                            f'{bound:g} of {against}: ' +
                            '; '.join(c.describe() for c in bad[:3])), data
        return 'PASS', (f'{len(checks)} {granularity} checks within relative {bound:g} of '
                        f'{against} (worst {worst.unit} {worst.rel:.1e})'), data

    def parity_onnxruntime(self) -> tuple:
        from ..export.onnx_export import RTOL
        from ..runtime.loading import load_model
        self._need_export()
        if 'onnxruntime' in self.problems:
            raise Skip(self.problems['onnxruntime'])
        self.ort_cpu = load_model('onnxruntime', self.manifest.directory,
                                  providers=['CPUExecutionProvider']).runner
        checks = compare_export(self.vla, self.dysl, self.ort_cpu, *self._sample())
        return self._parity(checks, RTOL[self.manifest.precision], 'PyTorch (CPU)')

    def engines(self, precision: str) -> tuple:
        from ..runtime.loading import load_model
        self._need('tensorrt')
        self._need_export()
        log: list[str] = []

        def note(msg: str) -> None:
            log.append(msg)
            if sys.stdout.isatty():
                print(f'....  engines-{precision}  {msg[:60]:<60}', end='\r', flush=True)

        used0 = cuda_used_mib()
        t0 = time.perf_counter()
        runner = load_model('tensorrt', self.manifest.directory, engine_cache=self.engine_cache,
                            precision=precision, build_engines=True, log=note).runner
        seconds = time.perf_counter() - t0
        self.runners[f'tensorrt-{precision}'] = runner
        self.runner_mib[f'tensorrt-{precision}'] = (cuda_used_mib() or 0.0) - (used0 or 0.0)
        n, built = len(self.manifest.units), runner.cache.builds
        return 'PASS', (f'{n} engines ready in {seconds:.1f} s: {built} built, {n - built} from '
                        f'the cache {runner.cache.directory}'), {
            'seconds': seconds, 'built': built, 'cached': n - built,
            'cache': str(runner.cache.directory),
            'device_memory_mib': self.runner_mib[f'tensorrt-{precision}'], 'log': log[-100:]}

    def parity_tensorrt(self, precision: str) -> tuple:
        import torch
        self._need('tensorrt')
        runner = self.runners.get(f'tensorrt-{precision}')
        if runner is None:
            raise Skip(f'no {precision} engines (see engines-{precision})')

        def to_hidden(a: np.ndarray) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(a)).cuda()
            torch.cuda.synchronize()  # the runner works on a stream of its own
            return t

        def to_numpy(t: Any) -> np.ndarray:
            runner.synchronize()
            return t.float().cpu().numpy()

        checks = compare_export(self.vla, self.dysl, runner, *self._sample(), to_hidden,
                                to_numpy)
        return self._parity(checks, TRT_TOLERANCE[precision], 'PyTorch (CPU)')

    def _labels(self, precisions: tuple[str, ...]) -> list[str]:
        """The selected backends that are ready: torch ('torch-cuda' on a GPU), onnxruntime
        (with an export), tensorrt-<p> for each of `precisions` whose engines loaded."""
        import torch
        out = []
        if 'torch' in self.selected:
            out.append('torch-cuda' if torch.cuda.is_available() else 'torch')
        if 'onnxruntime' in self.selected and 'onnxruntime' not in self.problems \
                and self.manifest is not None:
            out.append('onnxruntime')
        return out + [f'tensorrt-{p}' for p in precisions if f'tensorrt-{p}' in self.runners]

    def _runner(self, label: str) -> Any:
        """The runner of a label, made once: onnxruntime with its default providers, as the
        node runs it; tensorrt-<p> as the engines check built it."""
        from ..runtime.loading import load_model
        if label not in self.runners:
            if label == 'torch':
                self.runners[label] = load_model('torch', (self.vla, self.dysl)).runner
            elif label == 'torch-cuda':
                self.runners[label] = load_model('torch', self.model, device='cuda').runner
            elif label == 'onnxruntime':
                from ..runtime.onnx_runner import default_providers
                cpu_only = default_providers() == ['CPUExecutionProvider']
                self.runners[label] = (self.ort_cpu if cpu_only and self.ort_cpu is not None
                                       else load_model(label, self.manifest.directory).runner)
        return self.runners[label]

    def _policy(self, label: str, runner: Any = None) -> Any:
        """DySL on a label's runner (or `runner`, wrapping it), with the spec and guidance
        that backend loads."""
        from ..runtime.policy import GuidedPolicy
        runner = self._runner(label) if runner is None else runner
        if label.startswith('torch'):
            return GuidedPolicy(runner, self.spec, self.guidance)
        return GuidedPolicy(runner, self.manifest.spec(), self.manifest.guidance_config())

    def decisions(self) -> tuple:
        from ..bench.trace import DecisionTrace
        from ..runtime.policy import GuidedPolicy
        from ..runtime.torch_runner import TorchRunner
        labels = [k for k in self._labels(('fp32', 'fp16')) if k != 'torch']
        if not labels:
            raise Skip('no backend to compare with the PyTorch (CPU) reference')
        probe = _Margins(TorchRunner(self.vla, self.dysl, segments=False),
                         self.spec.skip_threshold)
        reference = GuidedPolicy(probe, self.spec, self.guidance)
        ref = [reference.step(f, INSTRUCTION)[1] for f in self.frames]
        trace_path = self.out / 'trace.json'
        DecisionTrace.from_stats(self.spec.layout, ref, 'check-device: PyTorch (CPU) on '
                                 f'{len(ref)} seeded frames').save(trace_path)
        differ: dict[str, list[int]] = {}
        for label in labels:
            counter = _Launches(self._runner(label))
            policy = self._policy(label, counter)
            steps, counts = [], []
            for f in self.frames:
                steps.append(policy.step(f, INSTRUCTION)[1])
                counts.append(counter.take())
            if not label.startswith('torch'):
                self.launch_counts[label] = (counter.runs_segments, counts, steps)
            differ[label] = [t for t, (a, b) in enumerate(zip(ref, steps))
                             if _decision(a) != _decision(b)]
        L = self.spec.layout.num_layers
        skipping = sum(any(j is not None for j in s.skipped_at) for s in ref)
        margin = min(probe.margins) if probe.margins else float('nan')
        data = {'steps': len(ref), 'trace': str(trace_path), 'steps_skipping': skipping,
                'steps_verified': sum(s.verified for s in ref),
                'mean_layers_run': float(np.mean([s.layers_run for s in ref])),
                'min_controller_margin': margin, 'differing_steps': differ,
                'reference': [{'layer_ids': s.layer_ids, 'skipped_at': s.skipped_at,
                               'verified': s.verified, 'allow_points': s.allow_points}
                              for s in ref]}
        head = (f'{len(ref)} steps ({skipping} skipping, {data["steps_verified"]} verified, mean '
                f'{data["mean_layers_run"]:.1f}/{L} layers) vs PyTorch (CPU)')
        same = [label for label, d in differ.items() if not d]
        bad = [f'{label} differs at {len(d)} steps (first {d[0]})'
               for label, d in differ.items() if d]
        if bad:
            return 'FAIL', (f'{head}: ' + '; '.join(bad) + (f'; identical: {", ".join(same)}'
                            if same else '') + f'; nearest controller margin {margin:.1e}'), data
        note = '' if skipping else ' (no step skipped: full-depth walks only)'
        return 'PASS', f'{head}: identical on {", ".join(same)}{note}', data

    def launches(self) -> tuple:
        if not self.launch_counts:
            raise Skip('no exported backend ran the decisions\' steps (see decisions)')
        data, parts, bad = {}, [], []
        for label, (per_segment, counts, steps) in self.launch_counts.items():
            launches, reads = (list(c) for c in zip(*counts))
            expected = ([segment_launches(self.manifest.layout, s) for s in steps]
                        if per_segment else None)
            off = [t for t, c in enumerate(counts) if c != (expected[t], 1)] if expected else []
            data[label] = {'granularity': 'segment' if per_segment else 'unit',
                           'launches': launches, 'reads': reads, 'expected_launches': expected,
                           'steps_off': off}
            parts.append(f'{label} {np.mean(launches):.1f} launches, {np.mean(reads):.1f} '
                         f'reads per step ({data[label]["granularity"]}s)')
            if off:
                t = off[0]
                bad.append(f'{label} at {len(off)} steps (first {t}: {launches[t]} launches, '
                           f'{reads[t]} reads; expected {expected[t]}, 1)')
        detail = f'{len(self.frames)} steps: ' + '; '.join(parts)
        if bad:
            return 'FAIL', f'{detail}; not as decided: ' + '; '.join(bad), data
        return 'PASS', detail, data

    def latency(self) -> tuple:
        import torch

        from ..bench.latency import Subject, measure
        labels = self._labels((self.args.precision,))
        if not labels:
            raise Skip('no backend ready')
        steps, repeats = (8, 1) if self.quick else (30, 3)
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
        subject = Subject(self.vla, self.dysl, self.guidance, self.spec,
                          [(f, INSTRUCTION) for f in self.frames[:steps]], None,
                          'check-device', device)
        results = {}
        for label in labels:
            r = measure(self._runner(label), subject, repeats, repeats, progress=False)
            results[label] = {k: v for k, v in r.items() if k != 'decisions'}
        self.fastest = min(results, key=lambda k: results[k]['dysl']['step_ms']['median'])
        parts, low = [], []
        for label, r in results.items():
            frac = r['fraction_of_ideal']['backbone']
            parts.append(f'{label} {r["full"]["backbone_ms"]["median"]:.1f}->'
                         f'{r["dysl"]["backbone_ms"]["median"]:.1f} ms '
                         f'({r["speedup"]["backbone"]:.2f}x, {frac:.2f} of ideal)')
            if not frac >= MIN_FRACTION_OF_IDEAL:
                low.append(label)
        detail = (f'backbone full->DySL, {steps} steps x {repeats}: ' + '; '.join(parts) +
                  f'; fastest {self.fastest}')
        data = {'steps': steps, 'repeats': repeats, 'fastest': self.fastest,
                'min_fraction_of_ideal': MIN_FRACTION_OF_IDEAL, 'backends': results}
        if self.quick:  # a few steps, once: figures to look at, too short to judge
            return 'PASS', f'{detail} (--quick: not judged)', data
        if low:
            return 'FAIL', f'{detail}; below {MIN_FRACTION_OF_IDEAL} of ideal: {low}', data
        return 'PASS', detail, data

    def device_memory(self) -> tuple:
        import torch
        rss = rss_mib()
        if not torch.cuda.is_available():
            raise Skip(f'no CUDA GPU; process RSS {rss:.0f} MiB (info)', {'rss_mib': rss})
        free, total = torch.cuda.mem_get_info()
        used = (total - free) / 2**20
        data = {'used_mib': used, 'total_mib': total / 2**20, 'rss_mib': rss,
                'torch_reserved_mib': torch.cuda.memory_reserved() / 2**20,
                'runners_mib': self.runner_mib}
        detail = (f'{used:.0f} of {total / 2**20:.0f} MiB in use (every process; this one '
                  'holds each runner of the check)' +
                  ''.join(f', {k} took {v:.0f} MiB' for k, v in self.runner_mib.items()) +
                  f', torch reserved {data["torch_reserved_mib"]:.0f} MiB')
        if free / total < 0.1:
            return 'FAIL', f'{detail}; under 10% free', data
        return 'PASS', detail, data

    def _primary(self) -> str:
        """The backend of the long run and the node: the fastest timed one, else the first
        ready of tensorrt, onnxruntime, torch."""
        ready = self._labels((self.args.precision,))
        if not ready:
            raise Skip('no backend ready')
        return self.fastest if self.fastest in ready else ready[-1]

    def finite_steps(self) -> tuple:
        from ..runtime.policy import NonFiniteOutput
        label = self._primary()
        policy = self._policy(label)
        n = 100 if self.quick else 1000
        bad, layers = [], []
        t0 = time.perf_counter()
        frames = trace_frames(self.spec.cameras, self.spec.image_size, n, self.args.seed + 1)
        for t, frame in enumerate(frames):
            try:
                _, stats = policy.step(frame, INSTRUCTION)
                layers.append(stats.layers_run)
            except NonFiniteOutput:
                bad.append(t)
                policy.reset()
        seconds = time.perf_counter() - t0
        data = {'backend': label, 'steps': n, 'non_finite_steps': bad, 'seconds': seconds,
                'mean_layers_run': float(np.mean(layers)) if layers else None}
        if bad:
            return 'FAIL', (f'{len(bad)} of {n} DySL steps on {label} non-finite (first '
                            f'{bad[0]})'), data
        return 'PASS', (f'{n} DySL steps on {label} in {seconds:.1f} s, every chunk finite '
                        f'(mean {data["mean_layers_run"]:.1f} layers)'), data

    def configure_cleanup(self) -> tuple:
        """The check's own runners are released first: ONNX Runtime sessions left alive
        elsewhere in the process make each configure (a new model thread) keep ~50 MiB more
        in glibc's per-thread arenas, freed but not returned (malloc_trim returns it)."""
        from rclpy.lifecycle import TransitionCallbackReturn
        from rclpy.parameter import Parameter

        from ..nodes.launcher import LocalLaunch
        from ..nodes.policy_node import PolicyNode
        label = self._primary()
        self._release()  # the node alone, as on the robot (see configure_cleanup's docstring)
        backend = label.split('-')[0]
        values: dict[str, Any] = {'backend': backend, 'warmup_steps': 1, 'torch_threads': 0,
                                  'model_path': str(self.model if backend == 'torch'
                                                    else self.manifest.directory)}
        if label == 'torch-cuda':
            values['device'] = 'cuda'
        if backend == 'tensorrt':
            values.update(precision=label.split('-')[1], engine_cache=str(self.engine_cache),
                          build_engines=False)
        rows: list[dict] = []
        with LocalLaunch(log_level='error') as launch:
            node = launch.add(PolicyNode, node_name='check_device_policy', parameter_overrides=[
                Parameter(k, value=v) for k, v in values.items()])
            for cycle in range(1, CYCLES + 1):
                if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                    raise Failure(f'{label}: configure {cycle} failed: {node.error_text}')
                row = {'cycle': cycle, 'configured_rss_mib': rss_mib(),
                       'configured_cuda_mib': cuda_used_mib()}
                node.trigger_cleanup()
                gc.collect()
                row.update(rss_mib=rss_mib(), cuda_mib=cuda_used_mib())
                rows.append(row)
        growth = {'rss': max(r['rss_mib'] for r in rows[1:]) - rows[0]['rss_mib']}
        if rows[0]['cuda_mib'] is not None:
            growth['cuda'] = max(r['cuda_mib'] for r in rows[1:]) - rows[0]['cuda_mib']
        data = {'backend': label, 'cycles': rows, 'growth_mib': growth,
                'max_growth_mib': MAX_GROWTH_MIB}
        detail = (f'{CYCLES} cycles on {label}: RSS after cleanup ' +
                  ' / '.join(f'{r["rss_mib"]:.0f}' for r in rows) + ' MiB' +
                  (' (configured ' + ' / '.join(f'{r["configured_rss_mib"]:.0f}' for r in rows)
                   + ')') + ''.join(f', {k} growth {v:+.1f} MiB' for k, v in growth.items()))
        if not all(v < MAX_GROWTH_MIB for v in growth.values()):
            return 'FAIL', f'{detail}: {MAX_GROWTH_MIB:g} MiB or more', data
        return 'PASS', detail, data
