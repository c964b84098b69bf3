"""One command line for every tool: `python -m dysl_ros <command> [--help]`.

Each command lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; this file only lists them. The same command line is installed as the
console script `dysl`, so on a robot `ros2 run dysl_ros dysl <command>` works too.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# command -> (module, one-line help)
COMMANDS = {
    'demo': ('dysl_ros.tools.demo',
             'closed-loop demo: sim, policy and controller nodes over ROS 2, a table per episode'),
    'gen-demos': ('dysl_ros.sim.demos', 'generate expert demonstration episodes in the simulation'),
    'bench': ('dysl_ros.bench.cli', 'benchmarks: print a table, write JSON'),
    'train-bc': ('dysl_ros.train.bc', 'behaviour cloning of the VLA from demo episodes'),
    'calibrate': ('dysl_ros.train.calibrate', 'choose static layers and tau for a model'),
    'distill': ('dysl_ros.train.distill', 'two-stage distillation of the DySL parts'),
    'export': ('dysl_ros.export.onnx_export', 'export per-unit ONNX graphs and a manifest'),
    'engines': ('dysl_ros.export.tensorrt_build', 'build TensorRT engines from an export'),
    'record': ('dysl_ros.bags.record',
               'record simulated episodes (expert or policy) into a rosbag2 bag'),
    'replay': ('dysl_ros.bags.replay',
               'replay a bag through a policy, step-locked or live; report vs reference chunks'),
    'bag2demos': ('dysl_ros.bags.convert',
                  'convert recorded bags into a demo folder for calibrate / distill'),
    'train-baselines': ('dysl_ros.train.baselines',
                        'train / calibrate the baselines and the DySL ablations'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m dysl_ros', description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', metavar='command', required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


# What a tool raises for bad input (a file, a value, a missing model or topic): the message
# names what was wrong, so the user gets that one line and exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TimeoutError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
