"""Launch files: Humble-compatible structure always; loaded through launch_ros when it imports
(on a robot / ROS install; PyPI ROS 2 has no launch). The suites' registry needs MuJoCo (not on
the robot): imported only by the test that checks the launch file against it."""
import ast
import importlib.util
import re
import runpy
from pathlib import Path

import pytest
import setuptools
import yaml

from dysl_ros.nodes import controller_node
from dysl_ros.nodes.params import defaults
from dysl_ros.nodes.policy_params import PARAMS as POLICY_PARAMS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {name: ROOT / 'launch' / name for name in ('policy.launch.py', 'sim_demo.launch.py')}
POLICY_ARGUMENTS = {'params_file', 'namespace', 'backend', 'model_path', 'use_sim_time',
                    'autostart'}
NODE_PARAMS = {'policy_node': POLICY_PARAMS, 'controller_node': controller_node.PARAMS}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def _arguments(tree: ast.AST) -> set[str]:
    return {c.args[0].value for c in _calls(tree, 'DeclareLaunchArgument')}


def _constant(tree: ast.Module, name: str):
    """The literal value of a module-level `name = ...`."""
    (value,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and
                [getattr(t, 'id', None) for t in n.targets] == [name]]
    return ast.literal_eval(value)


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
    assert POLICY_ARGUMENTS | {'sim_params_file', 'instruction', 'suite'} == demo


def test_each_suite_of_the_registry_has_its_sim_node_and_policy_parameters():
    pytest.importorskip('mujoco')
    from dysl_ros.sim.suites import DEFAULT_SUITE, SUITES
    from dysl_ros.tools.demo import suite_params

    tree = _tree(LAUNCH['sim_demo.launch.py'])
    suite_params_files = _constant(tree, 'SUITE_PARAMS')
    assert list(suite_params_files) == list(SUITES)  # the `suite` argument's choices
    assert _constant(tree, 'SUITE_MODELS') == {n: s.model_folder for n, s in SUITES.items()}
    (suite,) = [c for c in _calls(tree, 'DeclareLaunchArgument') if c.args[0].value == 'suite']
    assert {k.arg: k.value for k in suite.keywords}['default_value'].value == DEFAULT_SUITE
    (sim,) = _calls(tree, 'Node')
    overrides = [d for d in {k.arg: k.value for k in sim.keywords}['parameters'].elts
                 if isinstance(d, ast.Dict)]
    assert ['suite'] == [k.value for d in overrides for k in d.keys if k.value == 'suite']
    for name, file in suite_params_files.items():
        suite = SUITES[name]
        data = yaml.safe_load((ROOT / 'config' / file).read_text())
        wanted = suite_params(suite, suite.cameras)  # what `demo --suite` sets
        for node, declared in NODE_PARAMS.items():
            given = data[f'/**/{node}']['ros__parameters']
            assert set(given) <= set(defaults(declared)), (file, node)
            assert {**defaults(declared), **given} == \
                {**defaults(declared), **wanted[f'/**/{node}']['ros__parameters']}, (file, node)


def test_setup_installs_the_launch_and_config_files(monkeypatch):
    found = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: found.update(kwargs))
    monkeypatch.chdir(ROOT)  # setup.py globs relative paths
    runpy.run_path(str(ROOT / 'setup.py'))
    installed = {}
    for destination, files in found['data_files']:
        installed.setdefault(destination, set()).update(files)
    config = {f'config/{p.name}' for p in (ROOT / 'config').glob('*.yaml')}
    assert 'config/policy_mt10.yaml' in config
    assert config <= installed['share/dysl_ros/config']
    assert {f'launch/{name}' for name in LAUNCH} <= installed['share/dysl_ros/launch']


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


def test_launch_descriptions_load_with_launch_ros(tmp_path, monkeypatch):
    pytest.importorskip('launch')
    pytest.importorskip('launch_ros')
    from launch import LaunchContext, LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
    from launch_ros.actions import LifecycleNode, Node

    policy = _load(LAUNCH['policy.launch.py']).generate_launch_description()
    assert isinstance(policy, LaunchDescription)
    assert {a.name for a in policy.get_launch_arguments()} == POLICY_ARGUMENTS
    nodes = [e for e in policy.entities if isinstance(e, Node)]
    assert len(nodes) == 2 and sum(isinstance(e, LifecycleNode) for e in nodes) == 1
    demo = _load(LAUNCH['sim_demo.launch.py']).generate_launch_description()
    assert sum(isinstance(e, Node) for e in demo.entities) == 1  # sim; the rest is included
    declared = {a.name: a for a in demo.get_launch_arguments()}
    suites = list(_constant(_tree(LAUNCH['sim_demo.launch.py']), 'SUITE_PARAMS'))
    assert declared['suite'].choices == suites == ['tabletop', 'metaworld-mt10']
    # the included policy.launch.py gets the suite's parameters file, or the one given; the
    # package's share directory: a resource index of our own
    (tmp_path / 'share/ament_index/resource_index/packages').mkdir(parents=True)
    (tmp_path / 'share/ament_index/resource_index/packages/dysl_ros').touch()
    (tmp_path / 'share/dysl_ros').mkdir()
    config = tmp_path / 'share/dysl_ros/config'
    config.symlink_to(ROOT / 'config')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path))
    (policy,) = [e for e in demo.entities if isinstance(e, OpaqueFunction)]
    models = tmp_path / 'share/dysl_ros/models'
    for suite, params_file, expected, model_path, model in [
            ('tabletop', '', config / 'policy.yaml', '', models / 'default'),
            ('metaworld-mt10', '', config / 'policy_mt10.yaml', '', models / 'metaworld'),
            ('metaworld-mt10', '/robot/mine.yaml', '/robot/mine.yaml', '/m', '/m')]:
        context = LaunchContext()
        context.launch_configurations.update(suite=suite, params_file=params_file,
                                             model_path=model_path)
        for a in demo.entities:
            if isinstance(a, DeclareLaunchArgument):
                a.visit(context)  # the defaults of the others
        (include,) = policy.visit(context)
        given = {k: perform_substitutions(context, normalize_to_list_of_substitutions(v))
                 for k, v in include.launch_arguments}
        assert set(given) == POLICY_ARGUMENTS and given['params_file'] == str(expected)
        assert params_file or Path(given['params_file']).is_file()
        assert given['backend'] == 'torch' and given['model_path'] == str(model)
