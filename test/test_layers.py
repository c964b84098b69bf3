"""The shape of the package: imports only point down the layers, and never run in a circle.

Every module of dysl_ros is parsed with ast (nothing is imported). Each `import` and
`from ... import` statement, wherever it stands (top of the module, inside a function, under
`if TYPE_CHECKING:`), is an edge to the module it names: relative imports are resolved, and
`from pkg import name` points at pkg.name when that is a module, else at pkg. A failure lists
every offending edge as file:line.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple, Optional

import pytest

# -- the rules -------------------------------------------------------------------------------

# Floors, bottom to top (architecture.md, with the runtime below train and export as issue 15
# asks). A module imports only from its own floor and the floors below it; a floor is named by
# the top-level modules and packages of dysl_ros on it ('__init__': dysl_ros itself).
FLOORS = [
    '__init__ validation paths datasets',  # version, argument checks, file places, demo folders
    'layout skipping',  # the static/dynamic layout and the one segment walk
    'model',  # the VLA, the DySL parts, the baselines, save/load
    'guidance',  # continuity ring buffer, allow points, verification (numpy)
    'runtime',  # runners, manifest, engine cache, the policy, methods: no export, no train
    'sim',  # MuJoCo tabletop, tasks, experts, demo generation
    'train',  # behaviour cloning, calibration, distillation, baselines
    'export',  # writes exports (ONNX units, manifest, engines); the random stand-in model
    # ---- the ROS-free core ends here: it imports nothing from the floors above ----
    'cli',  # the command table (names the command modules, imports none of them)
    'bench',  # closed-loop and latency benchmarks
    'bags nodes',  # rosbag2 tools and the ROS 2 nodes
    'tools __main__',  # the demo, check-device; python -m dysl_ros
]
# ... and no import cycle between any two modules, whatever their floors.

# -- the import graph ----------------------------------------------------------------------

PACKAGE = 'dysl_ros'
ROOT = Path(__file__).resolve().parents[1]


class Edge(NamedTuple):
    source: str  # importing module, relative to dysl_ros ('__init__' for dysl_ros)
    target: str  # imported module, likewise
    where: str  # file:line of the import statement

    def __str__(self) -> str:
        return f'{self.where}: {self.source} -> {self.target}'


def modules() -> dict[str, Path]:
    """Every module of the package (dotted, absolute) and its file."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob('*.py')):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        out['.'.join(parts)] = path
    return out


def _relative(name: str) -> str:
    return name[len(PACKAGE) + 1:] if name != PACKAGE else '__init__'


def _known(name: str, known: dict[str, Path]) -> Optional[str]:
    """The longest module of the package that `name` lies in (None: not in the package)."""
    while name and name not in known:
        name = name.rpartition('.')[0]
    return name or None


def _targets(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]
             ) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ''
    if node.level:
        package = module.split('.') if is_package else module.split('.')[:-1]
        anchor = package[:len(package) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
    return [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base for a in node.names]


def import_graph() -> list[Edge]:
    """Every import edge between modules of the package."""
    known = modules()
    edges = {}  # one per statement and target
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _targets(node, module, path.name == '__init__.py', known):
                target = _known(name, known)
                if target is not None and target != module:
                    e = Edge(_relative(module), _relative(target),
                             f'{path.relative_to(ROOT)}:{node.lineno}')
                    edges[e] = None
    return list(edges)


def floor(module: str) -> int:
    """The index in FLOORS of a module's floor (KeyError: on none)."""
    top = module.split('.')[0]
    for i, names in enumerate(FLOORS):
        if top in names.split():
            return i
    raise KeyError(f'{top} is on no floor: add it to FLOORS at the top of test_layers.py')


def upward_imports(edges: list[Edge]) -> list[str]:
    """Per pair of floors: the rule broken, then its offending edges."""
    by_floors: dict[tuple[int, int], list[Edge]] = {}
    for e in edges:
        if floor(e.target) > floor(e.source):
            by_floors.setdefault((floor(e.source), floor(e.target)), []).append(e)
    lines = []
    for (low, high), bad in sorted(by_floors.items()):
        lines.append(f'[{FLOORS[low]}] imports from [{FLOORS[high]}], a floor above:')
        lines += [f'    {e}' for e in bad]
    return lines


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (its edges, in order) per strongly connected group of modules."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, {}).setdefault(e.target, e)
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return [_cycle_in(sorted(g)[0], g, graph) for g in groups]


def _cycle_in(start: str, group: set[str], graph: dict[str, dict[str, Edge]]) -> list[Edge]:
    """The shortest path from `start` back to itself inside `group` (breadth first)."""
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child, edge in sorted(graph.get(node, {}).items()):
                if child not in group or child in came:
                    continue
                came[child] = edge
                if child == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                nxt.append(child)
        frontier = nxt
    raise AssertionError(f'{start} is in no cycle of {sorted(group)}')


# -- the tests -------------------------------------------------------------------------------

def test_the_graph_is_read():
    """The parser sees imports at the top, in functions and relative ones (no vacuous pass)."""
    edges = {(e.source, e.target) for e in import_graph()}
    assert ('model.dysl', 'skipping') in edges  # from ..skipping import ...
    assert ('__main__', 'cli') in edges  # from .cli import main
    assert ('runtime.loading', 'runtime.onnx_runner') in edges  # inside a function


def test_every_module_is_on_a_floor():
    tops = {_relative(m).split('.')[0] for m in modules()}
    placed = {name for names in FLOORS for name in names.split()}
    assert tops <= placed, (f'{sorted(tops - placed)} are on no floor: add them to FLOORS at '
                            'the top of test_layers.py')


def test_imports_point_down():
    bad = upward_imports(import_graph())
    if bad:
        pytest.fail('imports that run up the layers:\n  ' + '\n  '.join(bad), pytrace=False)


def test_no_import_cycle():
    lines = []
    for cycle in cycles(import_graph()):
        lines.append(' -> '.join([cycle[0].source] + [e.target for e in cycle]) + ':')
        lines += [f'    {e}' for e in cycle]
    if lines:
        pytest.fail('import cycles:\n  ' + '\n  '.join(lines), pytrace=False)
