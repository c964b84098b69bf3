"""ONNX export + manifest, per segment (the default) and per unit, and ONNX Runtime against
PyTorch: every graph (a segment at every allow point), whole guided steps, the same decisions
on both paths, the work the executor launches, and refusal of tampered files."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dysl_ros.export import onnx_export
from dysl_ros.export.onnx_export import compare_segments, compare_units, export_model
from dysl_ros.guidance import GuidanceConfig
from dysl_ros.layout import Layout
from dysl_ros.model import DySL, VLA, VLAConfig
from dysl_ros.model.io import save_dysl, save_vla
from dysl_ros.runtime.loading import load_model, make_runner, open_policy
from dysl_ros.runtime.manifest import MANIFEST_NAME, Manifest, ManifestError
from dysl_ros.runtime.onnx_runner import OnnxRunner
from dysl_ros.runtime.policy import GuidedPolicy, ModelSpec
from dysl_ros.runtime.torch_runner import TorchRunner
from dysl_ros.skipping import NO_SKIP

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TINY = VLAConfig(n_layers=8, d_model=64, n_heads=4, image_size=32, patch_size=8)
LAYOUT = Layout(8, (0, 3, 6))
# A small tau and a generous release make the allow points move on random frames.
GUIDANCE = GuidanceConfig(tau=0.05, release_margin=1.0)
INSTRUCTION = 'pick up the red block'


def observations(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{c: rng.integers(0, 256, (48, 48, 3), np.uint8) for c in TINY.cameras}
            for _ in range(n)]


def build_model():
    """Tiny VLA + DySL with working adapters and controllers centred on their decision
    boundary (median logit over calibration frames = 0), so decisions vary."""
    torch.manual_seed(0)
    vla = VLA(TINY).eval()
    vla.set_action_stats(np.linspace(-1, 1, 7), np.full(7, 0.5))
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    spec = ModelSpec.from_model(vla, LAYOUT)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a in dysl.adapters.values():
            a.up.weight.copy_(torch.randn(a.up.weight.shape, generator=g) * 0.05)
        for c in dysl.controllers.values():
            c.out.weight.copy_(torch.randn(c.out.weight.shape, generator=g) * 10)
        logits = {j: [] for j in LAYOUT.dynamic}
        for images in observations(16, seed=99):
            pixels, tokens = spec.prepare(images, INSTRUCTION)
            x0 = vla.embed(torch.from_numpy(pixels), torch.from_numpy(tokens))
            _, hiddens = dysl.forward_full(x0, collect=True)
            for j in LAYOUT.dynamic:
                c = dysl.controllers[str(j)]
                logits[j].append(c.out(torch.tanh(c.fc(c.norm(hiddens[j]).mean(1)))).item())
        for j, values in logits.items():
            dysl.controllers[str(j)].out.bias.sub_(float(np.median(values)))
    return vla, dysl


def _stats_key(stats):
    return (stats.layer_ids, stats.skipped_at, stats.verified, stats.allow_points,
            stats.layers_run)


def _assert_close(got, ref, what, rtol=1e-4):
    err = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
    scale = max(float(np.abs(ref).max()), 1e-12)
    assert err.max() <= rtol * scale, (f'{what}: max abs error {err.max():.3g}, mean '
                                       f'{err.mean():.3g}, relative {err.max() / scale:.3g}')


@pytest.fixture(scope='module')
def model():
    return build_model()


@pytest.fixture(scope='module')
def model_dir(model, tmp_path_factory):
    vla, dysl = model
    d = tmp_path_factory.mktemp('model')
    save_vla(vla, d)
    save_dysl(dysl, d, {'tau': GUIDANCE.tau, 'release_margin': GUIDANCE.release_margin})
    return d


@pytest.fixture(scope='module')
def export_dir(model_dir, tmp_path_factory):
    """The export made by the command line tool (`python -m dysl_ros export`)."""
    out = tmp_path_factory.mktemp('export')
    parser = argparse.ArgumentParser()
    onnx_export.add_arguments(parser)
    assert onnx_export.run(parser.parse_args(['--model', str(model_dir), '--out', str(out)])) == 0
    return out


@pytest.fixture(scope='module')
def unit_dir(model, tmp_path_factory):
    """The per-unit export (--granularity unit)."""
    vla, dysl = model
    out = tmp_path_factory.mktemp('units')
    export_model(vla, dysl, out, GUIDANCE, granularity='unit', progress=False)
    return out


@pytest.fixture(params=['segment', 'unit'])
def any_export(request, export_dir, unit_dir):
    return export_dir if request.param == 'segment' else unit_dir


def test_segment_manifest_holds_one_graph_per_segment(export_dir):
    m = Manifest.load(export_dir)
    assert m.granularity == 'segment' and m.opset >= 18
    assert [u.name for u in m.units] == ['embed', 'segment_0', 'segment_1', 'segment_2', 'head']
    T, C = TINY.num_tokens, TINY.d_model
    for k, seg in enumerate(LAYOUT.segments):
        u = m.unit('segment', k)
        assert u.layers == (seg.static, seg.end)
        assert [(t.name, t.shape, t.dtype) for t in u.inputs] == [
            ('hidden', (1, T, C), 'float32'), ('allow_from', (1,), 'int64'),
            ('threshold', (1,), 'float32')]
        assert [(t.name, t.shape, t.dtype) for t in u.outputs] == [
            ('hidden_out', (1, T, C), 'float32'), ('skipped_at', (1,), 'int64')]
        graph = onnx.load(str(m.path(u)))
        onnx.checker.check_model(graph, full_check=True)
        # the decisions are in the graph: one If per dynamic layer at the top level
        assert [n.op_type for n in graph.graph.node].count('If') == 2 * len(seg.dynamic)
    # each layer's weights are stored once, in the one segment that runs it
    sizes = sum(m.path(u).stat().st_size for u in m.units if u.kind == 'segment')
    assert sizes < 1.2 * 4 * sum(p.numel() for p in build_model()[0].blocks.parameters()) + 2e5
    d = json.loads(m.manifest_path.read_text())
    assert d['granularity'] == 'segment'
    assert d['units'][1]['layers'] == [0, 3]


def test_manifest_describes_every_unit(model, unit_dir):
    vla, dysl = model
    m = Manifest.load(unit_dir)
    names = {u.name for u in m.units}
    assert names == ({'embed', 'head'} | {f'layer_{i}' for i in range(8)}
                     | {f'{k}_{j}' for j in LAYOUT.dynamic for k in ('adapter', 'controller')})
    assert m.layout == LAYOUT and m.opset >= 17 and m.precision == 'float32'
    g = m.guidance_config()
    assert (g.tau, g.history, g.release_margin) == (0.05, 5, 1.0)
    spec = m.spec()
    assert spec.cameras == TINY.cameras and spec.image_size == TINY.image_size
    assert spec.tokenizer.vocab == vla.tokenizer.vocab and spec.action_names == TINY.action_names
    np.testing.assert_allclose(spec.action_mean, vla.action_mean.numpy())
    np.testing.assert_allclose(spec.action_std, vla.action_std.numpy())
    T, C = TINY.num_tokens, TINY.d_model
    embed = m.unit('embed')
    assert [(t.name, t.shape, t.dtype) for t in embed.inputs] == [
        ('images', (1, 2, 3, 32, 32), 'float32'), ('tokens', (1, 12), 'int64')]
    assert m.unit('layer', 4).outputs[0].shape == (1, T, C)
    assert m.unit('controller', 5).outputs[0].shape == (1,)
    assert m.unit('head').outputs[0].shape == (1, TINY.chunk_size, 7)
    m.verify()
    for u in m.units:
        model_proto = onnx.load(str(m.path(u)))
        onnx.checker.check_model(model_proto, full_check=True)
        assert model_proto.opset_import[0].version == m.opset


def test_every_unit_matches_pytorch(model, unit_dir):
    vla, dysl = model
    runner = OnnxRunner(unit_dir)
    spec = ModelSpec.from_model(vla, LAYOUT)
    for seed, images in enumerate(observations(2, seed=5)):
        pixels, tokens = spec.prepare(images, 'open the drawer' if seed else INSTRUCTION)
        checks = compare_units(vla, dysl, runner, pixels, tokens)
        assert len(checks) == 2 + 8 + 2 * len(LAYOUT.dynamic)
        bad = [c.describe() for c in checks if not c.rel <= 1e-4]
        assert not bad, f'units beyond relative error 1e-4: {bad}'


def test_every_segment_matches_pytorch_at_every_allow_point(model, export_dir):
    vla, dysl = model
    runner = OnnxRunner(export_dir)
    spec = ModelSpec.from_model(vla, LAYOUT)
    pixels, tokens = spec.prepare(observations(1, seed=5)[0], INSTRUCTION)
    checks = compare_segments(vla, dysl, runner, pixels, tokens)
    names = {c.unit for c in checks}
    # forced to skip at each dynamic layer, at full depth, and deciding by itself
    assert names == {'embed', 'head', 'segment_0 full', 'segment_0 skip@1',
                     'segment_0 skip@2', 'segment_0 decide', 'segment_1 full',
                     'segment_1 skip@4', 'segment_1 skip@5', 'segment_1 decide',
                     'segment_2 full', 'segment_2 skip@7', 'segment_2 decide'}
    bad = [c.describe() for c in checks if not c.rel <= 1e-4]
    assert not bad, f'segments beyond relative error 1e-4: {bad}'
    x = runner.embed(pixels, tokens)
    out, record = runner.segment(0, x, 2, -1.0)  # forced: skips at its allow point
    assert runner.read_skips([record]) == [2]
    out, record = runner.segment(0, x, 3, -1.0)  # allow point at the end: full depth
    assert runner.read_skips([record]) == [NO_SKIP]
    with pytest.raises(RuntimeError, match="segment export has no graph 'layer_0'"):
        runner.layer(0, x)


def test_the_two_paths_decide_alike_on_torch_and_onnxruntime(model, export_dir, unit_dir):
    """Per segment and per unit: the same skips, verifications and chunks, step by step."""
    vla, dysl = model
    spec = ModelSpec.from_model(vla, LAYOUT)
    policies = {'torch segments': GuidedPolicy(TorchRunner(vla, dysl), spec, GUIDANCE),
                'torch units': GuidedPolicy(TorchRunner(vla, dysl, segments=False), spec,
                                            GUIDANCE),
                'ort segments': open_policy(export_dir, 'onnxruntime'),
                'ort units': open_policy(unit_dir, 'onnxruntime')}
    assert [p.runner.runs_segments for p in policies.values()] == [True, False, True, False]
    keys = []
    for t, images in enumerate(observations(16)):
        out = {name: p.step(images, INSTRUCTION) for name, p in policies.items()}
        (ref_chunk, ref_stats), *_ = out.values()
        for name, (chunk, stats) in out.items():
            assert _stats_key(stats) == _stats_key(ref_stats), f'step {t}: {name} differs'
            _assert_close(chunk, ref_chunk, f'step {t} {name} chunk')
        keys.append(_stats_key(ref_stats))
    assert len({tuple(k[1]) for k in keys}) >= 3 and any(k[2] for k in keys), keys


def test_guided_steps_match_pytorch(model, any_export):
    vla, dysl = model
    ref = GuidedPolicy(TorchRunner(vla, dysl), ModelSpec.from_model(vla, LAYOUT), GUIDANCE)
    ort_policy = open_policy(any_export, 'onnxruntime')
    assert ort_policy.guidance.cfg == GUIDANCE
    keys = []
    for t, images in enumerate(observations(16)):
        chunk_ref, s_ref = ref.step(images, INSTRUCTION)
        chunk, s = ort_policy.step(images, INSTRUCTION)
        assert _stats_key(s) == _stats_key(s_ref), f'step {t}: decisions differ'
        _assert_close(chunk, chunk_ref, f'step {t} chunk')
        assert type(s) is type(s_ref) and set(s.latency_ms) == set(s_ref.latency_ms)
        assert s.continuity == pytest.approx(s_ref.continuity, rel=1e-3, abs=1e-6)
        keys.append(_stats_key(s))
    # the sequence exercises the guidance: skips and full segments, moving points, verification
    assert len({tuple(k[1]) for k in keys}) >= 3, keys
    assert len({tuple(k[3]) for k in keys}) >= 2, keys
    assert any(k[2] for k in keys) and not all(k[2] for k in keys), keys


class Counting:
    """Records every unit call of a runner."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def embed(self, images, tokens):
        self.calls.append(('embed', None))
        return self.inner.embed(images, tokens)

    def layer(self, i, x):
        self.calls.append(('layer', i))
        return self.inner.layer(i, x)

    def adapter(self, j, x):
        self.calls.append(('adapter', j))
        return self.inner.adapter(j, x)

    def controller(self, j, x):
        self.calls.append(('controller', j))
        return self.inner.controller(j, x)

    def head(self, x):
        self.calls.append(('head', None))
        return self.inner.head(x)

    def synchronize(self):
        self.inner.synchronize()


def test_executor_runs_exactly_the_decided_units(unit_dir):
    loaded = load_model('onnxruntime', unit_dir)
    counting = Counting(loaded.runner)
    policy = GuidedPolicy(counting, loaded.spec, loaded.guidance)
    for t, images in enumerate(observations(12)):
        counting.calls.clear()
        _, s = policy.step(images, INSTRUCTION)
        calls = Counter(counting.calls)
        layers = Counter(i for kind, i in counting.calls if kind == 'layer')
        # a verification re-runs full depth from the first segment that skipped
        first = next((seg.static for seg, j in zip(LAYOUT.segments, s.skipped_at)
                      if j is not None), 8)
        expected = Counter(s.layer_ids) + (Counter(range(first, 8)) if s.verified else Counter())
        assert layers == expected, f'step {t}: layers {layers} vs decided {expected}'
        assert s.layers_run == sum(expected.values())
        skips = [j for j in s.skipped_at if j is not None]
        assert sorted(j for kind, j in counting.calls if kind == 'adapter') == skips
        # a controller is asked only from its segment's allow point up to the skip (one
        # host synchronisation each), never in the verification pass
        for k, seg in enumerate(LAYOUT.segments):
            last = seg.end - 1 if s.skipped_at[k] is None else s.skipped_at[k]
            asked = sorted(j for kind, j in counting.calls
                           if kind == 'controller' and seg.static < j < seg.end)
            assert asked == list(range(s.allow_points[k], last + 1)), (t, k, asked)
        assert calls[('embed', None)] == 1 and calls[('head', None)] == 1 + s.verified


class CountingSegments(Counting):
    """Records every launch and every read of skip positions of a segment runner."""

    runs_segments = True

    def __init__(self, inner):
        super().__init__(inner)
        self.layout = inner.layout

    def segment(self, k, x, allow_from, threshold):
        self.calls.append(('segment', k))
        return self.inner.segment(k, x, allow_from, threshold)

    def read_skips(self, records):
        self.calls.append(('read', len(records)))
        return self.inner.read_skips(records)


def test_segments_launch_once_each_and_read_once_per_step(export_dir):
    loaded = load_model('onnxruntime', export_dir)
    counting = CountingSegments(loaded.runner)
    policy = GuidedPolicy(counting, loaded.spec, loaded.guidance)
    n = len(LAYOUT.segments)
    verified = 0
    for t, images in enumerate(observations(12)):
        counting.calls.clear()
        _, s = policy.step(images, INSTRUCTION)
        first = next((k for k, j in enumerate(s.skipped_at) if j is not None), n)
        # embed + one launch per segment + head; a verification re-launches the segments
        # from the first that skipped, and the head
        expected = ([('embed', None)] + [('segment', k) for k in range(n)] + [('read', n)]
                    + [('head', None)])
        if s.verified:
            expected += [('segment', k) for k in range(first, n)] + [('head', None)]
            verified += 1
        assert counting.calls == expected, f'step {t}: {counting.calls}'
    assert 0 < verified < 12


@pytest.mark.parametrize('changed, removed', [('layer_3', 'adapter_4'),
                                               ('segment_1', 'segment_2')])
def test_tampered_or_missing_unit_is_refused_by_name(export_dir, unit_dir, tmp_path, changed,
                                                     removed):
    source = unit_dir if changed.startswith('layer') else export_dir
    copy = tmp_path / 'export'
    shutil.copytree(source, copy)
    path = copy / f'{changed}.onnx'
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf'{changed}\.onnx.*sha256'):
        OnnxRunner(copy)
    with pytest.raises(ManifestError, match=f'{changed}.onnx'):
        Manifest.load(copy).verify()
    (copy / f'{removed}.onnx').unlink()
    shutil.copy(source / f'{changed}.onnx', path)
    with pytest.raises(ManifestError, match=rf'{removed}\.onnx: missing'):
        make_runner('onnxruntime', copy)


def test_manifest_that_disagrees_with_a_graph_is_refused(export_dir, tmp_path):
    copy = tmp_path / 'export'
    shutil.copytree(export_dir, copy)
    d = json.loads((copy / MANIFEST_NAME).read_text())
    head = next(u for u in d['units'] if u['name'] == 'head')
    head['outputs'][0]['shape'] = [1, 4, 7]
    (copy / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=r'unit head outputs'):
        OnnxRunner(copy)
    del d['units'][0]  # the embedder
    (copy / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="units \\['embed'\\] are missing"):
        Manifest.load(copy)


def test_runner_checks_its_inputs(export_dir):
    with OnnxRunner(export_dir) as runner:
        with pytest.raises(ValueError, match=r'images: expected \(1, 2, 3, 32, 32\) float32'):
            runner.embed(np.zeros((1, 2, 3, 48, 48), np.float32), np.zeros((1, 12), np.int64))
        with pytest.raises(ValueError, match='tokens: expected'):
            runner.embed(np.zeros((1, 2, 3, 32, 32), np.float32), np.zeros((1, 12), np.int32))


def test_runner_factory(model_dir, export_dir):
    torch_policy = open_policy(model_dir, 'torch')
    ort_policy = open_policy(export_dir / MANIFEST_NAME, 'onnxruntime')
    assert torch_policy.runner.name == 'torch' and ort_policy.runner.name == 'onnxruntime'
    assert torch_policy.guidance.cfg == ort_policy.guidance.cfg == GUIDANCE
    for images in observations(3, seed=7):
        a, sa = torch_policy.step(images, INSTRUCTION)
        b, sb = ort_policy.step(images, INSTRUCTION)
        assert _stats_key(sa) == _stats_key(sb)
        _assert_close(b, a, 'chunk')
    with pytest.raises(ValueError, match="backend='tflite' is invalid"):
        make_runner('tflite', export_dir)
    with pytest.raises(ValueError, match='torch backend runs a model directory'):
        make_runner('torch', export_dir)
    with pytest.raises(ValueError, match='python -m dysl_ros export'):
        make_runner('onnxruntime', model_dir)


def test_fused_controllers_match_pytorch(model, tmp_path):
    vla, dysl = model
    manifest, checks = export_model(vla, dysl, tmp_path, GUIDANCE, granularity='unit',
                                    fuse_controllers=True, progress=False)
    assert not any(u.kind == 'controller' for u in manifest.units)
    assert {u.fused_controller for u in manifest.units if u.kind == 'layer'} - {None} == set(
        LAYOUT.dynamic)
    assert all(c.rel <= 1e-4 for c in checks), [c.describe() for c in checks]
    ref = GuidedPolicy(TorchRunner(vla, dysl), ModelSpec.from_model(vla, LAYOUT), GUIDANCE)
    policy = open_policy(tmp_path, 'onnxruntime')
    for t, images in enumerate(observations(8)):
        chunk_ref, s_ref = ref.step(images, INSTRUCTION)
        chunk, s = policy.step(images, INSTRUCTION)
        assert _stats_key(s) == _stats_key(s_ref), f'step {t}: decisions differ'
        _assert_close(chunk, chunk_ref, f'step {t} chunk')
    runner = policy.runner
    x = runner.embed(*policy.spec.prepare(observations(1)[0], INSTRUCTION))
    with pytest.raises(RuntimeError, match='controller 1 is fused into layer 0'):
        runner.controller(1, x)  # x is not layer 0's output


@pytest.mark.parametrize('granularity', ['segment', 'unit'])
def test_llama_backbone_exports_and_matches_pytorch(tmp_path, granularity):
    """Hugging Face Llama decoder layers (rotary, causal SDPA) export too."""
    from dysl_ros.bench.scale import LlamaScale, build_llama
    vla, dysl = build_llama(LlamaScale('test', 3, 64, 4, 128, 'float32'), 'cpu')
    manifest, checks = export_model(vla, dysl, tmp_path, GuidanceConfig(),
                                    granularity=granularity, progress=False)
    assert manifest.num_tokens == 300 and manifest.layout.num_layers == 3
    assert manifest.granularity == granularity
    bad = [c.describe() for c in checks if not c.rel <= 1e-4]
    assert not bad, f'Llama units beyond relative error 1e-4: {bad}'


NO_TORCH = """
import sys
sys.modules['torch'] = None  # every import of torch fails from here on
import numpy as np
from dysl_ros.runtime.loading import open_policy
policy = open_policy(sys.argv[1], 'onnxruntime')
images = {c: np.zeros((48, 48, 3), np.uint8) for c in policy.spec.cameras}
chunk, stats = policy.step(images, 'pick up the red block')
print(chunk.shape, stats.layers_total)
"""


def test_an_export_runs_without_torch(export_dir):
    """The manifest alone builds the runner and the policy: no torch on the ONNX path."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        [str(root)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])}
    r = subprocess.run([sys.executable, '-c', NO_TORCH, str(export_dir)], capture_output=True,
                       text=True, timeout=120, env=env, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ['(8,', '7)', '8']


def test_segment_export_needs_torch_2_6_and_says_what_to_do(model, tmp_path, monkeypatch):
    """JetPack 6.1's torch wheel is 2.5.0, whose dynamo exporter cannot write torch.cond."""
    vla, dysl = model
    monkeypatch.setattr(torch, '__version__', '2.5.0a0+nv24.08')
    assert not onnx_export.segments_exportable()
    with pytest.raises(onnx_export.ExportError, match=r'torch >= 2\.6.*--granularity unit'):
        export_model(vla, dysl, tmp_path, GUIDANCE, progress=False)
