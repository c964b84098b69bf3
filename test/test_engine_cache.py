"""The TensorRT engine cache without TensorRT: the key (every build setting and device
property changes it), the engine files (a tampered or foreign engine is rebuilt or refused,
never returned) and which layers an fp16 engine keeps in fp32 (found in our real ONNX graphs,
per segment and per unit).

What needs TensorRT itself (building, deserialising, the parsed network) is in
test_tensorrt.py, which runs where TensorRT and a GPU are.
"""
import dataclasses
import io
import json
import shutil
import warnings

import onnx
import pytest
import torch

from dysl_ros.export.onnx_export import export_model
from dysl_ros.runtime.engine_build import (BUILD_RECIPE, BuildSettings, EngineError, LayerView,
                                           norm_layers)
from dysl_ros.runtime.engine_cache import DeviceInfo, EngineKey, EngineStore

from test_export import GUIDANCE, LAYOUT, build_model

ONNX_SHA = 'ab' * 32
TENSORRT = '10.3.0'
GiB = 1 << 30
# Every Orin reports the name 'Orin' and compute capability 8.7.
NANO = DeviceInfo('Orin', '8.7', 8, 7 * GiB)  # Orin Nano 8 GB
NX = DeviceInfo('Orin', '8.7', 8, 15 * GiB)  # Orin NX 16 GB: the Nano's SMs, more memory
AGX = DeviceInfo('Orin', '8.7', 16, 61 * GiB)  # AGX Orin 64 GB
FP16 = BuildSettings.for_precision('fp16')
KEY = EngineKey.make(ONNX_SHA, TENSORRT, NANO, FP16)
REFUSAL = 'Build the engines on this device first: python -m dysl_ros engines'
quiet = lambda msg: None  # noqa: E731


# -- the key -------------------------------------------------------------------------------

def _changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, tuple):
        return value + ('DIRECT_IO',)
    return value + 'x'


def test_every_key_field_changes_the_digest():
    """One field at a time, whatever it is: a new digest, and the difference names it."""
    digests = {KEY.digest()}
    for f in dataclasses.fields(EngineKey):
        other = dataclasses.replace(KEY, **{f.name: _changed(getattr(KEY, f.name))})
        digests.add(other.digest())
        diff = other.differences(KEY.fields())
        assert len(diff) == 1 and diff[0].startswith(f'{f.name}: '), (f.name, diff)
    assert len(digests) == 1 + len(dataclasses.fields(EngineKey))


def test_key_holds_every_build_setting_and_device_property():
    """What BuildSettings and DeviceInfo hold reaches the key, so the key cannot miss one."""
    fields = KEY.fields()
    for name, value in dataclasses.asdict(FP16).items():
        assert fields[name] == (list(value) if isinstance(value, tuple) else value), name
    assert (fields['gpu'], fields['compute_capability'], fields['multiprocessors'],
            fields['total_memory']) == dataclasses.astuple(NANO)
    assert fields['recipe'] == BUILD_RECIPE and fields['tensorrt'] == TENSORRT


def test_devices_settings_and_recipes_that_differ_get_their_own_engines():
    keys = {
        'nano': KEY,
        'nx': EngineKey.make(ONNX_SHA, TENSORRT, NX, FP16),
        'agx': EngineKey.make(ONNX_SHA, TENSORRT, AGX, FP16),
        'other gpu': EngineKey.make(ONNX_SHA, TENSORRT, dataclasses.replace(NANO, name='H200'),
                                    FP16),
        'compute 9.0': EngineKey.make(ONNX_SHA, TENSORRT,
                                      dataclasses.replace(NANO, compute_capability='9.0'), FP16),
        'fp32': EngineKey.make(ONNX_SHA, TENSORRT, NANO, BuildSettings.for_precision('fp32')),
        'workspace 1 GiB': EngineKey.make(ONNX_SHA, TENSORRT, NANO,
                                          BuildSettings.for_precision('fp16', workspace_gb=1)),
        'level 5': EngineKey.make(ONNX_SHA, TENSORRT, NANO,
                                  BuildSettings.for_precision('fp16', optimization_level=5)),
        'norms in fp16': EngineKey.make(ONNX_SHA, TENSORRT, NANO,
                                        dataclasses.replace(FP16, fp32_layers='')),
        'prefer, not obey': EngineKey.make(ONNX_SHA, TENSORRT, NANO, dataclasses.replace(
            FP16, set_flags=('FP16', 'PREFER_PRECISION_CONSTRAINTS'))),
        'TF32 cleared': EngineKey.make(ONNX_SHA, TENSORRT, NANO,
                                       dataclasses.replace(FP16, cleared_flags=('TF32',))),
        'older code': EngineKey.make(ONNX_SHA, TENSORRT, NANO, FP16, recipe=BUILD_RECIPE - 1),
        'TensorRT 10.7': EngineKey.make(ONNX_SHA, '10.7.0', NANO, FP16),
        'other onnx': EngineKey.make('cd' * 32, TENSORRT, NANO, FP16),
    }
    digests = {name: k.digest() for name, k in keys.items()}
    assert len(set(digests.values())) == len(keys), digests
    # the key is a pure function of its values: made again, it is the same
    assert EngineKey.make(ONNX_SHA, TENSORRT, NANO, BuildSettings.for_precision('fp16')
                          ).digest() == digests['nano']


def test_fp16_keeps_the_norms_in_fp32_and_fp32_means_fp32():
    assert FP16.set_flags == ('FP16', 'OBEY_PRECISION_CONSTRAINTS')
    assert FP16.fp32_layers == 'norms'
    fp32 = BuildSettings.for_precision('fp32')
    assert fp32.set_flags == () and fp32.cleared_flags == ('TF32',) and fp32.fp32_layers == ''
    for bad, message in (({'precision': 'int8'}, 'precision'),
                         ({'workspace_bytes': 0}, 'workspace'),
                         ({'optimization_level': 6}, 'optimization_level'),
                         ({'fp32_layers': 'all'}, 'fp32_layers')):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(FP16, **bad)


# -- the engine files ----------------------------------------------------------------------

class Builds:
    """Counts builds; each returns new plan bytes."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1
        return f'plan {self.count}'.encode()


def test_cached_engine_is_reused_and_a_tampered_one_is_refused_or_rebuilt(tmp_path):
    store, build = EngineStore(tmp_path), Builds()
    assert store.plan('layer_2', KEY, build, REFUSAL, quiet) == (b'plan 1', True)
    assert store.plan('layer_2', KEY, build, REFUSAL, quiet) == (b'plan 1', False)
    engine, meta = store.paths('layer_2', KEY)
    assert json.loads(meta.read_text())['key'] == KEY.fields()
    engine.write_bytes(b'plan X')  # same size, other bytes
    with pytest.raises(EngineError, match=r'layer_2\.[0-9a-f]{16}\.engine: corrupt .*'
                                          r'python -m dysl_ros engines'):
        store.plan('layer_2', KEY, None, REFUSAL, quiet)
    assert store.plan('layer_2', KEY, build, REFUSAL, quiet) == (b'plan 2', True)
    assert engine.read_bytes() == b'plan 2' and build.count == 2
    meta.write_text('[]')  # a sidecar that is no sidecar
    with pytest.raises(EngineError, match='not an engine sidecar'):
        store.plan('layer_2', KEY, None, REFUSAL, quiet)


def test_engine_of_another_orin_is_refused_or_rebuilt_never_loaded(tmp_path):
    """Engines built on an AGX Orin (16 SMs) copied to a Nano (8 SMs): same name, same
    compute capability, not used."""
    agx_key = EngineKey.make(ONNX_SHA, TENSORRT, AGX, FP16)
    EngineStore(tmp_path / 'agx').save('layer_2', agx_key, b'agx plan')
    shutil.copytree(tmp_path / 'agx', tmp_path / 'nano')
    nano = EngineStore(tmp_path / 'nano')
    with pytest.raises(EngineError, match=r"built for something else \(.*multiprocessors: 16 "
                                          r"cached, 8 here; total_memory: "):
        nano.plan('layer_2', KEY, None, REFUSAL, quiet)
    # renamed to this device's digest, its sidecar still gives it away
    for src, dst in zip(nano.paths('layer_2', agx_key), nano.paths('layer_2', KEY)):
        src.rename(dst)
    with pytest.raises(EngineError, match=r'key mismatch \(multiprocessors: 16 cached, 8 here'):
        nano.plan('layer_2', KEY, None, REFUSAL, quiet)
    build = Builds()
    assert nano.plan('layer_2', KEY, build, REFUSAL, quiet) == (b'plan 1', True)
    assert nano.lookup('layer_2', KEY) == (b'plan 1', '')


def test_engine_of_older_code_is_rebuilt(tmp_path):
    """A sidecar of the first recipe (ONNX, TensorRT, GPU name, compute, precision only)."""
    store = EngineStore(tmp_path)
    old = {'onnx_sha256': ONNX_SHA, 'tensorrt': TENSORRT, 'gpu': 'Orin',
           'compute_capability': '8.7', 'precision': 'fp16'}
    (tmp_path / 'layer_2.0123456789abcdef.engine').write_bytes(b'old plan')
    (tmp_path / 'layer_2.0123456789abcdef.json').write_text(json.dumps(
        {'key': old, 'unit': 'layer_2', 'engine_sha256': 'x'}))
    with pytest.raises(EngineError, match=rf'recipe: None cached, {BUILD_RECIPE} here'):
        store.plan('layer_2', KEY, None, REFUSAL, quiet)
    assert store.plan('layer_2', KEY, Builds(), REFUSAL, quiet) == (b'plan 1', True)


# -- layers kept in fp32 -------------------------------------------------------------------

# How TensorRT's ONNX parser turns these ONNX operators into layers (LayerType, operation).
AS_TENSORRT = {'Pow': ('ELEMENTWISE', 'POW'), 'Mul': ('ELEMENTWISE', 'PROD'),
               'Add': ('ELEMENTWISE', 'SUM'), 'Sub': ('ELEMENTWISE', 'SUB'),
               'Div': ('ELEMENTWISE', 'DIV'), 'ReduceMean': ('REDUCE', 'AVG'),
               'Sqrt': ('UNARY', 'SQRT'), 'Reciprocal': ('UNARY', 'RECIP'),
               'Constant': ('CONSTANT', '')}


def onnx_layers(graph: onnx.GraphProto) -> list[LayerView]:
    """Every node of `graph`, the nodes of its If branches included (TensorRT's parser puts
    the layers of both branches of an IIfConditional in the network), as LayerViews."""
    layers = []
    for n in graph.node:
        layers.append(LayerView(n.name, *AS_TENSORRT.get(n.op_type, (n.op_type.upper(), '')),
                                tuple(n.input), tuple(n.output)))
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                layers.extend(onnx_layers(a.g))
    return layers


def pinned(model: onnx.ModelProto) -> list[str]:
    layers = onnx_layers(model.graph)
    return [layers[i].name.rsplit('/', 1)[-1] for i in norm_layers(layers)]


def pinned_ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    layers = onnx_layers(model.graph)
    return [(layers[i].kind, layers[i].op) for i in norm_layers(layers)]


RMS_CHAIN = ['Pow', 'ReduceMean', 'Add', 'Sqrt', 'Div', 'Mul']  # x * 1/sqrt(mean(x^2) + eps)
# the same chain as the dynamo exporter writes it (segment graphs): x * reciprocal(sqrt(...))
RMS_OPS = [('ELEMENTWISE', 'POW'), ('REDUCE', 'AVG'), ('ELEMENTWISE', 'SUM'), ('UNARY', 'SQRT'),
           ('UNARY', 'RECIP'), ('ELEMENTWISE', 'PROD')]


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    """The test model's graphs per granularity: {'segment' | 'unit': {unit name: ONNX}}."""
    torch.set_num_threads(1)
    vla, dysl = build_model()
    out = {}
    for granularity in ('segment', 'unit'):
        manifest, _ = export_model(vla, dysl, tmp_path_factory.mktemp(granularity), GUIDANCE,
                                   granularity=granularity, check=False, progress=False)
        out[granularity] = {u.name: onnx.load(str(manifest.path(u))) for u in manifest.units}
    return out


def test_fp16_segment_engines_keep_each_rmsnorm_in_fp32(exports):
    """A segment graph holds, in the branches of its conditionals, one RMSNorm per adapter and
    per controller: exactly those chains are kept in fp32, nothing else."""
    graphs = exports['segment']
    for k, seg in enumerate(LAYOUT.segments):
        assert pinned_ops(graphs[f'segment_{k}']) == RMS_OPS * (2 * len(seg.dynamic)), k
    assert pinned(graphs['embed']) == [] and pinned(graphs['head']) == []


def test_fp16_unit_engines_keep_each_rmsnorm_in_fp32(exports):
    """Adapters and controllers hold one RMSNorm each: exactly its chain is kept in fp32 (not
    the controller's mean over tokens, not the adapter's projections)."""
    units = exports['unit']
    for j in LAYOUT.dynamic:
        for kind in ('adapter', 'controller'):
            assert pinned(units[f'{kind}_{j}']) == RMS_CHAIN, f'{kind}_{j}'
    # blocks and the head normalise with LayerNormalization (one TensorRT normalisation layer)
    for name in ['embed', 'head'] + [f'layer_{i}' for i in range(LAYOUT.num_layers)]:
        assert pinned(units[name]) == [], name


def _export(module, x, opset):
    f = io.BytesIO()
    with warnings.catch_warnings():  # the exporter the units are made with (dynamo=False)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        torch.onnx.export(module.eval(), (x,), f, opset_version=opset, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def test_decomposed_norms_and_other_spellings_are_found():
    x = torch.randn(1, 5, 16)
    # LayerNorm before opset 17: mean, x - mean, its square, mean, + eps, sqrt, divide
    assert pinned(_export(torch.nn.LayerNorm(16), x, 16)) == ['Pow', 'ReduceMean_1', 'Add',
                                                              'Sqrt', 'Div']

    class SquareRecip(torch.nn.Module):
        def forward(self, x):
            return x * torch.reciprocal(torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6))

    assert pinned(_export(SquareRecip(), x, 18)) == ['Mul', 'ReduceMean', 'Add', 'Sqrt',
                                                     'Reciprocal', 'Mul_1']

    class MeanSquare(torch.nn.Module):  # a mean of squares that normalises nothing
        def forward(self, x):
            return x.pow(2).mean(-1, keepdim=True).sqrt() + x

    class ScaledMeanSquare(torch.nn.Module):  # its scale multiplies a constant, not x
        def forward(self, x):
            return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * 2.0 + x

    class MeanOfScaled(torch.nn.Module):  # x * 3 is no square
        def forward(self, x):
            return x * torch.rsqrt((x * 3.0).mean(-1, keepdim=True) + 10.0)

    for module in (MeanSquare(), ScaledMeanSquare(), MeanOfScaled()):
        assert pinned(_export(module, x, 18)) == [], type(module).__name__
