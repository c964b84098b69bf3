"""The closed-loop benchmark end to end on a tiny model, and the shipped default model."""
import json
from pathlib import Path

import numpy as np
import pytest

from dysl_ros.bench.cli import BENCHES
from dysl_ros.cli import build_parser, main
from dysl_ros.export.random_model import build_random_model
from dysl_ros.model import VLAConfig
from dysl_ros.runtime.methods import make_policy
from dysl_ros.sim import SimConfig, TabletopEnv

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / 'models' / 'default'
TINY = VLAConfig(image_size=32, patch_size=8, d_model=32, n_layers=5, n_heads=2, mlp_ratio=2,
                 chunk_size=4)


def test_one_episode_smoke_run_writes_the_table_and_json(tmp_path, capsys):
    model = build_random_model(tmp_path / 'model', TINY)
    out = tmp_path / 'bench.json'
    code = main(['bench', 'closed-loop', '--model', str(model), '--methods', 'full', 'dysl',
                 '--episodes', '1', '--tasks', 'pick_red', '--workers', '1',
                 '--open-loop-steps', '4', '--json', str(out)])
    assert code == 0
    assert 'full' in capsys.readouterr().out
    result = json.loads(out.read_text())
    summary = result['summary']
    assert set(summary) == {'full', 'dysl'}
    assert summary['full']['layers_run'] == TINY.n_layers  # full depth runs every layer
    assert summary['dysl']['layers_run'] <= TINY.n_layers * 2  # a verified step runs twice
    assert summary['full']['speedup'] == pytest.approx(1.0)
    for episode in result['episodes']:  # an untrained model fails, and the episode times out
        assert episode['task'] == 'pick_red' and episode['steps'] == 160
        assert episode['inferences'] == 160 // 4
        assert episode['closest_mm'] > 0 and episode['progress_mm'] < 50
    failures = summary['full']['failures']['pick_red']
    assert failures['count'] == 1 and failures['moved'] <= failures['reached'] <= 1


def test_bad_open_loop_steps_are_refused(tmp_path):
    model = build_random_model(tmp_path / 'model', TINY)
    with pytest.raises(SystemExit, match='chunk size'):
        main(['bench', 'closed-loop', '--model', str(model), '--methods', 'full',
              '--episodes', '1', '--open-loop-steps', '9'])


def test_guidance_overrides_reach_the_dysl_workers(tmp_path, capsys):
    model = build_random_model(tmp_path / 'model', TINY)

    def verification_rate(*guidance):
        out = tmp_path / 'bench.json'
        assert main(['bench', 'closed-loop', '--model', str(model), '--methods', 'dysl',
                     '--episodes', '1', '--tasks', 'pick_red', '--workers', '1',
                     '--json', str(out), '--guidance', *guidance]) == 0
        return json.loads(out.read_text())['summary']['dysl']['verification_rate']

    # a tiny tau reads the random model's jitter as drops: skipped chunks get verified
    assert verification_rate('tau=1e-9') > 0
    assert verification_rate('tau=1e-9', 'verify=false') == 0
    assert main(['bench', 'closed-loop', '--model', str(model), '--guidance', 'tau=-1']) == 2
    assert 'tau must be in' in capsys.readouterr().err


def test_every_bench_is_a_subcommand():
    parser = build_parser()
    for name in BENCHES:
        args = parser.parse_args(['bench', name])
        assert args.bench == name


def test_shipped_default_model_steps_in_the_simulation():
    policy = make_policy('dysl', DEFAULT_MODEL)
    env = TabletopEnv(SimConfig())
    try:
        obs = env.reset(seed=0, instruction='open the drawer')
        policy.reset()
        for _ in range(3):
            chunk, stats = policy.step(obs.images, obs.instruction)
            assert chunk.shape == (policy.spec.chunk_size, 7) and np.isfinite(chunk).all()
            assert 0 < stats.layers_run <= 2 * stats.layers_total
            obs, done, _ = env.step(chunk[0])
    finally:
        env.close()
