"""The latency benchmark: decision-trace replay through the policy executor, and the tool's
figures and JSON (structure and consistency, never timings)."""
import argparse
import json

import numpy as np
import pytest
import torch

from dysl_ros.bench import latency
from dysl_ros.bench.trace import Decision, DecisionTrace, layers_run, replay_policy
from dysl_ros.layout import Layout
from dysl_ros.model import DySL, VLA, VLAConfig
from dysl_ros.model.io import save_dysl, save_vla
from dysl_ros.runtime.policy import ModelSpec
from dysl_ros.runtime.torch_runner import TorchRunner

TINY = VLAConfig(n_layers=8, d_model=64, n_heads=4, image_size=32, patch_size=8)
LAYOUT = Layout(8, (0, 3, 6))



@pytest.fixture(autouse=True, scope='module')
def one_torch_thread():
    """Tiny models gain nothing from threads, and threads stall on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    vla = VLA(TINY).eval()
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    with torch.no_grad():
        for a in dysl.adapters.values():
            a.up.weight.normal_(std=0.05)
    return vla, dysl


class CountingRunner(TorchRunner):
    def __init__(self, vla, dysl):
        super().__init__(vla, dysl)
        self.controllers = 0

    def controller(self, j, x):
        self.controllers += 1
        return super().controller(j, x)


def test_replay_follows_the_trace_and_still_runs_the_controllers(model):
    vla, dysl = model
    trace = DecisionTrace.synthetic(LAYOUT, 20, seed=3, verify_rate=0.3)
    assert len({d.skipped_at for d in trace.decisions}) >= 3
    assert any(d.verified for d in trace.decisions)
    runner = CountingRunner(vla, dysl)
    policy = replay_policy(trace, runner, ModelSpec.from_model(vla, LAYOUT))
    rng = np.random.default_rng(0)
    for steps in (20, 3):  # reset() starts the trace over
        policy.reset()
        for t, d in enumerate(trace.decisions[:steps]):
            runner.controllers = 0
            images = {c: rng.integers(0, 256, (32, 32, 3), np.uint8) for c in TINY.cameras}
            _, s = policy.step(images, 'push the blue block')
            assert (tuple(s.allow_points), tuple(s.skipped_at), s.verified) == (
                d.allow_points, d.skipped_at, d.verified), f'step {t}'
            assert s.layers_run == layers_run(LAYOUT, d)
            asked = sum((seg.end - 1 if j is None else j) - p + 1
                        for seg, p, j in zip(LAYOUT.segments, d.allow_points, d.skipped_at))
            assert runner.controllers == asked, f'step {t}: controllers must still run'


def test_trace_is_validated_and_round_trips(tmp_path):
    trace = DecisionTrace.synthetic(LAYOUT, 5, seed=1)
    trace.save(tmp_path / 't.json')
    again = DecisionTrace.load(tmp_path / 't.json')
    assert again.decisions == trace.decisions and again.layout == LAYOUT
    with pytest.raises(ValueError, match='skip at 1 is not a dynamic layer at or after allow '
                                         'point 2'):
        DecisionTrace(LAYOUT, [Decision((2, 4, 7), (1, None, None), False)])
    with pytest.raises(ValueError, match='verified without a skip'):
        DecisionTrace(LAYOUT, [Decision((1, 4, 7), (None, None, None), True)])


def _bench(argv):
    parser = argparse.ArgumentParser()
    latency.add_arguments(parser)
    return latency.run(parser.parse_args(argv))


@pytest.mark.parametrize('mode', ['policy', 'trace'])
def test_latency_tool_reports_every_figure(model, tmp_path, mode, capsys):
    vla, dysl = model
    save_vla(vla, tmp_path / 'model')
    save_dysl(dysl, tmp_path / 'model', {'tau': 0.05})
    out = tmp_path / 'latency.json'
    argv = ['--model', str(tmp_path / 'model'), '--backends', 'torch', 'onnxruntime',
            '--steps', '6', '--repeats', '1', '--unit-repeats', '2', '--json', str(out),
            '--save-trace', str(tmp_path / 'saved.json')]
    if mode == 'trace':
        trace = DecisionTrace.synthetic(LAYOUT, 6, seed=2)
        trace.save(tmp_path / 'trace.json')
        argv += ['--trace', str(tmp_path / 'trace.json')]
    assert _bench(argv) == 0
    printed = capsys.readouterr().out
    assert 'of ideal' in printed and 'host overhead' in printed
    r = json.loads(out.read_text())
    assert set(r['backends']) == {'torch', 'onnxruntime'}
    assert r['decisions_identical'] == {'torch': True, 'onnxruntime': True}
    for name, b in r['backends'].items():
        full, dysl_r = b['full'], b['dysl']
        assert full['layer_fraction'] == 1.0
        assert full['units_per_step'] == {**{f'layer_{i}': 1.0 for i in range(8)},
                                          'embed': 1.0, 'head': 1.0}
        assert 0 < dysl_r['layer_fraction'] <= 2.0
        for m in (full, dysl_r):
            assert 0 < m['backbone_ms']['median'] <= m['backbone_ms']['p90']
            assert m['step_ms']['median'] >= m['backbone_ms']['median'] * 0.5
            assert set(m['breakdown_ms']) == {'layers', 'adapters', 'controllers', 'other',
                                              'host_overhead'}
        assert full['breakdown_ms']['adapters'] == 0 == full['breakdown_ms']['controllers']
        assert full['breakdown_ms']['host_overhead'] > 0
        assert dysl_r['breakdown_ms']['host_overhead'] > 0
        assert set(b['speedup']) == set(b['fraction_of_ideal']) == {'backbone', 'step'}
        assert b['ideal_ms']['backbone'] == pytest.approx(
            full['backbone_ms']['best'] * dysl_r['layer_fraction'])
        assert set(b['unit_ms']) >= {'embed', 'head', 'layer_7', 'adapter_7', 'controller_7'}
    saved = DecisionTrace.load(tmp_path / 'saved.json')
    assert len(saved) == 6
    if mode == 'trace':
        assert saved.decisions == trace.decisions  # replayed exactly, on both backends
        assert r['trace']['steps'][0]['skipped_at'] == list(trace.decisions[0].skipped_at)
    else:
        assert r['trace'] is None and 'decisions: the guided policy' in printed
