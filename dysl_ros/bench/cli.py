"""`python -m dysl_ros bench <name>`: one subcommand per benchmark (its module is imported
only when it runs)."""
from __future__ import annotations

import argparse
import importlib

from ..cli import add_commands

# name -> (module with add_arguments/run, one-line help)
BENCHES = {
    'closed-loop': ('dysl_ros.bench.closed_loop',
                    'success rate, layers run and speedup in the simulation, per method'),
    'latency': ('dysl_ros.bench.latency',
                'full depth vs DySL latency per backend, per-unit vs per-segment'),
    'ros-overhead': ('dysl_ros.nodes.overhead_bench',
                     'camera-to-chunk latency over ROS 2 against policy-only latency'),
    'realtime': ('dysl_ros.nodes.realtime_bench',
                 'chunks in real time over ROS 2 with policy latency added: sync vs async '
                 'execution, success, idle fraction, jerk at switches'),
    'soak': ('dysl_ros.nodes.soak_bench',
             'policy and controller nodes in their own processes under N frames at R Hz: '
             'RSS over time, latency'),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_commands(parser, BENCHES, 'bench', '_bench')


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(args._bench).run(args)
