"""check-device on this CPU: its JSON report (GPU lines SKIPPED with the reason, CPU lines
PASS), and FAILs where the export or the model is broken: a controller whose ONNX graph
answers 1 - p, a NaN action head, a backend asked for that cannot run here."""
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
from dysl_ros.export.random_model import build_random_model
from dysl_ros.model import VLAConfig
from dysl_ros.model.io import load_vla, save_vla
from dysl_ros.runtime.loading import load_model, load_torch_model
from dysl_ros.runtime.manifest import MANIFEST_NAME, Manifest, sha256_file
from dysl_ros.tools import check_device

TINY = VLAConfig(image_size=32, patch_size=8, d_model=32, n_layers=5, n_heads=2, mlp_ratio=2,
                 chunk_size=4)
CHECKS = ['versions', 'gpu', 'export', 'parity-onnxruntime', 'engines-fp32', 'engines-fp16',
          'parity-tensorrt-fp32', 'parity-tensorrt-fp16', 'decisions', 'latency',
          'device-memory', 'finite-steps', 'configure-cleanup']
CPU_CHECKS = ['versions', 'export', 'parity-onnxruntime', 'decisions', 'latency',
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


def invert_controller(export_dir, j):
    """Make controller j of an export answer 1 - p, and record its new sha256 in the
    manifest, as someone editing the graph would."""
    path = export_dir / f'controller_{j}.onnx'
    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = [o + '_raw' if o == out else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), 'one'))
    graph.node.append(helper.make_node('Sub', ['one', out + '_raw'], [out]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    manifest = json.loads((export_dir / MANIFEST_NAME).read_text())
    for unit in manifest['units']:
        if unit['name'] == f'controller_{j}':
            unit['sha256'] = sha256_file(path)
    (export_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
    """A tiny random model without an export: check-device exports it into <out>/onnx."""
    root = tmp_path_factory.mktemp('check')
    model = build_random_model(root / 'model', TINY, seed=0)
    return (root / 'out',) + run_check(model, root / 'out')


@pytest.fixture(scope='module')
def tampered(tmp_path_factory):
    """A tiny model holding its export (model/onnx), with controller 1 inverted."""
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


def test_cpu_run_exports_and_checks_every_unit(clean):
    out, _, report, checks, _ = clean
    manifest = Manifest.load(out / 'onnx')  # exported: the model held none
    assert report['export'] == str(out / 'onnx')
    units = checks['parity-onnxruntime']['data']['units']
    assert set(units) == {u.name for u in manifest.units}
    assert all(u['rel'] <= 1e-4 for u in units.values()), units


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
    parity = checks['parity-onnxruntime']
    assert parity['status'] == 'FAIL' and f'controller_{INVERTED}' in parity['detail']
    beyond = {n for n, u in parity['data']['units'].items() if not u['rel'] <= 1e-4}
    assert beyond == {f'controller_{INVERTED}'}
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


def test_compare_runners_flags_the_unit_that_differs(tampered):
    """compare_runners is what checks engines against ONNX Runtime on a GPU; here an ONNX
    Runtime run of the clean export, torch tensors as hidden states (as TensorRT's are),
    and the tampered export stand in for the engines."""
    model, _ = tampered
    clean = model.parent / 'clean'
    build_random_model(clean, TINY, seed=0, export=True)
    ref = load_model('onnxruntime', clean / 'onnx', providers=['CPUExecutionProvider']).runner
    manifest = Manifest.load(clean / 'onnx')
    pixels, tokens = manifest.spec().prepare(
        next(check_device.trace_frames(TINY.cameras, TINY.image_size, 1)), 'pick up the block')
    vla, dysl, _ = load_torch_model(clean)
    torch_runner = load_model('torch', (vla, dysl)).runner
    checks = check_device.compare_runners(ref, torch_runner, manifest.layout, pixels, tokens,
                                          torch.from_numpy, lambda t: t.numpy())
    assert {c.unit for c in checks} == {u.name for u in manifest.units}
    assert all(c.rel <= 1e-4 for c in checks), [c.describe() for c in checks]
    tampered_runner = load_model('onnxruntime', model / 'onnx').runner
    checks = check_device.compare_runners(ref, tampered_runner, manifest.layout, pixels, tokens)
    assert {c.unit for c in checks if c.rel > 1e-4} == {f'controller_{INVERTED}'}


def test_l4t_release(tmp_path):
    release = tmp_path / 'nv_tegra_release'
    release.write_text('# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, '
                       'EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n')
    assert check_device.l4t_release(release) == 'R36.3.0'
    assert check_device.l4t_release(tmp_path / 'absent') is None
