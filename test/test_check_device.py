"""check-device on this CPU: its JSON report (GPU lines SKIPPED with the reason, CPU lines
PASS: every segment graph at every allow point, the same decisions as PyTorch, one read per
step), and FAILs where the export or the model is broken: a controller that answers 1 - p
inside its segment graph, a NaN action head, a backend asked for that cannot run here."""
import argparse
import contextlib
import io
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from dysl_ros.bench.trace import DecisionTrace
from dysl_ros.export.onnx_export import export_model
from dysl_ros.export.random_model import build_random_model
from dysl_ros.model import VLAConfig
from dysl_ros.model.io import load_vla, save_vla
from dysl_ros.runtime.loading import load_model, load_torch_model
from dysl_ros.runtime.manifest import Manifest, sha256_file
from dysl_ros.runtime.policy import GuidedPolicy
from dysl_ros.tools import check_device

from test_export import GUIDANCE, INSTRUCTION, build_model, observations

# 6 layers: ceil(0.2 * 6) = 2 static layers (0 and 4), two segments, and steps that skip
TINY = VLAConfig(image_size=32, patch_size=8, d_model=32, n_layers=6, n_heads=2, mlp_ratio=2,
                 chunk_size=4)
CHECKS = ['versions', 'gpu', 'export', 'parity-onnxruntime', 'engines-fp32', 'engines-fp16',
          'parity-tensorrt-fp32', 'parity-tensorrt-fp16', 'decisions', 'launches', 'latency',
          'device-memory', 'finite-steps', 'configure-cleanup']
CPU_CHECKS = ['versions', 'export', 'parity-onnxruntime', 'decisions', 'launches', 'latency',
              'finite-steps', 'configure-cleanup']
GPU_CHECKS = ['gpu', 'engines-fp32', 'engines-fp16', 'parity-tensorrt-fp32',
              'parity-tensorrt-fp16', 'device-memory']
QUICK_STEPS = 16  # decision trace frames with --quick
INVERTED = 1  # the tiny model's controller 1 is consulted at every step (allow point 1)
NO_GPU = not torch.cuda.is_available()


def run_check(model, out, *extra):
    """(exit status, report, checks by name, screen) of check-device --quick."""
    parser = argparse.ArgumentParser()
    check_device.add_arguments(parser)
    args = parser.parse_args(['--model', str(model), '--out', str(out), '--quick', *extra])
    screen = io.StringIO()
    with contextlib.redirect_stdout(screen):
        rc = check_device.run(args)
    report = json.loads((out / 'check_device.json').read_text())
    return rc, report, {c['name']: c for c in report['checks']}, screen.getvalue()


def graphs(graph):
    """An ONNX graph and, depth first, the branches of its conditionals."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from graphs(a.g)


def segment_holding(layout, j):
    """The name of the segment graph that holds dynamic layer j."""
    return f'segment_{layout.segments.index(layout.segment_of(j))}'


def invert_controller(export_dir, j):
    """Make controller j of a per-segment export answer 1 - p (in the branch of its segment
    graph that asks it), and record the graph's new sha256 in the manifest, as someone
    editing the graph would."""
    m = Manifest.load(export_dir)
    unit = next(u for u in m.units if u.name == segment_holding(m.layout, j))
    path = m.path(unit)
    model = onnx.load(str(path))
    asks = next(g for g in graphs(model.graph) if any(
        i.startswith(f'segment.controllers.{j}.') for n in g.node for i in n.input))
    k, sigmoid = next((k, n) for k, n in enumerate(asks.node) if n.op_type == 'Sigmoid')
    p = sigmoid.output[0]
    sigmoid.output[0] = f'{p}_raw'
    one = helper.make_node('Constant', [], [f'{p}_one'],
                           value=numpy_helper.from_array(np.array(1.0, np.float32)))
    asks.node.insert(k + 1, one)
    asks.node.insert(k + 2, helper.make_node('Sub', [f'{p}_one', f'{p}_raw'], [p]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    manifest = json.loads(m.manifest_path.read_text())
    for u in manifest['units']:
        if u['name'] == unit.name:
            u['sha256'] = sha256_file(path)
    m.manifest_path.write_text(json.dumps(manifest))


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
    """A tiny random model without an export: check-device exports it into <out>/onnx."""
    root = tmp_path_factory.mktemp('check')
    model = build_random_model(root / 'model', TINY, seed=0)
    return (root / 'out',) + run_check(model, root / 'out')


@pytest.fixture(scope='module')
def tampered(tmp_path_factory):
    """A tiny model holding its export (model/onnx, per segment), with controller 1
    inverted."""
    root = tmp_path_factory.mktemp('tampered')
    model = build_random_model(root / 'model', TINY, seed=0, export=True)
    invert_controller(model / 'onnx', INVERTED)
    return model, run_check(model, root / 'out')


def test_cpu_run_passes_cpu_lines_and_skips_gpu_lines_with_the_reason(clean):
    out, rc, report, checks, screen = clean
    assert rc == 0 and report['ok'], screen
    assert [c['name'] for c in report['checks']] == CHECKS
    lines = screen.splitlines()
    for name in CHECKS:  # one screen line per check: status, name, detail
        line = next(x for x in lines if x.split()[1:2] == [name])
        assert line.split()[0] == checks[name]['status'] and checks[name]['detail'] in line
    assert lines[-1].startswith(f'{len(CHECKS)} checks: ')
    bad = {n: (checks[n]['status'], checks[n]['detail']) for n in CPU_CHECKS
           if checks[n]['status'] != 'PASS'}
    assert not bad, bad
    if NO_GPU:
        for name in GPU_CHECKS:
            c = checks[name]
            assert c['status'] == 'SKIP' and ('CUDA' in c['detail']
                                              or 'tensorrt' in c['detail']), c
        assert checks['device-memory']['data']['rss_mib'] > 0
        assert 'tensorrt' in report['backend_problems']
        assert report['backends'] == ['torch', 'onnxruntime']


def segment_cases(layout):
    """The names compare_segments gives its checks of every segment at every allow point."""
    return {'embed', 'head'} | {f'segment_{k} {case}' for k, seg in enumerate(layout.segments)
                                for case in [f'skip@{j}' for j in seg.dynamic] + ['full'] +
                                (['decide'] if seg.dynamic else [])}


def test_cpu_run_exports_and_checks_every_segment_at_every_allow_point(clean):
    out, _, report, checks, _ = clean
    manifest = Manifest.load(out / 'onnx')  # exported: the model held none
    assert report['export'] == str(out / 'onnx') and manifest.granularity == 'segment'
    assert checks['export']['data']['granularity'] == 'segment'
    parity = checks['parity-onnxruntime']['data']
    assert parity['granularity'] == 'segment'
    assert set(parity['units']) == segment_cases(manifest.layout)
    assert all(u['rel'] <= 1e-4 for u in parity['units'].values()), parity['units']


def test_cpu_run_launches_each_segment_once_and_reads_once_per_step(clean):
    out, _, _, checks, _ = clean
    launches = checks['launches']
    assert launches['status'] == 'PASS', launches['detail']
    d = launches['data']['onnxruntime']
    n = len(Manifest.load(out / 'onnx').layout.segments)
    assert d['granularity'] == 'segment' and d['steps_off'] == []
    assert d['reads'] == [1] * QUICK_STEPS
    assert d['launches'] == d['expected_launches']
    assert min(d['launches']) == n + 2  # embed, the segments, the head
    verified = checks['decisions']['data']['steps_verified']
    assert sum(x > n + 2 for x in d['launches']) == verified  # a verification re-launches


def test_cpu_run_compares_decisions_step_by_step(clean):
    out, _, _, checks, _ = clean
    d = checks['decisions']['data']
    assert d['steps'] == QUICK_STEPS and d['differing_steps'] == {'onnxruntime': []}
    trace = DecisionTrace.load(out / 'trace.json')  # the recorded reference
    assert [list(x.skipped_at) for x in trace.decisions] == \
        [s['skipped_at'] for s in d['reference']]
    assert d['steps_skipping'] > 0  # the comparison covers skipping steps
    lat = checks['latency']['data']['backends']
    assert set(lat) == {'torch', 'onnxruntime'}
    assert all(r['fraction_of_ideal']['backbone'] > 0 for r in lat.values())
    finite = checks['finite-steps']['data']
    assert finite['steps'] == 100 and finite['non_finite_steps'] == []
    cycles = checks['configure-cleanup']['data']['cycles']
    assert len(cycles) == 3 and all(c['rss_mib'] > 0 for c in cycles)


def test_tampered_controller_fails_parity_and_decisions(tampered):
    model, (rc, report, checks, screen) = tampered
    assert rc == 1 and not report['ok']
    assert report['export'] == str(model / 'onnx')  # the export inside the model, as it is
    assert checks['export']['status'] == 'PASS' and '(present)' in checks['export']['detail']
    # forced skips and full depth still match; deciding at the threshold, it skips elsewhere
    parity = checks['parity-onnxruntime']
    assert parity['status'] == 'FAIL', parity
    segment = segment_holding(Manifest.load(model / 'onnx').layout, INVERTED)
    assert parity['detail'].startswith(f'{segment} decide: skipped at '), parity
    decisions = checks['decisions']
    assert decisions['status'] == 'FAIL' and 'onnxruntime differs' in decisions['detail']
    assert decisions['data']['differing_steps']['onnxruntime'][0] == 0
    assert checks['finite-steps']['status'] == 'PASS'  # 1 - p is still finite
    assert 'FAIL  decisions' in screen


def test_nan_head_fails_the_long_run_and_the_node(tmp_path):
    model = build_random_model(tmp_path / 'model', TINY, seed=0)
    vla = load_vla(model)
    with torch.no_grad():
        vla.head.out.bias[0] = float('nan')
    save_vla(vla, model)
    rc, report, checks, _ = run_check(model, tmp_path / 'out', '--backends', 'torch')
    assert rc == 1 and checks['export']['status'] == 'SKIP'  # torch alone needs no export
    finite = checks['finite-steps']
    assert finite['status'] == 'FAIL' and finite['data']['non_finite_steps'] == list(range(100))
    node = checks['configure-cleanup']
    assert node['status'] == 'FAIL' and 'configure 1 failed' in node['detail']


@pytest.mark.skipif(not NO_GPU, reason='a CUDA GPU is here: tensorrt may run')
def test_tensorrt_asked_for_but_absent_fails(tmp_path):
    model = build_random_model(tmp_path / 'model', TINY, seed=0)
    rc, _, checks, _ = run_check(model, tmp_path / 'out', '--backends', 'tensorrt')
    assert rc == 1
    for name in ('engines-fp32', 'engines-fp16', 'parity-tensorrt-fp32'):
        assert checks[name]['status'] == 'FAIL', checks[name]
        assert '--backends tensorrt' in checks[name]['detail']


def test_compare_export_flags_the_graph_that_differs(tampered, tmp_path):
    """compare_export is what checks the engines on a GPU: here PyTorch's own segments with
    torch tensors as hidden states (as TensorRT's are) stand in for them; ONNX Runtime on
    the tampered export is refused by the segment that skips elsewhere; a per-unit export
    is checked unit by unit."""
    model, _ = tampered
    vla, dysl, guidance = load_torch_model(model)
    manifest = Manifest.load(model / 'onnx')
    pixels, tokens = manifest.spec().prepare(
        next(check_device.trace_frames(TINY.cameras, TINY.image_size, 1)), 'pick up the block')
    torch_runner = load_model('torch', (vla, dysl)).runner
    checks = check_device.compare_export(vla, dysl, torch_runner, pixels, tokens,
                                         torch.from_numpy, lambda t: t.numpy())
    assert {c.unit for c in checks} == segment_cases(manifest.layout)
    assert all(c.rel <= 1e-4 for c in checks), [c.describe() for c in checks]
    tampered_runner = load_model('onnxruntime', model / 'onnx').runner
    segment = segment_holding(manifest.layout, INVERTED)
    with pytest.raises(check_device.Failure, match=f'{segment} decide: skipped at'):
        check_device.compare_export(vla, dysl, tampered_runner, pixels, tokens)
    units, _ = export_model(vla, dysl, tmp_path / 'units', guidance, granularity='unit',
                            check=False, progress=False)
    checks = check_device.compare_export(vla, dysl, load_model('onnxruntime', units.directory)
                                         .runner, pixels, tokens)
    assert {c.unit for c in checks} == {u.name for u in units.units}
    assert all(c.rel <= 1e-4 for c in checks), [c.describe() for c in checks]


def test_launch_counts_follow_the_decisions(tmp_path):
    """What the launches line expects of a runner of segments, step by step, on a model whose
    steps skip and verify: one read, and embed + segments + head, again from the first
    skipping segment when verified."""
    vla, dysl = build_model()
    manifest, _ = export_model(vla, dysl, tmp_path, GUIDANCE, check=False, progress=False)
    counter = check_device._Launches(load_model('onnxruntime', tmp_path).runner)
    policy = GuidedPolicy(counter, manifest.spec(), manifest.guidance_config())
    verified = 0
    for t, images in enumerate(observations(12)):
        _, s = policy.step(images, INSTRUCTION)
        assert counter.take() == (check_device.segment_launches(manifest.layout, s), 1), t
        verified += s.verified
    assert 0 < verified < 12


def test_l4t_release(tmp_path):
    release = tmp_path / 'nv_tegra_release'
    release.write_text('# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, '
                       'EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n')
    assert check_device.l4t_release(release) == 'R36.3.0'
    assert check_device.l4t_release(tmp_path / 'absent') is None
