"""What the robot's image lacks keeps none of its commands from starting.

The Jetson image has no MuJoCo, transformers, matplotlib or rosbags, and the policy node
does not need onnx either. In a child process where importing them fails (a sys.meta_path
finder, as when they are not installed), the policy node loads its torch policy and gets as
far as TensorRT itself on the tensorrt backend, and `dysl export`, `engines` and
`check-device` parse their arguments (export runs); `python -m dysl_ros --help` lists every
command without importing one.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dysl_ros.cli import COMMANDS
from dysl_ros.export.onnx_export import export_model
from dysl_ros.model.io import save_dysl, save_vla

from test_export import GUIDANCE, build_model

ROOT = Path(__file__).resolve().parents[1]
ROBOT_LACKS = ('mujoco', 'transformers', 'matplotlib', 'rosbags')
NODE_LACKS = ROBOT_LACKS + ('onnx',)

BLOCKER = """
import importlib.abc
import sys

BLOCKED = set(sys.argv[1].split(','))


class Blocker(importlib.abc.MetaPathFinder):
    \"\"\"Imports of the blocked packages fail, as where they are not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)',
                                      name=name)
        return None


sys.meta_path.insert(0, Blocker())
args = sys.argv[2:]
"""

NODE = BLOCKER + """
import numpy as np
from dysl_ros.runtime.engine_build import EngineError
from dysl_ros.nodes.policy_params import PARAMS, PolicyNodeConfig, load_policy

defaults = {p.name: p.default for p in PARAMS}
model_dir, export_dir, engine_cache = args
cfg = PolicyNodeConfig(**{**defaults, 'backend': 'torch', 'model_path': model_dir})
policy = load_policy(cfg, log=lambda msg: None)
size = policy.spec.image_size
chunk, _ = policy.step({c: np.zeros((size, size, 3), np.uint8) for c in policy.spec.cameras},
                       'pick up the red block')
print('torch', chunk.shape)
cfg = PolicyNodeConfig(**{**defaults, 'backend': 'tensorrt', 'model_path': export_dir,
                          'build_engines': False, 'engine_cache': engine_cache})
try:
    load_policy(cfg, log=lambda msg: None)
except ImportError as e:  # no tensorrt: the load got as far as importing it
    print('tensorrt ImportError:', e)
except EngineError as e:  # tensorrt imported; no GPU, or no engine (nothing may be built)
    print('tensorrt EngineError:', e)
"""

CLI = BLOCKER + """
import contextlib
import io
from dysl_ros.cli import build_parser, main

run = args[0] == '--run'
argv = args[1:]
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text):
    try:
        main(argv[:1] + ['--help'])
    except SystemExit as e:
        assert e.code == 0, e.code
print('help', ' '.join(help_text.getvalue().split()))
print('module', build_parser().parse_args(argv)._module)
if run:
    print('exit', main(argv))
"""

LISTING = """
import contextlib
import io
import sys
from dysl_ros.cli import COMMANDS, main

loaded = []  # the modules loaded after each command line
for argv in (['--help'], ['bench', '--help'], ['engines', '--help']):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
    loaded.append((' '.join(argv), set(sys.modules)))
from dysl_ros.bench.cli import BENCHES  # noqa: E402 (after: it is a command module)

modules = {m for m, _ in COMMANDS.values()} | {m for m, _ in BENCHES.values()}
for argv, names in loaded:
    print(argv, sorted(modules & names))
"""


def _child(script, blocked, *args):
    """Run `script` in a fresh interpreter with `blocked` unimportable; its stdout lines."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])}
    r = subprocess.run([sys.executable, '-c', script, ','.join(blocked), *map(str, args)],
                       capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.splitlines()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A tiny model directory and its export (made here, where onnx is importable)."""
    torch.set_num_threads(1)
    vla, dysl = build_model()
    model_dir = tmp_path_factory.mktemp('model')
    save_vla(vla, model_dir)
    save_dysl(dysl, model_dir, {'tau': GUIDANCE.tau, 'release_margin': GUIDANCE.release_margin})
    export_dir = tmp_path_factory.mktemp('export')
    export_model(vla, dysl, export_dir, GUIDANCE, check=False, progress=False)
    return model_dir, export_dir


def test_policy_node_loads_without_what_the_robot_lacks(tiny, tmp_path):
    model_dir, export_dir = tiny
    torch_line, trt_line = _child(NODE, NODE_LACKS, model_dir, export_dir, tmp_path / 'engines')
    assert torch_line == 'torch (8, 7)'
    if importlib.util.find_spec('tensorrt') is None:
        assert trt_line.startswith('tensorrt ImportError: the tensorrt backend needs '
                                   'TensorRT 10'), trt_line
    else:
        assert trt_line.startswith('tensorrt EngineError:'), trt_line
        assert 'GPU' in trt_line or 'python -m dysl_ros engines' in trt_line, trt_line


def test_export_runs_without_what_the_robot_lacks(tiny, tmp_path):
    model_dir, _ = tiny
    out = tmp_path / 'export'
    lines = _child(CLI, ROBOT_LACKS, '--run', 'export', '--model', model_dir, '--out', out)
    assert '--model' in lines[0] and '--fuse-controllers' in lines[0]
    assert lines[1] == 'module dysl_ros.export.onnx_export' and lines[-1] == 'exit 0'
    assert (out / 'manifest.json').is_file()


def test_engines_parses_without_what_the_robot_lacks(tiny, tmp_path):
    _, export_dir = tiny
    lines = _child(CLI, ROBOT_LACKS, '--parse', 'engines', '--export', export_dir, '--cache',
                   tmp_path, '--precision', 'fp32', '--optimization-level', '5')
    assert '--export' in lines[0] and '--optimization-level' in lines[0]
    assert lines[1] == 'module dysl_ros.export.tensorrt_build'


# The check-device command is being written alongside this test: until its module exists,
# this case is skipped (the command itself is listed in COMMANDS already).
@pytest.mark.skipif(importlib.util.find_spec(COMMANDS['check-device'][0]) is None,
                    reason='dysl_ros.tools.check_device does not exist yet')
def test_check_device_parses_without_what_the_robot_lacks():
    lines = _child(CLI, ROBOT_LACKS, '--parse', 'check-device')
    assert lines[0].startswith('help usage: python -m dysl_ros check-device')
    assert lines[1] == 'module dysl_ros.tools.check_device'


def test_commands_are_imported_only_when_they_run():
    assert _child(LISTING, ()) == [
        '--help []',
        "bench --help ['dysl_ros.bench.cli']",  # not the benchmarks it lists
        "engines --help ['dysl_ros.bench.cli', 'dysl_ros.export.tensorrt_build']",
    ]
