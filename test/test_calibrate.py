"""Stage 0: layer similarity and the choice of static layers."""
import numpy as np
import pytest
import torch
from torch import nn

from dysl_ros.model import VLA, VLAConfig
from dysl_ros.train.calibrate import layer_similarity, num_static, select_static

D = 32


class Planted(nn.Module):
    """x + eps * tanh(W x) (barely changes x), or a random linear map (changes it strongly)."""

    def __init__(self, strong: bool, eps: float = 0.05):
        super().__init__()
        self.strong, self.eps = strong, eps
        self.w = nn.Linear(D, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w(x) if self.strong else x + self.eps * torch.tanh(self.w(x))


def planted_stack(strong: set[int], n: int = 10) -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList(Planted(i in strong) for i in range(n))


def random_inputs(n: int = 4, shape: tuple = (3, 7, D)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_planted_informative_layers_are_static():
    blocks = planted_stack({3, 7})
    s = layer_similarity(blocks, random_inputs(), progress=False)
    assert s.shape == (10,)
    assert set(np.argsort(s)[:2]) == {3, 7}, f'similarity {np.round(s, 3)}'
    assert s[[0, 1, 2, 4, 5, 6, 8, 9]].min() > 0.99 and s[[3, 7]].max() < 0.5
    # ceil(0.2 * 10) = 2 lowest, plus layer 0 (RECON)
    assert select_static(s, 0.2, rule='lowest').static == (0, 3, 7)
    # two windows, [0, 5) and [5, 10): layer 0, then the lowest of the second
    assert select_static(s, 0.2).static == (0, 7)


def test_spread_rule_puts_static_layers_along_the_depth():
    """The default model's similarity: every late layer barely changes the hidden state, so
    the plain rule stacks the static layers at the bottom (one segment holds every dynamic
    layer); the spread rule picks the lowest in each fifth of the depth."""
    s = np.array([0.287, 0.732, 0.896, 0.946, 0.976, 0.978, 0.984, 0.988, 0.994, 0.993,
                  0.995, 0.9949, 0.997, 0.996, 0.997, 0.998, 0.997, 0.998, 0.995, 0.997,
                  0.9991, 0.9992, 0.9993, 0.9989])
    assert select_static(s, 0.2, rule='lowest').static == (0, 1, 2, 3, 4)
    layout = select_static(s, 0.2)
    assert layout.static == (0, 5, 11, 18, 23)  # windows start at 0, 5, 10, 14, 19
    assert max(seg.end - seg.static for seg in layout.segments) <= 2 * 5
    # a window's pick keeps one dynamic layer after the previous pick: 18 is the lowest of
    # [14, 19), so [19, 24) picks from 20 on
    assert all(seg.dynamic for seg in layout.segments[:-1])
    with pytest.raises(ValueError, match="rule='middle'"):
        select_static(s, 0.2, rule='middle')


def test_similarity_is_the_mean_cosine_over_samples_and_tokens():
    blocks = planted_stack({1}, n=2)
    xs = random_inputs(n=2)
    s = layer_similarity(blocks, xs, progress=False)
    with torch.no_grad():
        x = torch.cat(xs)  # (6, 7, D)
        y0 = blocks[0](x)
        y1 = blocks[1](y0)
        expected = [torch.cosine_similarity(x, y0, dim=-1).mean(),
                    torch.cosine_similarity(y0, y1, dim=-1).mean()]
    np.testing.assert_allclose(s, [float(e) for e in expected], atol=1e-6)


def test_similarity_over_vla_blocks():
    torch.manual_seed(0)
    cfg = VLAConfig(n_layers=4, d_model=32, n_heads=4, image_size=16, patch_size=8)
    vla = VLA(cfg).train()
    xs = [torch.randn(2, cfg.num_tokens, cfg.d_model) for _ in range(2)]
    s = layer_similarity(vla.blocks, xs, progress=False)
    assert s.shape == (4,) and np.all(s <= 1.0 + 1e-6) and np.all(s >= -1.0 - 1e-6)
    assert all(b.training for b in vla.blocks), 'the blocks\' mode must be restored'


def test_first_layer_rule():
    s = np.array([0.9, 0.1, 0.95, 0.2, 0.99])
    lowest = dict(rule='lowest')
    assert select_static(s, 0.4, **lowest).static == (0, 1, 3)  # layer 0 beyond the ratio
    s0 = np.array([0.1, 0.9, 0.95, 0.2, 0.99])
    assert select_static(s0, 0.4, **lowest).static == (0, 3)  # 0 already among the lowest
    assert select_static(s0, 0.4, first_layer_static=False, **lowest).static == (0, 3)
    with pytest.raises(ValueError, match='first_layer_static=False'):
        select_static(s, 0.4, first_layer_static=False, **lowest)
    # spread, windows [0, 2) and [2, 5): layer 0 (the first window's), then 3
    assert select_static(s, 0.4).static == (0, 3)
    assert select_static(s0, 0.4, first_layer_static=False).static == (0, 3)


@pytest.mark.parametrize('n, ratio, count', [(10, 0.3, 3), (10, 0.2, 2), (24, 0.2, 5),
                                             (32, 0.2, 7), (8, 0.0, 0), (5, 1.0, 5),
                                             (7, 0.1, 1)])
def test_ratio_rounds_up(n, ratio, count):
    assert num_static(n, ratio) == count
    s = np.linspace(1.0, 0.0, n)  # later layers change their input more
    layout = select_static(s, ratio, rule='lowest')
    expected = set(range(n - count, n)) | {0}
    assert set(layout.static) == expected, f'n={n} ratio={ratio}: {layout.static}'


def test_bad_values_raise():
    with pytest.raises(ValueError, match='ratio=1.5'):
        select_static(np.ones(4), 1.5)
    with pytest.raises(ValueError, match='non-finite'):
        select_static(np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match='no hidden states'):
        layer_similarity(planted_stack(set(), n=2), [], progress=False)
    with pytest.raises(ValueError, match=r'\(B, T, C\)'):
        layer_similarity(planted_stack(set(), n=2), [torch.randn(3, D)], progress=False)


def test_update_guidance_keeps_the_parts_and_refuses_another_layout(tmp_path):
    from dysl_ros.layout import Layout
    from dysl_ros.model import DySL, VLA, VLAConfig
    from dysl_ros.model.io import load_dysl, save_dysl, save_vla, update_guidance
    vla = VLA(VLAConfig(n_layers=4, d_model=32, n_heads=2, image_size=32, patch_size=8))
    layout = Layout(4, (0, 2))
    save_vla(vla, tmp_path)
    save_dysl(DySL(vla.blocks, 32, layout), tmp_path, {'tau': 0.1})
    update_guidance(tmp_path, {'tau': 0.3, 'executed_actions': 4}, layout)
    assert load_dysl(tmp_path, vla)[1] == {'tau': 0.3, 'executed_actions': 4}
    with pytest.raises(ValueError, match='distil again'):
        update_guidance(tmp_path, {'tau': 0.3}, Layout(4, (0, 1)))
