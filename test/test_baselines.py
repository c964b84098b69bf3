"""Baselines and ablations behind one Policy interface (dysl-method.md section 4)."""
import dataclasses

import numpy as np
import pytest
import torch

from dysl_ros.datasets import Episode
from dysl_ros.guidance import GuidanceConfig, calibrate_tau
from dysl_ros.layout import Layout
from dysl_ros.model import DySL, VLA, VLAConfig
from dysl_ros.model.baselines import DeeR, DeeRConfig, FlexiDepth, StaticDepth, save_baseline
from dysl_ros.model.io import load_dysl, read_json, save_dysl, save_vla
from dysl_ros.runtime.methods import METHODS, BaselinePolicy, coin_policy, make_policy
from dysl_ros.runtime.policy import StepStats
from dysl_ros.train.baselines import (BaselineTrainConfig, deer_shares, exit_differences,
                                      mean_layers_run, random_skip_expected_layers,
                                      save_random_skip, solve_deer_thresholds,
                                      solve_random_skip_q, train_all_baselines,
                                      train_deer, train_static_depth)
from dysl_ros.train.distill import DistillConfig

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TINY = VLAConfig(n_layers=8, d_model=64, n_heads=4, image_size=32, patch_size=8)
LAYOUT = Layout(8, (0, 4))
INSTRUCTION = 'pick up the red block'


def _frames(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{c: rng.integers(0, 256, (32, 32, 3), np.uint8) for c in TINY.cameras}
            for _ in range(n)]


def _episodes(n: int, length: int, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [Episode(images={c: rng.integers(0, 256, (length, 32, 32, 3), np.uint8)
                            for c in TINY.cameras},
                    actions=rng.normal(size=(length, TINY.action_dim)).astype(np.float32),
                    phases=np.array(['move'] * length), instruction=INSTRUCTION,
                    task='pick_red', seed=i, success=True) for i in range(n)]


def _run(policy, frames):
    policy.reset()
    return [policy.step(f, INSTRUCTION) for f in frames]


@pytest.fixture(scope='module')
def vla():
    torch.manual_seed(0)
    return VLA(TINY).eval()


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory, vla):
    """A tiny model: VLA, DySL parts whose controllers always want to skip, a guidance tau
    calibrated on the model's own chunks, and every baseline made by train_all_baselines."""
    d = tmp_path_factory.mktemp('model')
    save_vla(vla, d)
    dysl = DySL(vla.blocks, TINY.d_model, LAYOUT).eval()
    with torch.no_grad():
        for c in dysl.controllers.values():
            c.out.bias.fill_(10.0)  # p ~ 1: skip wherever allowed
        for a in dysl.adapters.values():
            a.up.weight.normal_(std=0.05)
    full = make_policy('full', d, vla=vla)
    chunks = np.concatenate([c for c, _ in _run(full, _frames(40, seed=1))])  # (40 H, D)
    guidance = GuidanceConfig(tau=calibrate_tau([chunks]), chunk_policy='last',
                              release_margin=1.0)
    save_dysl(dysl, d, dataclasses.asdict(guidance))
    summary = train_all_baselines(
        d, _episodes(2, 6), cfg=BaselineTrainConfig(steps=3, eval_samples=4, progress=False),
        distill_cfg=DistillConfig(stage1_steps=2, stage2_steps=2, eval_batches=1,
                                  eval_samples=2, progress=False),
        batch_size=4)
    return d, summary


def test_every_method_steps_with_the_same_stats(model_dir, vla):
    d, _ = model_dir
    frames = _frames(3)
    for name in METHODS:
        policy = make_policy(name, d, vla=vla)
        assert policy.spec.chunk_size == TINY.chunk_size
        for chunk, stats in _run(policy, frames):
            assert chunk.shape == (TINY.chunk_size, TINY.action_dim), name
            assert chunk.dtype == np.float32 and np.isfinite(chunk).all(), name
            assert isinstance(stats, StepStats), name
            assert stats.layers_total == TINY.n_layers, name
            assert 0 <= stats.layers_run <= 2 * TINY.n_layers, name
            assert stats.layer_ids == sorted(set(stats.layer_ids)), name
            assert isinstance(stats.skipped_at, list) and isinstance(stats.verified, bool)
            assert stats.latency_ms['total'] > 0, name
    ids = [make_policy('full', d, vla=vla).step(frames[0], INSTRUCTION)[1].layer_ids]
    assert ids == [list(range(8))]


def test_train_all_matches_dysl_mean_layers(model_dir, vla):
    d, summary = model_dir
    target = mean_layers_run(make_policy('dysl', d, vla=vla), _episodes(2, 6))
    assert summary['target_layers'] == pytest.approx(target)
    _, stats = make_policy('static-depth', d, vla=vla).step(_frames(1)[0], INSTRUCTION)
    assert stats.layers_run == min(TINY.n_layers, round(target))
    q = summary['methods']['random-skip']['q']
    assert random_skip_expected_layers(LAYOUT, q) == pytest.approx(
        float(np.clip(target, 2, TINY.n_layers)), abs=1e-6)  # 2 = one layer per segment
    _, stats = make_policy('dysl-no-static', d, vla=vla).step(_frames(1)[0], INSTRUCTION)
    assert len(stats.skipped_at) == 1  # one segment: a skip goes straight to the head
    no_static, _ = load_dysl(d / 'ablations' / 'dysl-no-static', vla)
    assert no_static.layout.static == (0,)
    joint, _ = load_dysl(d / 'ablations' / 'dysl-joint', vla)
    assert joint.layout == LAYOUT


def test_missing_part_names_the_file_and_the_command(tmp_path, vla):
    save_vla(vla, tmp_path)
    with pytest.raises(FileNotFoundError, match=r'baselines/deer/baseline\.json.*'
                                                 r'train-baselines.*--methods deer'):
        make_policy('deer', tmp_path, vla=vla)
    with pytest.raises(FileNotFoundError, match=r'ablations/dysl-joint/dysl\.json'):
        make_policy('dysl-joint', tmp_path, vla=vla)
    with pytest.raises(ValueError, match='unknown method'):
        make_policy('early-exit', tmp_path, vla=vla)


def test_random_skip_matches_q_prediction_and_is_seeded(tmp_path, vla):
    q = 0.3
    save_vla(vla, tmp_path)
    save_random_skip(tmp_path / 'baselines' / 'random-skip', LAYOUT, q, seed=7)
    frames = _frames(300)
    runs = [_run(make_policy('random-skip', tmp_path, vla=vla), frames) for _ in range(2)]
    layers = [s.layers_run for _, s in runs[0]]
    expected = random_skip_expected_layers(LAYOUT, q)  # 2 * (1 + .7 + .49 + .343)
    assert expected == pytest.approx(5.066, abs=1e-3)
    assert np.mean(layers) == pytest.approx(expected, abs=0.3)
    assert [s.layer_ids for _, s in runs[0]] == [s.layer_ids for _, s in runs[1]]
    other = _run(coin_policy(vla, q, seed=8, layout=LAYOUT), frames[:20])
    assert [s.layer_ids for _, s in other] != [s.layer_ids for _, s in runs[0][:20]]
    for _, s in runs[0]:  # pre-skip and verification are off: points never move
        assert s.allow_points == [1, 5] and not s.verified
    assert solve_random_skip_q(LAYOUT, expected) == pytest.approx(q, abs=1e-6)


def test_random_skip_uses_identity_adapters(vla):
    policy = coin_policy(vla, 1.0, layout=LAYOUT)  # skip at every first dynamic layer
    chunk, stats = policy.step(_frames(1)[0], INSTRUCTION)
    assert stats.layer_ids == [0, 4] and stats.skipped_at == [1, 5]
    pixels, tokens = policy.spec.prepare(_frames(1)[0], INSTRUCTION)
    with torch.inference_mode():
        x = vla.embed(torch.from_numpy(pixels), torch.from_numpy(tokens))
        ref = vla.head(vla.blocks[4](vla.blocks[0](x)))[0].numpy()
    assert np.array_equal(chunk, policy.spec.unnormalise(ref))


def test_deer_exits_early_when_loose_and_runs_all_at_zero(vla):
    deer = DeeR.from_vla(vla).eval()
    assert deer.exits == [2, 4, 6, 8] and deer.num_decisions == 2
    frame = _frames(1)[0]
    deer.set_thresholds([0.0, 0.0])
    _, stats = BaselinePolicy(vla, deer, None, 'deer').step(frame, INSTRUCTION)
    assert stats.layers_run == 8 and stats.layer_ids == list(range(8))
    deer.set_thresholds([1e9, 1e9])
    _, stats = BaselinePolicy(vla, deer, None, 'deer').step(frame, INSTRUCTION)
    assert stats.layers_run == 4 and stats.layer_ids == [0, 1, 2, 3]


def test_deer_thresholds_give_the_target_exit_shares(vla):
    shares = deer_shares([4, 6, 8], 5.5)
    assert shares @ np.array([4, 6, 8]) == pytest.approx(5.5, abs=1e-6)
    assert shares[0] > shares[1] > shares[2]  # geometric decay: early exits most often
    torch.manual_seed(1)
    deer = DeeR.from_vla(vla).eval()
    xs = [torch.randn(25, TINY.num_tokens, TINY.d_model) for _ in range(4)]  # 100 samples
    eta = solve_deer_thresholds(exit_differences(deer, xs), shares)
    deer.set_thresholds(eta)
    exits = [len(deer.infer(x[i:i + 1]).layer_ids) for x in xs for i in range(25)]
    counts = np.array([exits.count(e) for e in (4, 6, 8)]) / 100
    assert counts == pytest.approx(shares, abs=0.03)


def test_static_depth_runs_exactly_k_lowest_similarity_layers(vla):
    torch.manual_seed(2)
    xs = [torch.randn(4, TINY.num_tokens, TINY.d_model) for _ in range(2)]
    similarity = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.5])
    sd, info = train_static_depth(vla, xs, BaselineTrainConfig(steps=2, progress=False), 3,
                                  similarity)
    assert sd.kept == [1, 3, 5] == info['kept']
    _, stats = BaselinePolicy(vla, sd, sd.head, 'static-depth').step(_frames(1)[0],
                                                                     INSTRUCTION)
    assert stats.layers_run == 3 and stats.layer_ids == [1, 3, 5]
    assert isinstance(sd, StaticDepth)


def test_flexidepth_with_routers_forced_off_equals_full_depth(tmp_path, vla):
    save_vla(vla, tmp_path)
    fd = FlexiDepth(vla.blocks, TINY.d_model).eval()
    with torch.no_grad():
        for a in fd.adapters:
            a.up.weight.normal_(std=0.05)
        for r in fd.routers:
            r.out.bias.fill_(50.0)  # g ~ 1: every layer runs, no skip
    save_baseline(fd, tmp_path / 'baselines' / 'flexidepth')
    frames = _frames(3)
    full = _run(make_policy('full', tmp_path, vla=vla), frames)
    flexi = _run(make_policy('flexidepth', tmp_path, vla=vla), frames)
    for (a, _), (b, s) in zip(full, flexi):
        assert s.layers_run == 8 and s.layer_ids == list(range(8))
        assert np.array_equal(a, b)
    x = torch.randn(1, TINY.num_tokens, TINY.d_model)
    assert torch.equal(fd.infer(x, routing=False).hidden, fd.infer(x).hidden)
    with torch.no_grad():
        for r in fd.routers:
            r.out.bias.fill_(-50.0)  # g ~ 0: every layer replaced by its adapter
    out = fd.infer(x)
    assert out.layer_ids == []
    expected = x
    for a in fd.adapters:
        expected = a(expected)
    assert torch.allclose(out.hidden, expected)


def test_ablation_flags_take_effect(model_dir, vla):
    d, _ = model_dir
    frames = _frames(40, seed=3)
    dysl = _run(make_policy('dysl', d, vla=vla), frames)
    no_pre = _run(make_policy('dysl-no-preskip', d, vla=vla), frames)
    no_ver = _run(make_policy('dysl-no-verify', d, vla=vla), frames)
    lowest = [1, 5]
    # the flags matter: with them on, points move and some steps are verified
    assert any(s.allow_points != lowest for _, s in dysl)
    assert any(s.verified for _, s in dysl)
    assert all(s.allow_points == lowest for _, s in no_pre)
    assert any(s.verified for _, s in no_pre)  # verification still on
    assert not any(s.verified for _, s in no_ver)
    assert all(s.layers_run <= TINY.n_layers for _, s in no_ver)


def test_ablations_take_the_main_models_distillation_settings(tmp_path):
    from dysl_ros.model.io import write_json
    from dysl_ros.train.baselines import main_distill_config
    from dysl_ros.train.distill import DISTILL_JSON, DistillConfig
    assert main_distill_config(tmp_path, seed=3) == DistillConfig(seed=3)  # none yet
    stored = DistillConfig(lam=0.3, lr=5e-4, stage2_steps=600)
    write_json(tmp_path / DISTILL_JSON, {'config': stored.to_dict()})
    cfg = main_distill_config(tmp_path, seed=3)
    assert (cfg.lam, cfg.lr, cfg.stage2_steps, cfg.seed) == (0.3, 5e-4, 600, 3)
    write_json(tmp_path / DISTILL_JSON, {'config': {'lam': 0.3, 'speed': 1}})
    with pytest.raises(ValueError, match=DISTILL_JSON):
        main_distill_config(tmp_path)


def test_every_trainable_method_names_a_maker_that_exists():
    from dysl_ros.runtime.methods import TRAINABLE
    from dysl_ros.train.baselines import maker
    assert TRAINABLE == ('dysl-joint', 'dysl-no-static', 'random-skip',
                         'random-skip-adapters', 'flexidepth', 'deer', 'static-depth')
    assert all(callable(maker(name)) for name in TRAINABLE)


def test_train_all_gives_the_baselines_dysls_part_sizes_and_records_their_cost(model_dir, vla):
    d, summary = model_dir
    for name, entry in summary['methods'].items():
        assert entry['train_seconds'] > 0 and entry['trainable_parameters'] >= 0, name
    assert summary['methods']['random-skip']['trainable_parameters'] == 0
    dysl, _ = load_dysl(d, vla)
    rank, width = dysl.cfg.adapter_rank, dysl.cfg.controller_width
    deer = read_json(d / 'baselines' / 'deer' / 'baseline.json')
    flexi = read_json(d / 'baselines' / 'flexidepth' / 'baseline.json')
    assert deer['config']['adapter_rank'] == rank
    assert (flexi['config']['adapter_rank'], flexi['config']['router_width']) == (rank, width)


def test_coin_methods_with_dysls_adapters(tmp_path, model_dir, vla):
    """always-skip and random-skip-adapters at q = 1 skip every segment at its first dynamic
    layer through DySL's trained adapters (not the identity), never verified."""
    d, _ = model_dir
    dysl, _ = load_dysl(d, vla)
    frames = _frames(20, seed=5)
    always = _run(make_policy('always-skip', d, vla=vla), frames)
    assert all(s.layer_ids == [0, 4] and s.skipped_at == [1, 5] and not s.verified
               for _, s in always)
    policy = make_policy('always-skip', d, vla=vla)
    pixels, tokens = policy.spec.prepare(frames[0], INSTRUCTION)
    with torch.inference_mode():
        x = vla.embed(torch.from_numpy(pixels), torch.from_numpy(tokens))
        x = dysl.adapter(5, vla.blocks[4](dysl.adapter(1, vla.blocks[0](x))))
        ref = policy.spec.unnormalise(vla.head(x)[0].numpy())
    assert np.allclose(always[0][0], ref, atol=1e-5)
    save_vla(vla, tmp_path)
    save_dysl(dysl, tmp_path, {})
    coins = tmp_path / 'baselines' / 'random-skip-adapters'
    save_random_skip(coins, LAYOUT, 1.0, method='random-skip-adapters')
    same = _run(make_policy('random-skip-adapters', tmp_path, vla=vla), frames)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(always, same))
    save_random_skip(coins, Layout(8, (0, 2)), 0.5, method='random-skip-adapters')
    with pytest.raises(ValueError, match='solved for layout'):
        make_policy('random-skip-adapters', tmp_path, vla=vla)


def test_deer_trains_only_its_exit_adapters_and_its_last_exit_is_the_vla(tmp_path, vla):
    torch.manual_seed(4)
    xs = [torch.randn(6, TINY.num_tokens, TINY.d_model) for _ in range(3)]
    head = {k: v.clone() for k, v in vla.head.state_dict().items()}
    deer, info = train_deer(vla, xs, BaselineTrainConfig(steps=4, lr=1e-2, progress=False),
                            5.0, DeeRConfig(adapter_rank=3))
    assert all(torch.equal(v, vla.head.state_dict()[k]) for k, v in head.items())
    assert len(deer.adapters) == len(deer.exits) - 1 == 3
    assert sorted({k.split('.')[0] for k in deer.trainable_state_dict()}) == ['adapters']
    assert info['trainable_parameters'] == deer.num_trainable() == 3 * (64 + 2 * 64 * 3 + 3 + 64)
    assert any(a.up.weight.abs().sum() > 0 for a in deer.adapters)  # trained off identity
    deer.set_thresholds([0.0, 0.0])  # never exit early: exactly the VLA
    frame = _frames(1)[0]
    chunk, stats = BaselinePolicy(vla, deer, None, 'deer').step(frame, INSTRUCTION)
    full, _ = make_policy('full', _saved(tmp_path, vla), vla=vla).step(frame, INSTRUCTION)
    assert stats.layers_run == 8 and np.array_equal(chunk, full)
    save_baseline(deer, tmp_path / 'baselines' / 'deer')
    loaded = make_policy('deer', tmp_path, vla=vla)
    assert np.array_equal(loaded.step(frame, INSTRUCTION)[0], chunk)


def test_baselines_get_dysls_training_budget(tmp_path):
    from dysl_ros.model.io import write_json
    from dysl_ros.train.baselines.command import dysl_budget
    assert dysl_budget(tmp_path) == {}
    write_json(tmp_path / 'distill.json', {
        'config': {'stage1_steps': 600, 'stage2_steps': 700}, 'batch_size': 32,
        'batches_per_pass': 64})
    assert dysl_budget(tmp_path) == {'steps': 1300, 'batch_size': 32, 'batches_per_pass': 64}


def _saved(directory, vla):
    save_vla(vla, directory)
    return directory


def test_training_cost_reads_what_training_recorded(model_dir, tmp_path):
    from dysl_ros.model.io import write_json
    from dysl_ros.runtime.methods import training_cost
    d, summary = model_dir
    assert training_cost('full', d) == {'trainable_parameters': 0, 'train_seconds': 0.0}
    for name in ('deer', 'flexidepth', 'dysl-joint'):
        cost = training_cost(name, d)
        assert cost == {k: summary['methods'][name][k] for k in cost}, name
    assert training_cost('dysl', tmp_path) == {'trainable_parameters': None,
                                               'train_seconds': None}
    write_json(tmp_path / 'distill.json', {'trainable_parameters': 85_671, 'train_seconds': 9.5})
    for name in ('dysl', 'dysl-no-verify', 'always-skip', 'random-skip-adapters'):
        assert training_cost(name, tmp_path) == {'trainable_parameters': 85_671,
                                                 'train_seconds': 9.5}, name
