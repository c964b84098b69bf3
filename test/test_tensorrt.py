"""TensorRT engines and runner against PyTorch: segment engines at every allow point, guided
steps with the same decisions (one launch per segment, one read per step), the engine cache,
and a per-unit export.

Runs only where `import tensorrt` works and a CUDA GPU is visible (a Jetson, a GPU CI
runner); skipped otherwise, never faked.
"""
import json
import shutil

import numpy as np
import pytest
import torch

trt = pytest.importorskip('tensorrt')
if not torch.cuda.is_available():
    pytest.skip('TensorRT tests need a CUDA GPU', allow_module_level=True)

from dysl_ros.bench.trace import DecisionTrace, replay_policy  # noqa: E402
from dysl_ros.export.onnx_export import (compare_segments, compare_units,  # noqa: E402
                                         export_model)
from dysl_ros.runtime.engine_build import (PRECISIONS, BuildSettings, EngineError,  # noqa: E402
                                           apply_settings, layer_views, norm_layers)
from dysl_ros.runtime.loading import load_model  # noqa: E402
from dysl_ros.runtime.policy import GuidedPolicy, ModelSpec  # noqa: E402
from dysl_ros.runtime.tensorrt_runner import TensorRTRunner, scratch_size  # noqa: E402
from dysl_ros.runtime.torch_runner import TorchRunner  # noqa: E402
from dysl_ros.skipping import NO_SKIP  # noqa: E402

from test_export import (GUIDANCE, INSTRUCTION, LAYOUT, CountingSegments,  # noqa: E402
                         _assert_close, _stats_key, build_model, observations)

quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope='module')
def model():
    return build_model()


@pytest.fixture(scope='module')
def exported(model, tmp_path_factory):
    """The per-segment export (the default)."""
    vla, dysl = model
    manifest, _ = export_model(vla, dysl, tmp_path_factory.mktemp('export'), GUIDANCE,
                               progress=False)
    assert manifest.granularity == 'segment'
    return manifest


@pytest.fixture(scope='module')
def unit_export(model, tmp_path_factory):
    vla, dysl = model
    manifest, _ = export_model(vla, dysl, tmp_path_factory.mktemp('units'), GUIDANCE,
                               granularity='unit', progress=False)
    return manifest


@pytest.fixture(scope='module')
def engines32(tmp_path_factory):
    return tmp_path_factory.mktemp('engines32')


@pytest.fixture(scope='module')
def fp32_runner(exported, engines32):
    runner = TensorRTRunner(exported, cache_dir=engines32, precision='fp32', log=quiet)
    assert runner.cache.builds == len(exported.units) and runner.cache.timing_cache.is_file()
    assert runner.runs_segments and runner.layout == LAYOUT
    return runner


def converters(runner):
    """to_hidden / to_numpy for compare_segments and compare_units: host arrays to device
    tensors and back, synchronised with the runner's stream."""
    def to_hidden(a):
        t = torch.from_numpy(np.ascontiguousarray(a)).cuda()
        torch.cuda.synchronize()  # the runner works on a stream of its own
        return t

    def to_numpy(t):
        runner.synchronize()
        return t.float().cpu().numpy()

    return to_hidden, to_numpy


def sample(manifest):
    return manifest.spec().prepare(observations(1, seed=5)[0], INSTRUCTION)


def test_every_segment_matches_pytorch_at_every_allow_point(model, exported, fp32_runner):
    vla, dysl = model
    checks = compare_segments(vla, dysl, fp32_runner, *sample(exported),
                              *converters(fp32_runner))
    cases = {f'segment_{k} {case}' for k, seg in enumerate(LAYOUT.segments)
             for case in [f'skip@{j}' for j in seg.dynamic] + ['full', 'decide']}
    assert {c.unit for c in checks} == {'embed', 'head'} | cases
    bad = [c.describe() for c in checks if not c.rel <= 1e-3]
    assert not bad, f'fp32 segment engines beyond relative error 1e-3: {bad}'
    with pytest.raises(RuntimeError, match="segment export has no graph 'layer_0'"):
        fp32_runner.layer(0, fp32_runner.embed(*sample(exported)))


def test_segments_stay_on_the_device_until_one_read(exported, fp32_runner):
    """Launching a segment queues work only (torch's sync debug mode raises on any
    synchronising call), its allow point and threshold are device tensors made once per
    value, and its skip position stays on the device until read_skips reads a whole pass."""
    r = fp32_runner
    x = r.embed(*sample(exported))
    r.synchronize()
    scalars = dict(r._scalars)  # the warm-up ran these values already
    records, expected = [], []
    torch.cuda.set_sync_debug_mode('error')
    try:
        for k, seg in enumerate(LAYOUT.segments):
            for j in seg.dynamic:  # forced: skips at its allow point
                records.append(r.segment(k, x, j, -1.0)[1])
            x, skipped = r.segment(k, x, seg.end, exported.skip_threshold)  # full depth
            records.append(skipped)
            expected += list(seg.dynamic) + [NO_SKIP]
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert all(t.is_cuda and t.dtype == torch.int64 and t.shape == (1,) for t in records)
    assert r._scalars.keys() == scalars.keys()
    assert all(r._scalars[key] is t for key, t in scalars.items())
    assert r.read_skips(records) == expected


def test_guided_steps_decide_as_pytorch_with_one_read_per_step(model, exported, fp32_runner):
    vla, dysl = model
    ref = GuidedPolicy(TorchRunner(vla, dysl), ModelSpec.from_model(vla, LAYOUT), GUIDANCE)
    counting = CountingSegments(fp32_runner)
    policy = GuidedPolicy(counting, exported.spec(), exported.guidance_config())
    n = len(LAYOUT.segments)
    keys = []
    for t, images in enumerate(observations(12)):
        counting.calls.clear()
        chunk_ref, s_ref = ref.step(images, INSTRUCTION)
        chunk, s = policy.step(images, INSTRUCTION)
        assert _stats_key(s) == _stats_key(s_ref), f'step {t}: decisions differ'
        _assert_close(chunk, chunk_ref, f'step {t} chunk', rtol=1e-3)
        assert set(s.latency_ms) == set(s_ref.latency_ms)
        # embed, one launch per segment, one read, head; a verification re-launches the
        # segments from the first that skipped, and the head
        first = next((k for k, j in enumerate(s.skipped_at) if j is not None), n)
        expected = ([('embed', None)] + [('segment', k) for k in range(n)] + [('read', n)]
                    + [('head', None)])
        if s.verified:
            expected += [('segment', k) for k in range(first, n)] + [('head', None)]
        assert counting.calls == expected, f'step {t}: {counting.calls}'
        keys.append(_stats_key(s))
    # the steps exercise the guidance: several skip patterns, and verification
    assert len({tuple(k[1]) for k in keys}) >= 3 and any(k[2] for k in keys), keys


def test_fp16_engines_give_the_same_chunks_for_the_same_decisions(model, exported, tmp_path):
    vla, dysl = model
    ref = GuidedPolicy(TorchRunner(vla, dysl), ModelSpec.from_model(vla, LAYOUT), GUIDANCE)
    obs = observations(10)
    stats = [ref.step(images, INSTRUCTION) for images in obs]
    trace = DecisionTrace.from_stats(LAYOUT, [s for _, s in stats])
    runner = TensorRTRunner(exported, cache_dir=tmp_path, log=quiet)  # fp16
    assert runner.cache.precision == 'fp16'
    policy = replay_policy(trace, runner, exported.spec(), exported.guidance_config())
    for t, (images, (chunk_ref, s_ref)) in enumerate(zip(obs, stats)):
        chunk, s = policy.step(images, INSTRUCTION)
        assert s.skipped_at == s_ref.skipped_at
        _assert_close(chunk, chunk_ref, f'step {t} fp16 chunk', rtol=3e-2)


def test_unit_engines_match_pytorch_and_decide_alike(model, unit_export, tmp_path):
    """A per-unit export (debugging): every unit engine against PyTorch, guided steps walked
    unit by unit with the decisions of PyTorch; no segment graph to launch."""
    vla, dysl = model
    runner = TensorRTRunner(unit_export, cache_dir=tmp_path, precision='fp32', log=quiet)
    assert not runner.runs_segments
    checks = compare_units(vla, dysl, runner, *sample(unit_export), *converters(runner))
    bad = [c.describe() for c in checks if not c.rel <= 1e-3]
    assert not bad, f'fp32 unit engines beyond relative error 1e-3: {bad}'
    ref = GuidedPolicy(TorchRunner(vla, dysl), ModelSpec.from_model(vla, LAYOUT), GUIDANCE)
    policy = GuidedPolicy(runner, unit_export.spec(), unit_export.guidance_config())
    for t, images in enumerate(observations(6)):
        chunk_ref, s_ref = ref.step(images, INSTRUCTION)
        chunk, s = policy.step(images, INSTRUCTION)
        assert _stats_key(s) == _stats_key(s_ref), f'step {t}: decisions differ'
        _assert_close(chunk, chunk_ref, f'step {t} chunk', rtol=1e-3)
    with pytest.raises(RuntimeError, match="unit export has no graph 'segment_0'"):
        runner.segment(0, runner.embed(*sample(unit_export)), 1, 0.5)


def test_engine_cache_is_reused_rebuilt_or_refused(exported, fp32_runner, engines32, tmp_path):
    tmp_path = tmp_path / 'engines'
    shutil.copytree(engines32, tmp_path)  # engines built by fp32_runner
    again = TensorRTRunner(exported, cache_dir=tmp_path, precision='fp32', log=quiet)
    assert again.cache.builds == 0
    # a corrupt engine is refused without building, rebuilt with
    engine = sorted(tmp_path.glob('segment_1.*.engine'))[0]
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r'segment_1\..*corrupt.*python -m dysl_ros engines'):
        TensorRTRunner(exported, cache_dir=tmp_path, precision='fp32', build=False, log=quiet)
    rebuilt = TensorRTRunner(exported, cache_dir=tmp_path, precision='fp32', log=quiet)
    assert rebuilt.cache.builds == 1
    # an engine recorded for another TensorRT version, or another Orin, is not used
    meta = engine.with_suffix('.json')
    d = json.loads(meta.read_text())
    d['key']['tensorrt'] = '9.0.0'
    meta.write_text(json.dumps(d))
    with pytest.raises(EngineError, match=r"tensorrt: '9.0.0' cached"):
        TensorRTRunner(exported, cache_dir=tmp_path, precision='fp32', build=False, log=quiet)
    d = json.loads(meta.read_text())
    d['key']['tensorrt'] = trt.__version__
    d['key']['multiprocessors'] += 8
    meta.write_text(json.dumps(d))
    with pytest.raises(EngineError, match=r"multiprocessors: \d+ cached"):
        TensorRTRunner(exported, cache_dir=tmp_path, precision='fp32', build=False, log=quiet)
    # another precision has no engines yet: refused by name, never a crash at inference
    with pytest.raises(EngineError, match=r"embed .*precision: 'fp32' cached, 'fp16' here"):
        TensorRTRunner(exported, cache_dir=tmp_path, precision='fp16', build=False, log=quiet)


def test_factory_builds_a_tensorrt_policy(exported, fp32_runner, engines32):
    loaded = load_model('tensorrt', exported.directory, engine_cache=engines32,
                        precision='fp32', build_engines=False, log=quiet)
    assert loaded.runner.name == 'tensorrt' and loaded.guidance == GUIDANCE
    assert loaded.runner.runs_segments
    chunk, s = GuidedPolicy(loaded.runner, loaded.spec, loaded.guidance).step(
        observations(1)[0], INSTRUCTION)
    assert chunk.shape == (8, 7) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    assert isinstance(loaded.spec, ModelSpec)


def test_contexts_share_one_scratch_buffer(fp32_runner):
    """One scratch buffer, sized for the engine that needs most, serves every context."""
    sizes = [scratch_size(b.engine) for b in fp32_runner._units.values()]
    assert fp32_runner.scratch_bytes == max(max(sizes), 1)


def test_builder_config_holds_the_settings_of_the_key():
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    for precision in PRECISIONS:
        settings = BuildSettings.for_precision(precision, workspace_gb=1.5, optimization_level=2)
        config = builder.create_builder_config()
        apply_settings(trt, config, settings)
        assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == \
            settings.workspace_bytes
        assert config.builder_optimization_level == 2
        assert all(config.get_flag(getattr(trt.BuilderFlag, f)) for f in settings.set_flags)
        assert not any(config.get_flag(getattr(trt.BuilderFlag, f))
                       for f in settings.cleared_flags)


def test_parsed_graphs_show_their_rmsnorm_to_the_fp32_pinning(exported, unit_export):
    """In TensorRT's own parse of each graph, norm_layers finds the RMSNorm chain (6 layers,
    as in the ONNX graph: test_engine_cache) of each adapter and controller: one per unit,
    two per dynamic layer of a segment (in the branches of its conditionals), none
    elsewhere."""
    logger = trt.Logger(trt.Logger.ERROR)
    for manifest in (exported, unit_export):
        for unit in manifest.units:
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            assert parser.parse(manifest.read(unit)), unit.name
            found = norm_layers(layer_views(trt, network))
            if unit.kind == 'segment':
                static, end = unit.layers
                want = 12 * (end - static - 1)
            else:
                want = 6 if unit.kind in ('adapter', 'controller') else 0
            assert len(found) == want, unit.name
