"""The default VLA and the DySL wrapper: exactness, forced skipping, Llama blocks, save/load."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dysl_ros.layout import Layout
from dysl_ros.model import DySL, DySLConfig, VLA, VLAConfig, WordTokenizer
from dysl_ros.model.io import load_dysl, load_vla, read_tensors, save_dysl, save_vla
from dysl_ros.model.llama import llama_blocks
from dysl_ros.model.segment import GRAPH, SegmentGraph
from dysl_ros.skipping import HOST, NO_SKIP, UnitSegments, resume_full_depth, segment_pass

TINY = VLAConfig(n_layers=8, d_model=64, n_heads=4, image_size=32, patch_size=8)
LAYOUT = Layout(8, (0, 3, 6))


def _inputs(cfg: VLAConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, generator=g)
    tokens = torch.randint(0, 20, (1, cfg.max_instruction_tokens), generator=g)
    return images * 2 - 1, tokens


def _randomise_adapters(dysl: DySL) -> None:
    """Zero-initialised adapters are identities; make them do something."""
    with torch.no_grad():
        for a in dysl.adapters.values():
            a.up.weight.normal_(std=0.05)


@pytest.fixture
def vla():
    torch.manual_seed(0)
    return VLA(TINY).eval()


def test_no_skipping_equals_base_model_exactly(vla):
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    images, tokens = _inputs(TINY)
    with torch.inference_mode():
        ref = vla(images, tokens)
        x, trace = dysl.forward_guided(vla.embed(images, tokens))
        full, _ = dysl.forward_full(vla.embed(images, tokens))
        assert torch.equal(vla.head(x), ref)
        assert torch.equal(vla.head(full), ref)
    assert trace.layers_run == list(range(8)) and not trace.skipped and trace.probs == {}


def test_forced_skip_runs_static_layers_and_adapters(vla):
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    _randomise_adapters(dysl)
    images, tokens = _inputs(TINY)
    with torch.inference_mode():
        x0 = vla.embed(images, tokens)
        lowest = [s.static + 1 for s in LAYOUT.segments]
        out, trace = dysl.forward_guided(x0, lowest, force_skip=True)
        expected = x0
        for s in LAYOUT.segments:  # static layer, then the adapter of its first dynamic layer
            expected = dysl.adapters[str(s.static + 1)](vla.blocks[s.static](expected))
        assert trace.layers_run == [0, 3, 6]
        assert trace.skipped_at == [1, 4, 7]
        assert torch.equal(out, expected)
        # Forced layers (before the allow point) run, then the adapter jumps.
        out, trace = dysl.forward_guided(x0, [2, 5, 8], force_skip=True)
    assert trace.layers_run == [0, 1, 3, 4, 6, 7]
    assert trace.skipped_at == [2, 5, None]


class _Recording:
    """DySL's units, recording the layers run."""

    def __init__(self, dysl):
        self.dysl, self.ran = dysl, []

    def layer(self, i, x):
        self.ran.append(i)
        return self.dysl.layer(i, x)

    def adapter(self, j, x):
        return self.dysl.adapter(j, x)

    def controller(self, j, x):
        return self.dysl.controller(j, x)


def test_verification_resumes_full_depth_at_the_first_skipping_segment(vla):
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    _randomise_adapters(dysl)
    units = _Recording(dysl)
    with torch.inference_mode():
        x0 = vla.embed(*_inputs(TINY))
        full, _ = dysl.forward_full(x0)
        _, trace = dysl.forward_guided(x0, [3, 5, 8], force_skip=True)  # segment 0 runs on
        assert trace.skipped_at == [None, 5, None]
        with pytest.raises(ValueError, match='skipped nothing'):
            resume_full_depth(dysl.forward_guided(x0)[1], LAYOUT, UnitSegments(units, LAYOUT))
        out, n = resume_full_depth(trace, LAYOUT, UnitSegments(units, LAYOUT))
    assert units.ran == [3, 4, 5, 6, 7] and n == 5  # segment 0 ran before the first skip
    assert torch.equal(out, full)


def test_segment_module_decides_alike_on_the_host_and_as_a_graph(vla):
    """SegmentGraph with host control flow and with torch.cond (what the export traces), at
    every allow point: forced skips, full depth, and its controllers deciding."""
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    _randomise_adapters(dysl)
    asked = []
    units = _Recording(dysl)
    units.controller = lambda j, x: asked.append(j) or dysl.controller(j, x)
    with torch.inference_mode():
        x0 = vla.embed(*_inputs(TINY))
        _, hiddens = dysl.forward_full(x0, collect=True)
        for seg in LAYOUT.segments:
            host = SegmentGraph(vla.blocks, dysl, seg, HOST)
            graph = SegmentGraph(vla.blocks, dysl, seg, GRAPH)
            x = hiddens[seg.static]
            for allow in range(seg.static + 1, seg.end + 1):
                for threshold in (-1.0, 0.5, 2.0):
                    want, skipped = host(x, allow, threshold)
                    got, record = graph(x, torch.tensor([allow]), torch.tensor([threshold]))
                    assert int(record) == skipped, (seg, allow, threshold)
                    assert torch.allclose(got, want, atol=1e-6)
                    forced = threshold < 0 and allow < seg.end
                    assert skipped == (allow if forced else NO_SKIP if threshold > 1 else skipped)
                    # the host asks controllers from the allow point up to the skip only
                    asked.clear()
                    units.ran.clear()
                    _, again = segment_pass(seg, x, allow, threshold, units)
                    last = seg.end - 1 if again == NO_SKIP else again
                    assert again == skipped and asked == list(range(allow, last + 1))
                    assert units.ran == list(range(seg.static, last if again != NO_SKIP
                                                   else seg.end))


def test_soft_mix_is_adapter_at_p1_and_layers_at_p0(vla):
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT)
    _randomise_adapters(dysl)
    x = vla.embed(*_inputs(TINY)).detach()
    picks = [1, 4, 7]
    with torch.no_grad():
        for bias in (-30.0, 30.0):
            for c in dysl.controllers.values():
                c.out.bias.fill_(bias)
            mixed, p = dysl.forward_soft(x, picks)
            target, _ = dysl.forward_guided(x, picks, force_skip=bias > 0)
            torch.testing.assert_close(mixed, target, atol=1e-5, rtol=1e-5)
            assert p.shape == (1, 3)


def test_dysl_over_hugging_face_llama_layers():
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=64, attn_implementation='sdpa')
    model = transformers.LlamaModel(cfg).eval()
    layout = Layout(6, (0, 3))
    dysl = DySL(llama_blocks(model), 64, layout).eval()
    _randomise_adapters(dysl)
    x = torch.randn(1, 20, 64)
    with torch.inference_mode():
        ref = model(inputs_embeds=x).last_hidden_state
        out, trace = dysl.forward_guided(x)
        torch.testing.assert_close(model.norm(out), ref, atol=0, rtol=0)
        assert trace.layers_run == list(range(6))
        skipped, trace = dysl.forward_guided(x, [1, 4], force_skip=True)
        expected = dysl.adapters['4'](dysl.blocks[3](dysl.adapters['1'](dysl.blocks[0](x))))
    assert trace.layers_run == [0, 3]
    assert torch.equal(skipped, expected)


def test_llama_blocks_refuse_eager_attention():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, vocab_size=16,
                                   attn_implementation='eager')
    with pytest.raises(ValueError, match='eager'):
        llama_blocks(transformers.LlamaModel(cfg))


def test_save_load_round_trip(vla, tmp_path):
    vla.set_action_stats(np.arange(7, dtype=np.float32), np.full(7, 2.0, np.float32))
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT, DySLConfig(adapter_rank=8))
    _randomise_adapters(dysl)
    save_vla(vla, tmp_path)
    save_dysl(dysl, tmp_path, {'tau': 0.3, 'history': 5})
    vla2 = load_vla(tmp_path)
    dysl2, guidance = load_dysl(tmp_path, vla2)
    assert guidance == {'tau': 0.3, 'history': 5}
    assert dysl2.layout == LAYOUT and dysl2.cfg == dysl.cfg
    assert vla2.tokenizer.vocab == vla.tokenizer.vocab
    images, tokens = _inputs(TINY, seed=1)
    with torch.inference_mode():
        assert torch.equal(vla2(images, tokens), vla(images, tokens))
        a, _ = dysl.forward_guided(vla.embed(images, tokens), [1, 4, 7], force_skip=True)
        b, _ = dysl2.forward_guided(vla2.embed(images, tokens), [1, 4, 7], force_skip=True)
    assert torch.equal(a, b)
    assert torch.equal(vla2.unnormalise(torch.zeros(7)), torch.arange(7.0))
    # The DySL checkpoint carries only adapters and controllers.
    assert not any(k.startswith('blocks.') for k in read_tensors(tmp_path / 'dysl.safetensors'))


def test_half_stored_weights_load_as_float32_with_full_precision_action_stats(vla, tmp_path):
    mean = np.array([0.1234567, 1e-4, 3.3, -2.0, 0.5, 7.0, 1.0], np.float32)
    vla.set_action_stats(mean, np.full(7, 0.0123457, np.float32))
    save_vla(vla, tmp_path, half=True)
    stored = read_tensors(tmp_path / 'vla.safetensors')
    params = dict(vla.named_parameters())
    assert all(v.dtype == (torch.float16 if k in params else vla.state_dict()[k].dtype)
               for k, v in stored.items())
    vla2 = load_vla(tmp_path)
    assert all(p.dtype == torch.float32 for p in vla2.parameters())
    for k, v in vla2.state_dict().items():  # the parameters rounded once, the buffers exact
        if k in params:
            torch.testing.assert_close(v, params[k].detach().half().float(), atol=0, rtol=0)
        else:
            assert torch.equal(v, vla.state_dict()[k]), k
    images, tokens = _inputs(TINY, seed=1)
    with torch.inference_mode():
        torch.testing.assert_close(vla2(images, tokens), vla(images, tokens), atol=5e-3, rtol=0)


def test_load_names_the_bad_file(vla, tmp_path):
    save_vla(vla, tmp_path)
    (tmp_path / 'vla.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(ValueError, match='vla.safetensors'):
        load_vla(tmp_path)
    (tmp_path / 'vla.json').write_text('{broken')
    with pytest.raises(ValueError, match='vla.json'):
        load_vla(tmp_path)
    save_vla(vla, tmp_path)
    state = {k: v.contiguous() for k, v in vla.state_dict().items() if 'blocks.0.' not in k}
    save_file(state, str(tmp_path / 'vla.safetensors'))
    with pytest.raises(ValueError, match='do not fit'):
        load_vla(tmp_path)


@pytest.mark.parametrize('kwargs, name', [
    (dict(d_model=100, n_heads=6), 'd_model=100'),
    (dict(image_size=30, patch_size=8), 'image_size=30'),
    (dict(n_layers=1), 'n_layers=1'),
    (dict(cameras=('front', 'front')), 'cameras='),
    (dict(chunk_size=0), 'chunk_size=0'),
])
def test_bad_vla_config_names_the_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        VLAConfig(**kwargs)


@pytest.mark.parametrize('kwargs, name', [
    (dict(static_ratio=1.5), 'static_ratio=1.5'),
    (dict(skip_threshold=1.0), 'skip_threshold=1.0'),
    (dict(adapter_rank=0), 'adapter_rank=0'),
])
def test_bad_dysl_config_names_the_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DySLConfig(**kwargs)


def test_layout_rules():
    with pytest.raises(ValueError, match='layer 0'):
        Layout(8, (2, 5))
    with pytest.raises(ValueError, match='static='):
        Layout(8, (0, 8))
    assert [(s.static, s.end) for s in LAYOUT.segments] == [(0, 3), (3, 6), (6, 8)]
    assert LAYOUT.dynamic == (1, 2, 4, 5, 7)
    assert Layout.from_dict(json.loads(json.dumps(LAYOUT.to_dict()))) == LAYOUT
    with pytest.raises(ValueError, match='unknown keys'):
        VLAConfig.from_dict({'d_model': 64, 'width': 3})


def test_tokenizer_handles_unknown_long_and_empty_text():
    tok = WordTokenizer.from_words(['pick up the red block'], max_tokens=4)
    ids = tok.encode('Pick up the PURPLE block, please!')
    assert ids.tolist() == [tok.vocab.index('pick'), tok.vocab.index('up'),
                            tok.vocab.index('the'), 1]
    assert tok.unknown_words('pick purple') == ['purple']
    assert tok.encode('').tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        WordTokenizer(['a', 'b'], 4)


def test_default_parts_stay_within_2_percent_of_the_backbone():
    """DySL's adapters and controllers on the default model's shape (d = 128, 24 layers, the
    shipped spread layout): at most 2% of the blocks' parameters (issue 16)."""
    big = VLA(VLAConfig())
    dysl = DySL(big.blocks, big.cfg.d_model, Layout(24, (0, 5, 11, 18, 23)))
    assert dysl.num_trainable() == 85_671
    assert 0.015 < dysl.parts_fraction() <= 0.02
