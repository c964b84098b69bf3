"""`python -m dysl_ros bench <name>`: one subcommand per benchmark."""
from __future__ import annotations

import argparse
import importlib

# name -> (module with add_arguments/run, one-line help)
BENCHES = {
    'closed-loop': ('dysl_ros.bench.closed_loop',
                    'success rate, layers run and speedup in the simulation, per method'),
    'latency': ('dysl_ros.bench.latency',
                'full depth vs DySL latency per backend, per-unit breakdown'),
    'ros-overhead': ('dysl_ros.nodes.overhead_bench',
                     'camera-to-chunk latency over ROS 2 against policy-only latency'),
    'soak': ('dysl_ros.nodes.soak_bench',
             'policy and controller nodes in their own processes under N frames at R Hz: '
             'RSS over time, latency'),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='bench', metavar='bench', required=True)
    for name, (module, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_bench=module)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(args._bench).run(args)
