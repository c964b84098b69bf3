"""Launch files: Humble-compatible structure always; loaded through launch_ros when it imports
(on a robot / ROS install; PyPI ROS 2 has no launch)."""
import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {name: ROOT / 'launch' / name for name in ('policy.launch.py', 'sim_demo.launch.py')}
POLICY_ARGUMENTS = {'params_file', 'namespace', 'backend', 'model_path', 'use_sim_time',
                    'autostart'}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def _arguments(tree: ast.AST) -> set[str]:
    return {c.args[0].value for c in _calls(tree, 'DeclareLaunchArgument')}


@pytest.mark.parametrize('name', sorted(LAUNCH))
def test_launch_files_avoid_apis_newer_than_humble(name):
    tree = _tree(LAUNCH[name])
    divisions = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and
                 isinstance(n.op, ast.Div)]
    assert not divisions, 'use PathJoinSubstitution, not `/` on substitutions (not in Humble)'
    assert _calls(tree, 'PathJoinSubstitution')
    for call in _calls(tree, 'LifecycleNode'):  # Humble requires name and namespace
        keywords = {k.arg for k in call.keywords}
        assert {'name', 'namespace'} <= keywords and 'autostart' not in keywords
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)


def test_launch_arguments():
    assert _arguments(_tree(LAUNCH['policy.launch.py'])) == POLICY_ARGUMENTS
    demo = _arguments(_tree(LAUNCH['sim_demo.launch.py']))
    assert POLICY_ARGUMENTS | {'sim_params_file', 'instruction'} == demo


def test_launched_executables_are_installed_console_scripts():
    scripts = set(re.findall(r"'(\w+) = dysl_ros\.[\w.]+:main'", (ROOT / 'setup.py').read_text()))
    for path in LAUNCH.values():
        for call in _calls(_tree(path), 'Node') + _calls(_tree(path), 'LifecycleNode'):
            executable = {k.arg: k.value for k in call.keywords}['executable'].value
            assert executable in scripts, f'{path.name}: {executable} is not in setup.py'


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_descriptions_load_with_launch_ros():
    pytest.importorskip('launch')
    pytest.importorskip('launch_ros')
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch_ros.actions import LifecycleNode, Node

    policy = _load(LAUNCH['policy.launch.py']).generate_launch_description()
    assert isinstance(policy, LaunchDescription)
    assert {a.name for a in policy.get_launch_arguments()} == POLICY_ARGUMENTS
    nodes = [e for e in policy.entities if isinstance(e, Node)]
    assert len(nodes) == 2 and sum(isinstance(e, LifecycleNode) for e in nodes) == 1
    demo = _load(LAUNCH['sim_demo.launch.py']).generate_launch_description()
    assert any(isinstance(e, IncludeLaunchDescription) for e in demo.entities)
    assert sum(isinstance(e, Node) for e in demo.entities) == 1  # sim; the rest is included
