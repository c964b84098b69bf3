"""The command: options, the run over the backends, the printed report and the JSON."""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from ...runtime.loading import BACKENDS
from ..scale import SCALES
from ..trace import Decision, DecisionTrace
from .measure import measure_paths
from .report import format_breakdown, format_table, format_targets, targets
from .runners import available_backends, not_run, path_runners
from .subjects import build_subject


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--scale', choices=('default',) + tuple(SCALES), default='default',
                        help='default: the default VLA (trained, or fresh); llama7b: a '
                             'Llama-7B-shaped backbone, fp16, CUDA; llama-tiny: its CPU smoke')
    parser.add_argument('--model', type=Path, default=None,
                        help='trained model directory (default: models/default when it has '
                             'vla.json and dysl.json; otherwise a fresh default-size model)')
    parser.add_argument('--trace', type=Path, default=None,
                        help='decision trace JSON to replay (default: the real policy for a '
                             'trained model, a synthetic trace otherwise)')
    parser.add_argument('--save-trace', type=Path, default=None,
                        help='write the DySL decisions of the first backend as a trace')
    parser.add_argument('--backends', nargs='+', choices=BACKENDS, default=None,
                        help='backends to time (default: every one available here)')
    parser.add_argument('--steps', type=int, default=40, help='observations (default 40)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed passes over the observations (default 5)')
    parser.add_argument('--unit-repeats', type=int, default=5,
                        help='timings per unit and repeat for the breakdown (default 5)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default=None,
                        help='torch device (default: cuda for the Llama scales when present, '
                             'else cpu)')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch and ONNX Runtime (default 0: all cores)')
    parser.add_argument('--export', type=Path, default=None,
                        help='export directory to reuse or fill: DIR/units and DIR/segments, '
                             'or DIR itself for the granularity of its manifest (default: a '
                             'temporary one)')
    parser.add_argument('--engine-cache', type=Path, default=None,
                        help='TensorRT engine cache (default: <export>/engines)')
    parser.add_argument('--precision', choices=('fp16', 'fp32'), default='fp16',
                        help='TensorRT precision (default fp16)')
    parser.add_argument('--seed', type=int, default=0, help='seed (default 0)')
    parser.add_argument('--json', metavar='PATH', help='write every figure as JSON')


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.repeats < 1 or args.unit_repeats < 1:
        raise SystemExit('--steps, --repeats and --unit-repeats must be >= 1')
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    subject = build_subject(args)
    backends = args.backends or available_backends(subject)
    notes = subject.notes + not_run(subject, backends)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix='dysl-bench-') as tmp:
        for backend in backends:
            runners = path_runners(backend, subject, args, Path(tmp), notes)
            results[backend] = measure_paths(runners, subject, args.repeats, args.unit_repeats)
            for runner in runners.values():
                if hasattr(runner, 'close'):
                    runner.close()
    runs = {f'{b} {p}': r for b, paths in results.items() for p, r in paths.items()}
    first = next(iter(runs.values()))
    same = {name: r['decisions'] == first['decisions'] for name, r in runs.items()}
    verdict = targets(results, subject.spec.layout)
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    device = (torch.cuda.get_device_name(0) if subject.device == 'cuda'
              else f'CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}')
    device += f', load average {load:.1f} (other processes make timings noisy)'
    print(f'latency: {subject.description}')
    print(f'device: {device}; {len(subject.observations)} observations x {args.repeats} '
          f'repeats per path and mode, interleaved step by step')
    for note in notes:
        print(f'note: {note}')
    print(format_table(results))
    print()
    print(format_breakdown(results))
    if not all(same.values()):
        print(f'WARNING: DySL decisions differ between backends and paths: {same}')
    else:
        print(f'DySL decisions identical across {", ".join(runs)}')
    unstable = [n for n, r in runs.items() if not r['decisions_repeat_exactly']]
    if unstable:
        print(f'WARNING: decisions changed between passes on {unstable}; the counts and the '
              'breakdown assume they repeat')
    print(format_targets(verdict))
    if args.save_trace:
        decisions = [Decision(tuple(d['allow_points']), tuple(d['skipped_at']), d['verified'])
                     for d in first['decisions']]
        DecisionTrace(subject.spec.layout, decisions,
                      f'{next(iter(runs))} run of {subject.description}').save(args.save_trace)
        print(f'decision trace written to {args.save_trace}')
    if args.json:
        Path(args.json).write_text(json.dumps({
            'model': subject.description, 'device': device, 'notes': notes,
            'config': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                       if not k.startswith('_')},
            'decisions_identical': same,
            'trace': None if subject.trace is None else subject.trace.to_dict(),
            'targets': verdict,
            'backends': {b: {p: {k: v for k, v in r.items() if k != 'decisions'}
                             for p, r in paths.items()} for b, paths in results.items()},
        }, indent=2) + '\n')
    return 0
