"""`bench soak`: the policy and controller nodes in their own processes, fed from a third."""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dysl_ros.export.random_model import build_random_model
from dysl_ros.nodes import soak_bench
from test_nodes import TINY

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 60


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp('tiny') / 'model', TINY, seed=0)


def test_soak_reports_both_processes_and_consistent_figures(tiny_model, tmp_path):
    out = tmp_path / 'soak.json'
    cmd = [sys.executable, '-m', 'dysl_ros', 'bench', 'soak', '--model', str(tiny_model),
           '--frames', str(FRAMES), '--rate', '30', '--width', '320', '--height', '240',
           '--json', str(out)]
    bench = subprocess.run(cmd, cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)},
                           capture_output=True, text=True, timeout=150)
    log = bench.stdout + bench.stderr
    assert bench.returncode == 0, log
    assert 'camera -> chunk' in bench.stdout and 'controller_node' in bench.stdout
    r = json.loads(out.read_text())
    assert r['frames_sent'] == FRAMES and r['failures'] == []

    policy, controller = r['nodes']['policy_node'], r['nodes']['controller_node']
    for n in (policy, controller):
        assert n['alive_at_end'] and n['exit_code'] == 0 and not n['killed'], log
    assert policy['pid'] != controller['pid']

    # RSS: each node's own series, over the whole run
    for name, n in r['nodes'].items():
        series = r['rss_series'][name]
        frames = [s[0] for s in series]
        assert len(series) >= 2 and frames == sorted(frames) and frames[-1] == FRAMES, name
        assert all(s[2] > 10 for s in series), name
        m = n['rss_mb']
        assert m['start'] == series[0][2] and m['end'] == series[-1][2]
        assert m['peak'] == max(s[2] for s in series)
        assert m['growth'] == pytest.approx(m['end'] - m['baseline'], abs=0.01)
    # the policy process holds torch and the model; the controller process neither
    assert policy['rss_mb']['end'] > controller['rss_mb']['end'] + 100

    # chunks: at most one per frame, each answering a frame this process stamped, each after
    # its own policy step (same clock) and well within a second on a tiny model
    assert 0 < r['chunks'] <= FRAMES
    assert r['chunks_per_frame'] == pytest.approx(r['chunks'] / FRAMES)
    samples = r['chunk_samples']
    assert len(samples) == r['chunks']
    assert len({s[0] for s in samples}) == len(samples)  # no stamp twice
    timed = [(c2c, step) for _, c2c, step in samples if step is not None]
    assert timed and r['step_stats'] == len(timed)
    assert all(step < c2c < 10_000 for c2c, step in timed), timed
    for key in ('camera_to_chunk_ms', 'policy_ms', 'publish_ms'):
        f = r[key]
        assert 0 < f['p50'] <= f['p99'] <= f['max'], key
    assert r['camera_to_chunk_ms']['max'] == pytest.approx(max(s[1] for s in samples), abs=1e-3)

    # the controller commanded throughout, finite values only
    assert r['commands'] == sum(r['commands_by_label'].values()) > 0
    assert r['commands_non_finite'] == 0


def test_soak_fails_loudly_when_no_chunk_comes(tiny_model, tmp_path, monkeypatch, capsys):
    """Every frame rejected (the node expects 32 pixels wide, gets 48): exit 1, no hang, the
    nodes stopped."""
    node_arguments = soak_bench._node_arguments
    monkeypatch.setattr(soak_bench, '_node_arguments', lambda name, args, model: (
        node_arguments(name, args, model) + ['-p', 'image_width:=32'] * (name == 'policy_node')))
    parser = argparse.ArgumentParser()
    soak_bench.add_arguments(parser)
    out = tmp_path / 'soak.json'
    args = parser.parse_args(['--model', str(tiny_model), '--frames', '600', '--width', '48',
                              '--height', '40', '--chunk-timeout', '3', '--json', str(out)])
    started = time.monotonic()
    assert soak_bench.run(args) == 1
    assert time.monotonic() - started < 60
    text = capsys.readouterr().out
    assert 'FAILED: no chunk within 3 s of the first frame' in text, text
    r = json.loads(out.read_text())
    assert r['chunks'] == 0 and r['frames_sent'] < 600
    for n in r['nodes'].values():
        assert n['alive_at_end'] and n['exit_code'] == 0
