"""Benchmarks: closed-loop success and latency, each a `python -m dysl_ros bench` subcommand."""
