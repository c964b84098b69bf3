"""Behaviour cloning on a tiny simulator-generated demo set, and the train CLIs end to end."""
import argparse
import dataclasses
import re

import numpy as np
import pytest
import torch

from dysl_ros.datasets import load_stats
from dysl_ros.model import VLA, VLAConfig
from dysl_ros.model.io import load_dysl, load_vla, read_json, read_tensors, save_vla
from dysl_ros.model.processing import preprocess_images
from dysl_ros.model.tokenizer import WordTokenizer
from dysl_ros.sim.demos import generate
from dysl_ros.sim.env import SimConfig
from dysl_ros.train import bc, calibrate, distill
from dysl_ros.train.bc import BCConfig, train_bc
from dysl_ros.train.dataset import (DemoDataset, augment_images, demo_instructions,
                                    demo_tokenizer, load_demos)

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TINY = VLAConfig(n_layers=3, d_model=32, n_heads=4, image_size=32, patch_size=8, chunk_size=4)
FAST = BCConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=4, eval_every=10,
                checkpoint_every=10, augment=True, val_fraction=0.3, progress=False)


@pytest.fixture(scope='module')
def demos(tmp_path_factory):
    """Real expert episodes from the MuJoCo tabletop: 3 tasks, 1 episode each, 32 px."""
    out = tmp_path_factory.mktemp('demos')
    summary = generate(out, 1, tasks=('pick_red', 'push_blue_left', 'open_drawer'),
                       sim_cfg=SimConfig(image_size=32, shadows=False))
    assert summary['episodes'] == 3
    return out


def tiny_vla(demos_dir, seed: int = 0) -> VLA:
    torch.manual_seed(seed)
    return VLA(TINY, demo_tokenizer(demo_instructions(demos_dir), TINY.max_instruction_tokens))


def test_dataset_samples(demos):
    episodes, stats = load_demos(demos)
    vla = tiny_vla(demos)
    ds = DemoDataset.for_model(episodes, stats, vla)
    assert len(ds) == sum(ep.length for ep in episodes)
    ep = episodes[0]
    H, T = TINY.chunk_size, ep.length
    mean, std = stats['mean'], np.maximum(stats['std'], 1e-3)
    # the last step of episode 0: one real action, then the last action repeated
    item = ds[T - 1]
    assert item['images'].shape == (2, 3, 32, 32) and item['images'].dtype == torch.float32
    expected_images = preprocess_images({c: ep.images[c][T - 1] for c in TINY.cameras},
                                        TINY.cameras, TINY.image_size)
    assert torch.equal(item['images'], torch.from_numpy(expected_images))
    assert item['mask'].tolist() == [True] + [False] * (H - 1)
    last = torch.from_numpy((ep.actions[-1] - mean) / std)
    for h in range(H):
        torch.testing.assert_close(item['actions'][h], last)
    assert torch.equal(item['tokens'], torch.from_numpy(vla.tokenizer.encode(ep.instruction)))
    assert vla.tokenizer.unknown_words(ep.instruction) == []
    # a step in the middle: the next H actions, all real
    mid = ds[3]
    torch.testing.assert_close(mid['actions'], torch.from_numpy((ep.actions[3:3 + H] - mean)
                                                                / std))
    assert bool(mid['mask'].all())
    # the vectorised batch equals the items, across an episode boundary
    idx = np.array([0, T - 2, T - 1, T, len(ds) - 1])
    batch = ds.batch(idx)
    for k, v in batch.items():
        assert torch.equal(v, torch.stack([ds[int(i)][k] for i in idx])), k
    assert batch['images'].min() >= -1 and batch['images'].max() <= 1


def test_augmentation_is_light_and_seeded():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 2, 3, 16, 16, generator=g) * 2 - 1
    a = augment_images(images, torch.Generator().manual_seed(1))
    b = augment_images(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, images)
    same = augment_images(images, torch.Generator().manual_seed(1), 0, 0.0, 0.0)
    assert torch.equal(same, images)
    # a pure shift moves pixels without changing their values
    shifted = augment_images(images, torch.Generator().manual_seed(2), 2, 0.0, 0.0)
    inner = images[..., 2:-2, 2:-2]
    assert any(torch.equal(shifted[0, 0][..., 2 + dy:14 + dy, 2 + dx:14 + dx], inner[0, 0])
               for dy in range(-2, 3) for dx in range(-2, 3))


def test_bc_decreases_the_loss(demos, tmp_path):
    cfg = dataclasses.replace(FAST, steps=200, augment=False, eval_every=100)
    hist = train_bc(tiny_vla(demos), demos, tmp_path, cfg, device='cpu')
    first, last = np.mean(hist['loss'][:10]), np.mean(hist['loss'][-10:])
    assert hist['complete'] and len(hist['loss']) == cfg.steps
    assert last < 0.8 * first, f'BC loss {first:.3f} -> {last:.3f} (need a 20% drop)'
    assert hist['val_episodes'] == 1 and 'val_loss' in hist['evals'][-1]
    # the written model carries the demos' action statistics
    model = load_vla(tmp_path)
    stats = load_stats(demos)
    torch.testing.assert_close(model.action_mean, torch.from_numpy(stats['mean']))
    torch.testing.assert_close(model.action_std,
                               torch.from_numpy(np.maximum(stats['std'], 1e-3)))


def test_bc_resumes_exactly(demos, tmp_path):
    straight = tiny_vla(demos)
    hist = train_bc(straight, demos, tmp_path / 'a', FAST, device='cpu')
    # interrupted after 15 steps (checkpoint), then resumed in a new process-like call
    part = tiny_vla(demos)
    h1 = train_bc(part, demos, tmp_path / 'b', FAST, device='cpu', stop_after=15)
    assert not h1['complete'] and h1['step'] == 15
    assert not (tmp_path / 'b' / 'vla.json').exists(), 'an unfinished run writes no model'
    resumed = tiny_vla(demos, seed=123)  # different init: everything must come from disk
    h2 = train_bc(resumed, demos, tmp_path / 'b', FAST, device='cpu')
    assert h2['complete'] and h2['loss'] == hist['loss']
    for (k, v), (k2, v2) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, v2), f'{k} differs after resuming'


def test_resume_refuses_changed_settings(demos, tmp_path):
    train_bc(tiny_vla(demos), demos, tmp_path, FAST, device='cpu', stop_after=2)
    with pytest.raises(ValueError, match='lr'):
        train_bc(tiny_vla(demos), demos, tmp_path, dataclasses.replace(FAST, lr=1e-4),
                 device='cpu')
    other = VLA(dataclasses.replace(TINY, d_model=64),
                demo_tokenizer(demo_instructions(demos), TINY.max_instruction_tokens))
    with pytest.raises(ValueError, match='different model'):
        train_bc(other, demos, tmp_path, FAST, device='cpu')


def test_fine_tune_starts_from_the_saved_model(demos, tmp_path):
    """--init-from takes the saved model's weights, settings, vocabulary and action
    statistics, whatever the model options and the demos' statistics say."""
    base = tiny_vla(demos, seed=7)
    stats = load_stats(demos)
    base.set_action_stats(stats['mean'] + 0.5, stats['std'] * 2.0)  # not the demos' stats
    save_vla(base, tmp_path / 'base')
    assert _cli(bc, ['--demos', demos, '--out', tmp_path / 'tuned', '--init-from',
                     tmp_path / 'base', '--steps', 2, '--lr', 1e-9, '--warmup-steps', 1,
                     '--batch-size', 4, '--n-layers', 5, '--device', 'cpu', '--quiet']) == 0
    tuned = load_vla(tmp_path / 'tuned')
    assert tuned.cfg == base.cfg and tuned.tokenizer.vocab == base.tokenizer.vocab
    for (k, v), v2 in zip(base.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(v2, v, atol=1e-6, rtol=0, msg=f'{k} did not start from base')
    hist = read_json(tmp_path / 'tuned' / bc.BC_JSON)
    assert hist['init_from']['model'] == str(tmp_path / 'base')
    # A fresh start from the same command takes the demos' statistics instead.
    assert _cli(bc, ['--demos', demos, '--out', tmp_path / 'fresh', '--steps', 2,
                     '--batch-size', 4, '--device', 'cpu', '--quiet']) == 0
    fresh = load_vla(tmp_path / 'fresh')
    torch.testing.assert_close(fresh.action_mean, torch.from_numpy(stats['mean']))
    assert read_json(tmp_path / 'fresh' / bc.BC_JSON)['init_from'] is None


def test_fine_tune_to_a_longer_chunk_keeps_the_model_and_grows_its_queries(demos, tmp_path):
    """--chunk-size with --init-from: every weight carries over and the new action
    queries start as copies of the last one (all queries attend to each other, so even the
    first actions change until the fine-tune settles)."""
    base = tiny_vla(demos, seed=3).eval()
    save_vla(base, tmp_path / 'base')
    grown = base.with_chunk_size(2 * TINY.chunk_size)
    assert grown.cfg == dataclasses.replace(TINY, chunk_size=8) and not grown.training
    q, q2 = base.embed.queries, grown.embed.queries
    assert torch.equal(q2[:, :4], q) and torch.equal(q2[:, 4:], q[:, -1:].expand(-1, 4, -1))
    images, tokens = torch.zeros(1, 2, 3, 32, 32), torch.zeros(1, 12, dtype=torch.long)
    assert grown(images, tokens).shape == (1, 8, TINY.action_dim)
    assert torch.equal(base.with_chunk_size(2).embed.queries, q[:, :2])
    assert _cli(bc, ['--demos', demos, '--out', tmp_path / 'tuned', '--init-from',
                     tmp_path / 'base', '--chunk-size', 8, '--steps', 2, '--lr', 1e-9,
                     '--warmup-steps', 1, '--batch-size', 4, '--device', 'cpu',
                     '--quiet']) == 0
    tuned = load_vla(tmp_path / 'tuned')
    assert tuned.cfg.chunk_size == 8 and tuned.tokenizer.vocab == base.tokenizer.vocab
    for (k, v), v2 in zip(grown.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(v2, v, atol=1e-6, rtol=0, msg=f'{k} did not start from base')


def test_fine_tune_refuses_demos_the_model_cannot_read(demos, tmp_path):
    words = VLA(TINY, WordTokenizer.from_words(['pick', 'up'], TINY.max_instruction_tokens))
    save_vla(words, tmp_path / 'words')
    with pytest.raises(ValueError, match=re.escape(f'{demos}: instruction words [')
                       + r".*'drawer'.*\] are not in the vocabulary"):
        bc.fine_tune_start(tmp_path / 'words', [demos])
    one_camera = VLA(dataclasses.replace(TINY, cameras=('front',)),
                     demo_tokenizer(demo_instructions(demos), TINY.max_instruction_tokens))
    save_vla(one_camera, tmp_path / 'one')
    with pytest.raises(ValueError, match=r"cameras \['front', 'wrist'\].*takes \['front'\]"):
        bc.fine_tune_start(tmp_path / 'one', [demos])


@pytest.mark.parametrize('field, value', [
    ('steps', 0), ('batch_size', 0), ('lr', -1.0), ('loss', 'huber'), ('val_fraction', 1.0),
    ('brightness', 1.5), ('shift_pixels', -1), ('checkpoint_every', 0)])
def test_bad_bc_config_values_raise(field, value):
    with pytest.raises(ValueError, match=f'{field}={value!r}'):
        BCConfig(**{field: value})


def _cli(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def test_cli_train_calibrate_distill(demos, tmp_path):
    model = tmp_path / 'model'
    assert _cli(bc, ['--demos', demos, '--out', model, '--steps', 12, '--batch-size', 8,
                     '--n-layers', 5, '--d-model', 32, '--n-heads', 4, '--chunk-size', 4,
                     '--eval-every', 6, '--device', 'cpu', '--quiet', '--half-weights']) == 0
    vla = load_vla(model)
    assert vla.cfg.image_size == 32 and vla.cfg.n_layers == 5  # resolution from the demos
    stored = read_tensors(model / 'vla.safetensors')  # half-stored, as models/realtime ships
    assert stored['blocks.0.attn.qkv.weight'].dtype == torch.float16
    assert stored['action_mean'].dtype == vla.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert _cli(calibrate, ['--model-dir', model, '--demos', demos, '--samples', 16,
                            '--batch-size', 8, '--ratio', 0.2, '--device', 'cpu',
                            '--quiet']) == 0
    calib = read_json(model / calibrate.CALIBRATION_JSON)
    assert calib['layout']['static'][0] == 0 and len(calib['layout']['static']) in (1, 2)
    assert calib['guidance']['tau'] > 0 and len(calib['similarity']) == 5
    assert _cli(distill, ['--model-dir', model, '--demos', demos, '--stage1-steps', 6,
                          '--stage2-steps', 6, '--batch-size', 4, '--batches-per-pass', 2,
                          '--adapter-rank', 8, '--controller-width', 8, '--device', 'cpu',
                          '--quiet']) == 0
    dysl, guidance = load_dysl(model, load_vla(model))
    assert dysl.layout.static == tuple(calib['layout']['static'])
    assert guidance == calib['guidance']
    hist = read_json(model / distill.DISTILL_JSON)
    assert len(hist['stage1']['loss']) == 6 and len(hist['stage2']['loss']) == 6
    # A hand-set tau replaces the calibrated one in the guidance; the calibrated one is kept.
    assert _cli(calibrate, ['--model-dir', model, '--demos', demos, '--samples', 16,
                            '--batch-size', 8, '--device', 'cpu', '--quiet',
                            '--guidance', 'tau=0.4']) == 0
    again = read_json(model / calibrate.CALIBRATION_JSON)
    assert again['guidance']['tau'] == 0.4 and again['tau_calibrated'] == calib['guidance']['tau']
    assert load_dysl(model, load_vla(model))[1]['tau'] == 0.4
    assert 'set by --guidance' in calibrate.format_calibration(again)


def test_tau_from_the_model_sees_its_predicted_chunks(demos):
    """The 'model' tau is calibrated on the actions the model itself would execute: a chunk
    every n demo steps, its first n actions, as long as the episode."""
    from dysl_ros.guidance import calibrate_tau
    episodes, stats = load_demos(demos)
    vla = tiny_vla(demos)
    ds = DemoDataset.for_model(episodes, stats, vla)
    streams = calibrate.predicted_action_episodes(vla, ds, executed_actions=3, episodes=10)
    assert sorted(s.shape[0] for s in streams) == sorted(e.length for e in episodes)
    first = int(np.flatnonzero(ds.episode_of == 0)[3])  # the second chunk of episode 0
    b = ds.batch(np.array([first]))
    with torch.no_grad():
        chunk = vla(b['images'], b['tokens'])[0, :3].numpy()
    length = episodes[0].length
    match = [s for s in streams if s.shape[0] == length]
    assert any(np.allclose(s[3:6], chunk, atol=1e-5) for s in match)
    with pytest.raises(ValueError, match='executed_actions'):
        calibrate.predicted_action_episodes(vla, ds, executed_actions=TINY.chunk_size + 1)
    calib = calibrate.calibrate_model(vla, ds, samples=8, batch_size=4, progress=False,
                                      executed_actions=3)
    # an untrained model's actions are not the expert's: a different tau, and it is stored
    # with the executed_actions it was measured for
    assert calib['guidance']['tau'] == pytest.approx(calibrate_tau(streams))
    assert calib['guidance']['tau'] != pytest.approx(calibrate_tau(ds.episode_actions()))
    assert calib['guidance']['executed_actions'] == 3 and calib['tau_from'] == 'model'
