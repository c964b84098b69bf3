"""The latency benchmark: decision-trace replay through the policy executor, and the tool's
figures and JSON (structure and consistency, never timings)."""
import argparse
import copy
import json

import numpy as np
import pytest
import torch

from dysl_ros.bench import latency
from dysl_ros.bench.latency.runners import CudaGraph, CudaGraphSegments
from dysl_ros.bench.trace import Decision, DecisionTrace, layers_run, replay_policy
from dysl_ros.guidance import GuidanceConfig
from dysl_ros.layout import Layout
from dysl_ros.model import DySL, VLA, VLAConfig
from dysl_ros.model.io import save_dysl, save_vla
from dysl_ros.runtime.policy import ModelSpec
from dysl_ros.runtime.torch_runner import TorchRunner

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TINY = VLAConfig(n_layers=8, d_model=64, n_heads=4, image_size=32, patch_size=8)
LAYOUT = Layout(8, (0, 3, 6))


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
    """The per-unit torch path, counting the controllers asked."""

    def __init__(self, vla, dysl):
        super().__init__(vla, dysl, segments=False)
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
            asked = sum(j is not None for j in d.skipped_at)  # the one at each recorded skip
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


@pytest.fixture(scope='module')
def saved(model, tmp_path_factory):
    """The model on disk, and an export directory the first run fills and the next reuse."""
    vla, dysl = model
    root = tmp_path_factory.mktemp('bench')
    save_vla(vla, root / 'model')
    save_dysl(dysl, root / 'model', {'tau': 0.05})
    return root / 'model', root / 'export'


def _expected_launches(d):
    """Launches of one replayed step on each path: embed, units or segments, head (again
    after a verification, which re-runs from the first skipping segment at full depth)."""
    skips = sum(j is not None for j in d.skipped_at)
    first = next((k for k, j in enumerate(d.skipped_at) if j is not None), None)
    S = len(LAYOUT.segments)
    unit = 2 + layers_run(LAYOUT, d) + 2 * skips + d.verified  # + adapter, controller / skip
    segment = S + 2 + (S - first + 1 if d.verified else 0)
    return unit, segment


@pytest.mark.parametrize('mode', ['trace', 'policy'])  # the first exports, the second reuses
def test_latency_tool_reports_every_figure(saved, tmp_path, mode, capsys):
    model_dir, export = saved
    S = len(LAYOUT.segments)
    out = tmp_path / 'latency.json'
    argv = ['--model', str(model_dir), '--backends', 'torch', 'onnxruntime', '--export',
            str(export), '--steps', '6', '--repeats', '1', '--unit-repeats', '2', '--json',
            str(out), '--save-trace', str(tmp_path / 'saved.json')]
    if mode == 'trace':
        trace = DecisionTrace.synthetic(LAYOUT, 6, seed=2, verify_rate=0.3)
        assert any(d.verified for d in trace.decisions)
        trace.save(tmp_path / 'trace.json')
        argv += ['--trace', str(tmp_path / 'trace.json')]
    assert _bench(argv) == 0
    printed = capsys.readouterr().out
    assert 'unit path' in printed and 'segment path' in printed and 'host overhead' in printed
    assert 'target torch segment: launches' in printed
    assert 'target onnxruntime segment: launches' in printed
    if not torch.cuda.is_available():
        assert 'torch cuda-graph (a CUDA graph per segment at fixed allow points): not run: ' \
               'torch sees no CUDA GPU' in printed
    assert ('exporting' in printed) == (mode == 'trace')
    assert {p.name for p in export.iterdir()} == {'units', 'segments'}
    r = json.loads(out.read_text())
    assert set(r['backends']) == {'torch', 'onnxruntime'}
    assert r['decisions_identical'] == {f'{b} {p}': True for b in ('torch', 'onnxruntime')
                                        for p in ('unit', 'segment')}
    for name, paths in r['backends'].items():
        assert set(paths) == {'unit', 'segment'}
        unit, seg = paths['unit'], paths['segment']
        # full depth: every layer once on the unit path, every segment once on the other
        assert unit['full']['calls_per_step'] == {**{f'layer_{i}': 1.0 for i in range(8)},
                                                  'embed': 1.0, 'head': 1.0}
        assert unit['full']['launches_unverified'] == [10]
        assert unit['full']['host_reads_per_step'] == {'inside': 0, 'end': 0}
        assert seg['full']['calls_per_step'] == {
            **{f'segment_{k}': 1.0 for k in range(S)}, 'embed': 1.0, 'head': 1.0}
        assert seg['full']['launches_unverified'] == [S + 2]
        assert seg['full']['host_reads_per_step'] == {'inside': 0, 'end': 1}
        # DySL: one host read per controller asked on the unit path; none inside a segment
        # graph, one per asked controller where torch decides on the host
        asked = sum(c for u, c in unit['dysl']['calls_per_step'].items()
                    if u.startswith('controller_'))
        assert asked > 0
        assert unit['dysl']['host_reads_per_step'] == {'inside': asked, 'end': 0}
        assert seg['dysl']['host_reads_per_step'] == {
            'inside': asked if name == 'torch' else 0, 'end': 1}
        assert set(seg['dysl']['launches_unverified']) <= {S + 2}  # a tiny model may verify all
        if mode == 'trace':
            want = np.mean([_expected_launches(d) for d in trace.decisions], axis=0)
            assert unit['dysl']['launches_per_step'] == pytest.approx(want[0])
            assert seg['dysl']['launches_per_step'] == pytest.approx(want[1])
        for p in (unit, seg):
            full, dysl_r = p['full'], p['dysl']
            assert full['layer_fraction'] == 1.0 and 0 < dysl_r['layer_fraction'] <= 2.0
            for m in (full, dysl_r):
                assert m['launches_per_step'] == pytest.approx(sum(m['calls_per_step'].values()))
                assert 0 < m['backbone_ms']['median'] <= m['backbone_ms']['p90']
                assert m['step_ms']['median'] >= m['backbone_ms']['median'] * 0.5
            assert set(p['speedup']) == set(p['fraction_of_ideal']) == {'backbone', 'step'}
            frac = dysl_r['layer_fraction']
            for stat, sfx in (('best', ''), ('mean', '_mean')):
                bb = full['backbone_ms'][stat] * frac
                step = full['step_ms'][stat] - full['backbone_ms'][stat] * (1 - frac)
                assert p['ideal_ms' + sfx] == pytest.approx({'backbone': bb, 'step': step})
                assert p['fraction_of_ideal' + sfx] == pytest.approx({
                    'backbone': bb / dysl_r['backbone_ms'][stat],
                    'step': step / dysl_r['step_ms'][stat]})
        # the unit-level breakdown where units run, and only there
        assert 'unit_ms' not in seg and 'breakdown_ms' not in seg['dysl']
        assert set(unit['unit_ms']) >= {'embed', 'head', 'layer_7', 'adapter_7',
                                        'controller_7'}
        for m in (unit['full'], unit['dysl']):
            assert set(m['breakdown_ms']) == {'layers', 'adapters', 'controllers', 'other',
                                              'host_overhead'}
            assert m['breakdown_ms']['host_overhead'] > 0
        assert unit['full']['breakdown_ms']['adapters'] == 0
        assert unit['full']['breakdown_ms']['controllers'] == 0
        # the verdict, from the figures above
        t = r['targets'][name]
        assert set(t) == {'segment'}
        t = t['segment']
        assert t['launches'] == {'want': S + 2, 'got': [S + 2], 'met': True}
        assert t['reads_inside']['got'] == seg['dysl']['host_reads_per_step']['inside']
        assert t['reads_inside']['met'] == (name == 'onnxruntime')
        assert t['reads_per_step'] == {'want': 1, 'got': 1, 'met': True}
        frac = seg['fraction_of_ideal']['backbone']
        want = {'torch': 0.9, 'onnxruntime': 0.95}[name]
        assert t['of_ideal'] == {'want': want, 'got': frac, 'met': frac >= want}
        b = t['better_than_unit']
        mine, theirs = seg['dysl']['backbone_ms']['best'], unit['dysl']['backbone_ms']['best']
        assert b['of_ideal'] == [frac, unit['fraction_of_ideal']['backbone']]
        assert b['met'] == (frac > b['of_ideal'][1] and mine < theirs)
    saved_trace = DecisionTrace.load(tmp_path / 'saved.json')
    assert len(saved_trace) == 6
    if mode == 'trace':
        assert saved_trace.decisions == trace.decisions  # replayed exactly, on every path
        assert r['trace']['steps'][0]['skipped_at'] == list(trace.decisions[0].skipped_at)
    else:
        assert r['trace'] is None and 'decisions: the guided policy' in printed


def test_measure_takes_one_runner_of_either_kind(model):
    """check-device times one runner through its own path."""
    vla, dysl = model
    spec = ModelSpec.from_model(vla, LAYOUT)
    rng = np.random.default_rng(0)
    obs = [({c: rng.integers(0, 256, (32, 32, 3), np.uint8) for c in TINY.cameras}, 'go')
           for _ in range(3)]
    subject = latency.Subject(vla, dysl, GuidanceConfig(), spec, obs,
                              DecisionTrace.synthetic(LAYOUT, 3, seed=1), 'tiny', 'cpu')
    for segments in (False, True):
        r = latency.measure(TorchRunner(vla, dysl, segments=segments), subject, 1, 1,
                            progress=False)
        assert r['full']['launches_unverified'] == [10 if not segments else 5]
        assert ('breakdown_ms' in r['dysl']) == (not segments)
        assert r['fraction_of_ideal']['backbone'] > 0


class EagerReplay(CudaGraph):
    """CudaGraph's buffers without CUDA: the capture keeps fn's output as the output buffer
    and a replay recomputes fn from the input buffer into it. What runs is the project's own
    part of the cuda-graph path: the buffers' chaining and copies, and the skip logic."""

    @staticmethod
    def warm_up(fn, device):
        fn()

    def _capture(self):
        return self.fn(self.inp).clone()

    def _replay(self):
        self.out.copy_(self.fn(self.inp))


def test_cuda_graph_path_decides_and_computes_as_the_segment_path(model):
    """Segment by segment, at random allow points and thresholds, the graphs' buffers give
    the eager segment path's skips and hidden states (real CUDA graphs where a GPU is)."""
    cuda = torch.cuda.is_available()
    vla, dysl = copy.deepcopy(model) if cuda else model
    if cuda:
        vla, dysl = vla.cuda(), dysl.cuda()
    eager = TorchRunner(vla, dysl, segments=True)
    spec = ModelSpec.from_model(vla, LAYOUT)
    rng = np.random.default_rng(0)

    def embed():
        images = {c: rng.integers(0, 256, (32, 32, 3), np.uint8) for c in TINY.cameras}
        return eager.embed(*spec.prepare(images, 'go'))

    graphs = CudaGraphSegments(eager, embed(), CudaGraph if cuda else EagerReplay)
    kinds = set()
    for _ in range(40):
        x = y = embed()
        threshold = float(rng.uniform(0.3, 0.7))
        for k, seg in enumerate(LAYOUT.segments):
            allow = int(rng.integers(seg.static + 1, seg.end + 1))  # seg.end: full depth
            x, want = eager.segment(k, x, allow, threshold)
            y, got = graphs.segment(k, y, allow, threshold)
            assert got == want
            torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
            kinds.add('full' if allow == seg.end else 'skip' if got >= 0 else 'ran')
    assert kinds == {'full', 'skip', 'ran'}


def test_measure_counts_every_graph_a_deciding_segment_replays(model):
    """On the cuda-graph path a segment at full depth is one launch, a deciding one a
    launch per unit graph it walks: the bench counts them all."""
    vla, dysl = model
    S = len(LAYOUT.segments)
    trace = DecisionTrace.synthetic(LAYOUT, 8, seed=2, verify_rate=0.3)
    assert any(d.verified for d in trace.decisions)
    spec = ModelSpec.from_model(vla, LAYOUT)
    rng = np.random.default_rng(0)
    obs = [({c: rng.integers(0, 256, (32, 32, 3), np.uint8) for c in TINY.cameras}, 'go')
           for _ in range(8)]
    subject = latency.Subject(vla, dysl, GuidanceConfig(), spec, obs, trace, 'tiny', 'cpu')
    eager = TorchRunner(vla, dysl, segments=True)
    graphs = CudaGraphSegments(eager, eager.embed(*spec.prepare(*obs[0])), EagerReplay)
    r = latency.measure(graphs, subject, 1, 1, progress=False)

    def launches(d):
        """Embed and head; per segment its graph at full depth, or the unit graphs of its
        walk (layers up to the skip, the controller, the adapter); after a verification
        the full-depth segments from the first skip on, and the head again."""
        first = next((k for k, j in enumerate(d.skipped_at) if j is not None), None)
        walk = sum(1 if j is None else j - seg.static + 2
                   for seg, j in zip(LAYOUT.segments, d.skipped_at))
        return 2 + walk + (S - first + 1 if d.verified else 0)

    assert r['full']['launches_unverified'] == [S + 2]
    assert r['dysl']['launches_per_step'] == pytest.approx(
        np.mean([launches(d) for d in trace.decisions]))
    assert r['dysl']['launches_per_step'] > S + 2
