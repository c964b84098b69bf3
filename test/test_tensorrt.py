"""TensorRT engines and runner against ONNX Runtime: units, guided steps, the engine cache.

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
from dysl_ros.export.onnx_export import compare_units, export_model  # noqa: E402
from dysl_ros.runtime.engine_build import (PRECISIONS, BuildSettings, EngineError,  # noqa: E402
                                           apply_settings, layer_views, norm_layers)
from dysl_ros.runtime.loading import PolicyOptions, load_model, open_policy  # noqa: E402
from dysl_ros.runtime.policy import GuidedPolicy, ModelSpec  # noqa: E402
from dysl_ros.runtime.tensorrt_runner import TensorRTRunner, scratch_size  # noqa: E402

from test_export import (GUIDANCE, INSTRUCTION, LAYOUT, _assert_close, _stats_key,  # noqa: E402
                         build_model, observations)

# The reference runs on the CPU, whatever onnxruntime build is installed (onnxruntime-gpu
# would otherwise pick CUDA, and compare TensorRT with another GPU runtime).
CPU = ['CPUExecutionProvider']


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    vla, dysl = build_model()
    out = tmp_path_factory.mktemp('export')
    manifest, _ = export_model(vla, dysl, out, GUIDANCE, progress=False)
    return vla, dysl, manifest


@pytest.fixture(scope='module')
def engines32(tmp_path_factory):
    return tmp_path_factory.mktemp('engines32')


@pytest.fixture(scope='module')
def fp32_runner(exported, engines32):
    _, _, manifest = exported
    runner = TensorRTRunner(manifest, cache_dir=engines32, precision='fp32', log=lambda m: None)
    assert runner.cache.builds == len(manifest.units) and runner.cache.timing_cache.is_file()
    return runner


def test_every_unit_matches_pytorch(exported, fp32_runner):
    vla, dysl, manifest = exported
    spec = manifest.spec()
    pixels, tokens = spec.prepare(observations(1, seed=5)[0], INSTRUCTION)
    def to_hidden(a):
        t = torch.from_numpy(a).cuda()
        torch.cuda.synchronize()  # the runner works on a stream of its own
        return t

    def to_numpy(t):
        fp32_runner.synchronize()
        return t.cpu().numpy()

    checks = compare_units(vla, dysl, fp32_runner, pixels, tokens, to_hidden, to_numpy)
    bad = [c.describe() for c in checks if not c.rel <= 1e-3]
    assert not bad, f'fp32 engines beyond relative error 1e-3: {bad}'


def test_guided_steps_match_onnxruntime(exported, fp32_runner):
    _, _, manifest = exported
    ref = open_policy(manifest.directory, 'onnxruntime',
                      options=PolicyOptions(providers=tuple(CPU)))
    policy = GuidedPolicy(fp32_runner, manifest.spec(), manifest.guidance_config())
    for t, images in enumerate(observations(12)):
        chunk_ref, s_ref = ref.step(images, INSTRUCTION)
        chunk, s = policy.step(images, INSTRUCTION)
        assert _stats_key(s) == _stats_key(s_ref), f'step {t}: decisions differ'
        _assert_close(chunk, chunk_ref, f'step {t} chunk', rtol=1e-3)
        assert set(s.latency_ms) == set(s_ref.latency_ms)


def test_fp16_engines_give_the_same_chunks_for_the_same_decisions(exported, tmp_path):
    _, _, manifest = exported
    ref = open_policy(manifest.directory, 'onnxruntime',
                      options=PolicyOptions(providers=tuple(CPU)))
    obs = observations(10)
    stats = [ref.step(images, INSTRUCTION) for images in obs]
    trace = DecisionTrace.from_stats(LAYOUT, [s for _, s in stats])
    runner = TensorRTRunner(manifest, cache_dir=tmp_path, log=lambda msg: None)  # fp16
    assert runner.cache.precision == 'fp16'
    policy = replay_policy(trace, runner, manifest.spec(), manifest.guidance_config())
    for t, (images, (chunk_ref, s_ref)) in enumerate(zip(obs, stats)):
        chunk, s = policy.step(images, INSTRUCTION)
        assert s.skipped_at == s_ref.skipped_at
        _assert_close(chunk, chunk_ref, f'step {t} fp16 chunk', rtol=3e-2)


def test_engine_cache_is_reused_rebuilt_or_refused(exported, fp32_runner, engines32, tmp_path):
    _, _, manifest = exported
    quiet = lambda msg: None  # noqa: E731
    tmp_path = tmp_path / 'engines'
    shutil.copytree(engines32, tmp_path)  # engines built by fp32_runner
    again = TensorRTRunner(manifest, cache_dir=tmp_path, precision='fp32', log=quiet)
    assert again.cache.builds == 0
    # a corrupt engine is refused without building, rebuilt with
    engine = sorted(tmp_path.glob('layer_2.*.engine'))[0]
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r'layer_2\..*corrupt.*python -m dysl_ros engines'):
        TensorRTRunner(manifest, cache_dir=tmp_path, precision='fp32', build=False, log=quiet)
    rebuilt = TensorRTRunner(manifest, cache_dir=tmp_path, precision='fp32', log=quiet)
    assert rebuilt.cache.builds == 1
    # an engine recorded for another TensorRT version, or another Orin, is not used
    meta = engine.with_suffix('.json')
    d = json.loads(meta.read_text())
    d['key']['tensorrt'] = '9.0.0'
    meta.write_text(json.dumps(d))
    with pytest.raises(EngineError, match=r"tensorrt: '9.0.0' cached"):
        TensorRTRunner(manifest, cache_dir=tmp_path, precision='fp32', build=False, log=quiet)
    d = json.loads(meta.read_text())
    d['key']['tensorrt'] = trt.__version__
    d['key']['multiprocessors'] += 8
    meta.write_text(json.dumps(d))
    with pytest.raises(EngineError, match=r"multiprocessors: \d+ cached"):
        TensorRTRunner(manifest, cache_dir=tmp_path, precision='fp32', build=False, log=quiet)
    # another precision has no engines yet: refused by name, never a crash at inference
    with pytest.raises(EngineError, match=r"embed .*precision: 'fp32' cached, 'fp16' here"):
        TensorRTRunner(manifest, cache_dir=tmp_path, precision='fp16', build=False, log=quiet)


def test_factory_builds_a_tensorrt_policy(exported, fp32_runner, engines32):
    _, _, manifest = exported
    loaded = load_model('tensorrt', manifest.directory, engine_cache=engines32,
                        precision='fp32', build_engines=False, log=lambda msg: None)
    assert loaded.runner.name == 'tensorrt' and loaded.guidance == GUIDANCE
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


def test_parsed_units_show_their_rmsnorm_to_the_fp32_pinning(exported):
    """In TensorRT's own parse of each unit, norm_layers finds each adapter's and
    controller's RMSNorm chain (6 layers, as in the ONNX graph: test_engine_cache) and
    nothing in the other units."""
    _, _, manifest = exported
    logger = trt.Logger(trt.Logger.ERROR)
    for unit in manifest.units:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse(manifest.read(unit)), unit.name
        found = norm_layers(layer_views(trt, network))
        assert len(found) == (6 if unit.kind in ('adapter', 'controller') else 0), unit.name
