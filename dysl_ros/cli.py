"""One command line for every tool: `python -m dysl_ros <command> [--help]`.

Each command lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; this file only lists them. A command's module is imported only when
that command runs (`--help` lists them all from the table), so a command never depends on
what another one imports: `export` and `engines` start on a robot that has no MuJoCo. The
same command line is installed as the console script `dysl`, so on a robot
`ros2 run dysl_ros dysl <command>` works too.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Mapping, Optional, Sequence

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
    'check-device': ('dysl_ros.tools.check_device',
                     'the acceptance check on the robot: versions, engines, parity, latency, '
                     'memory; PASS / FAIL / SKIP per line and a JSON report'),
}


class _LazyCommands(argparse._SubParsersAction):
    """Sub-commands whose module is imported, and its arguments added, only when chosen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.modules: dict[str, str] = {}  # command -> module not imported yet

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        module = self.modules.pop(values[0], None) if values else None
        if module is not None:
            importlib.import_module(module).add_arguments(self._name_parser_map[values[0]])
        super().__call__(parser, namespace, values, option_string)


def add_commands(parser: argparse.ArgumentParser, table: Mapping[str, tuple[str, str]],
                 dest: str, module_attr: str) -> None:
    """A required sub-command per `table` entry (name -> (module, one-line help)); the chosen
    one's module goes into the namespace as `module_attr`."""
    sub = parser.add_subparsers(dest=dest, metavar=dest, required=True, action=_LazyCommands)
    for name, (module, help_text) in table.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(**{module_attr: module})
        sub.modules[name] = module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m dysl_ros', description=__doc__.split('\n')[0])
    add_commands(parser, COMMANDS, 'command', '_module')
    return parser


# What a tool raises for bad input (a file, a value, a missing model or topic): the message
# names what was wrong, so the user gets that one line and exit status 2, no traceback.
# ImportError: a backend this machine lacks (`engines` without TensorRT says which, in one line).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TimeoutError, ImportError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
