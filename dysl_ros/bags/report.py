"""The replay report: report.json, chunks.npz and PNG plots (matplotlib, Agg backend).

report.json:

    meta      how the replay ran (bag, mode, model, backend, method, frames, references)
    summary   steps, episodes, layers_run_mean, layers_total, skip_rate, verifications,
              latency_ms_{mean,p50,p90,max}, errors[reference] {compared, exact, mean_abs,
              max_abs}, skips_match / guidance_match {compared, matched}
    episodes  per episode: index, instruction, task, seed, success, observations, steps[]
              per step: step, stamp_ns, t (s since the episode's first frame), phase,
              layers_run, layers_total, layer_ids, skipped_at (per segment), verified,
              allow_points, continuity, continuity_change, latency_ms {stage: ms; 'total'},
              errors[reference] {mean_abs, max_abs, first_abs, exact} (action units),
              recorded (the bag's step statistics), skips_match, guidance_match

chunks.npz: chunks (N, H, D), reference_<name> (N, H, D) (NaN where missing), episode, step,
stamp_ns (N,).

Plots: episode_<k>.png (layers run, skip positions and verifications over the episode, then
the continuity C and its change dC; phases shaded, instruction in the title),
action_error.png (per step, per reference), latency.png (histogram).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..runtime.messages import StepStats

MAX_EPISODE_PLOTS = 50


# -- the records of a replay, step-locked (bags.replay) or live (nodes.bag_player) ------

def compare(chunk: np.ndarray, reference: np.ndarray) -> dict:
    """Action error of a chunk against a reference chunk, both (H, D) in action units."""
    a = np.asarray(chunk, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f'chunk of shape {a.shape} cannot be compared with a reference of '
                         f'shape {b.shape}')
    d = np.abs(a - b)  # (H, D)
    return {'mean_abs': float(d.mean()), 'max_abs': float(d.max()),
            'first_abs': float(d[0].mean()), 'exact': bool(np.array_equal(a, b))}


def recorded_stats(s: Optional[StepStats]) -> Optional[dict]:
    """The skip decisions of recorded step statistics (None when there are none)."""
    if s is None:
        return None
    return {k: getattr(s, k) for k in ('layers_run', 'layer_ids', 'skipped_at', 'verified',
                                       'allow_points')}


def step_record(obs: Any, episode: Any, chunk: np.ndarray, *, layers_run: int,
                layers_total: int, layer_ids: list, skipped_at: list, verified: bool,
                allow_points: list, continuity: Optional[float],
                continuity_change: Optional[float], latency: dict,
                references: dict[str, Optional[np.ndarray]], recorded: Optional[dict],
                guidance_match: Optional[bool] = None) -> dict:
    """One step of a report: what the policy did and how its chunk compares."""
    skipped = [None if j is None else int(j) for j in skipped_at]
    errors = {name: (None if ref is None else compare(chunk, ref))
              for name, ref in references.items()}
    match = None
    if recorded is not None and recorded.get('layer_ids') is not None:
        match = (list(recorded['layer_ids']) == [int(i) for i in layer_ids]
                 and list(recorded['skipped_at']) == skipped
                 and bool(recorded['verified']) == bool(verified))
    return {'step': obs.index, 'stamp_ns': obs.stamp_ns,
            't': (obs.log_ns - episode.observations[0].log_ns) * 1e-9,
            'phase': episode.phase(obs.log_ns), 'layers_run': int(layers_run),
            'layers_total': int(layers_total), 'layer_ids': [int(i) for i in layer_ids],
            'skipped_at': skipped, 'verified': bool(verified),
            'allow_points': [int(a) for a in allow_points], 'continuity': continuity,
            'continuity_change': continuity_change,
            'latency_ms': {k: float(v) for k, v in latency.items()}, 'errors': errors,
            'recorded': recorded, 'skips_match': match, 'guidance_match': guidance_match}


def episode_record(e: Any, steps: list[dict]) -> dict:
    """One episode of a report: what the bag says of it, and its steps."""
    status = e.status
    return {'index': e.index, 'instruction': e.instruction, 'task': status.task,
            'seed': status.seed, 'success': status.success,
            'observations': len(e.observations), 'incomplete': e.incomplete, 'steps': steps}


class ChunkArrays:
    """Chunks and references of every step, for chunks.npz (NaN where a reference is
    missing)."""

    def __init__(self, refs: tuple[str, ...]):
        self.refs = refs
        self.rows: dict[str, list] = {'chunks': [], 'episode': [], 'step': [], 'stamp_ns': []}
        for r in refs:
            self.rows[f'reference_{r}'] = []

    def add(self, episode: int, obs: Any, chunk: np.ndarray,
            references: dict[str, Optional[np.ndarray]]) -> None:
        chunk = np.asarray(chunk, dtype=np.float64)
        self.rows['chunks'].append(chunk)
        self.rows['episode'].append(episode)
        self.rows['step'].append(obs.index)
        self.rows['stamp_ns'].append(obs.stamp_ns)
        for r in self.refs:
            ref = references.get(r)
            self.rows[f'reference_{r}'].append(
                np.full_like(chunk, np.nan) if ref is None or np.shape(ref) != chunk.shape
                else np.asarray(ref, dtype=np.float64))

    def finish(self) -> dict[str, np.ndarray]:
        out = {}
        for k, v in self.rows.items():
            if k == 'chunks' or k.startswith('reference_'):
                out[k] = np.stack(v) if v else np.zeros((0, 0, 0))
            else:
                out[k] = np.asarray(v, dtype=np.int64)
        return out


def _pct(values: list[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


def summarise(episodes: list[dict]) -> dict:
    """The summary block of report.json."""
    steps = [s for e in episodes for s in e['steps']]
    latency = [s['latency_ms']['total'] for s in steps if 'total' in s['latency_ms']]
    refs = sorted({r for s in steps for r in s['errors']})
    errors = {}
    for r in refs:
        found = [s['errors'][r] for s in steps if s['errors'].get(r) is not None]
        errors[r] = {'compared': len(found), 'exact': sum(e['exact'] for e in found),
                     'mean_abs': float(np.mean([e['mean_abs'] for e in found])) if found
                     else None,
                     'max_abs': float(max(e['max_abs'] for e in found)) if found else None}

    def matched(key: str) -> dict:
        values = [s[key] for s in steps if s.get(key) is not None]
        return {'compared': len(values), 'matched': int(sum(values))}

    total = steps[-1]['layers_total'] if steps else None
    return {
        'episodes': len(episodes), 'steps': len(steps),
        'layers_run_mean': float(np.mean([s['layers_run'] for s in steps])) if steps else None,
        'layers_total': total,
        'skip_rate': float(np.mean([1 - len(s['layer_ids']) / s['layers_total']
                                    for s in steps])) if steps else None,
        'verifications': int(sum(s['verified'] for s in steps)),
        'latency_ms_mean': float(np.mean(latency)) if latency else None,
        'latency_ms_p50': _pct(latency, 50), 'latency_ms_p90': _pct(latency, 90),
        'latency_ms_max': float(max(latency)) if latency else None,
        'errors': errors, 'skips_match': matched('skips_match'),
        'guidance_match': matched('guidance_match'),
    }


def write_report(out: Path | str, meta: dict, episodes: list[dict],
                 arrays: dict[str, np.ndarray], plots: bool = True) -> dict:
    """Write report.json, chunks.npz and (plots=True) the PNGs into `out`; return the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {'meta': meta, 'summary': summarise(episodes), 'episodes': episodes}
    if plots:
        report['plots'] = make_plots(out, episodes)
    (out / 'report.json').write_text(json.dumps(report, indent=1, default=_jsonable) + '\n')
    np.savez_compressed(out / 'chunks.npz', **arrays)
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def make_plots(out: Path, episodes: list[dict]) -> list[str]:
    """Write the PNGs; return their file names."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = []
    try:
        for e in episodes[:MAX_EPISODE_PLOTS]:
            if e['steps']:
                name = f'episode_{e["index"]:03d}.png'
                plot_episode(plt, out / name, e)
                names.append(name)
        steps = [s for e in episodes for s in e['steps']]
        if steps:
            plot_errors(plt, out / 'action_error.png', episodes)
            plot_latency(plt, out / 'latency.png', steps)
            names += ['action_error.png', 'latency.png']
    finally:
        plt.close('all')
    return names


def _phase_spans(steps: list[dict]) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    for i, s in enumerate(steps):
        p = s.get('phase')
        if p is None:
            continue
        if spans and spans[-1][0] == p and spans[-1][2] == i - 1:
            spans[-1] = (p, spans[-1][1], i)
        else:
            spans.append((p, i, i))
    return spans


def plot_episode(plt: Any, path: Path, e: dict) -> None:
    """Layers run (+ skip positions, verifications) and continuity over one episode."""
    steps = e['steps']
    x = np.arange(len(steps))
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5), dpi=80)
    spans = _phase_spans(steps)
    colours = {p: plt.cm.tab10(i % 10) for i, p in
               enumerate(dict.fromkeys(p for p, _, _ in spans))}
    for ax in (ax1, ax2):
        seen = set()
        for p, a, b in spans:
            ax.axvspan(a - 0.5, b + 0.5, color=colours[p], alpha=0.15,
                       label=None if (p in seen or ax is ax2) else f'phase: {p}')
            seen.add(p)
    total = steps[0]['layers_total']
    ax1.step(x, [s['layers_run'] for s in steps], where='mid', color='k', label='layers run')
    ax1.step(x, [len(s['layer_ids']) for s in steps], where='mid', color='tab:blue',
             linestyle='--', label='layers of the guided pass')
    sx = [i for i, s in enumerate(steps) for j in s['skipped_at'] if j is not None]
    sy = [j for s in steps for j in s['skipped_at'] if j is not None]
    if sx:
        ax1.scatter(sx, sy, marker='v', color='tab:orange', s=18, label='skipped from layer',
                    zorder=3)
    vx = [i for i, s in enumerate(steps) if s['verified']]
    if vx:
        ax1.scatter(vx, [s['layers_run'] for s in steps if s['verified']], marker='x',
                    color='tab:red', s=30, label='verified (full depth re-run)', zorder=4)
    ax1.set_ylim(-0.5, 2 * total + 0.5)
    ax1.set_ylabel('layers')
    ax1.legend(loc='upper right', fontsize=7, ncol=2)
    c = [np.nan if s['continuity'] is None else s['continuity'] for s in steps]
    dc = [np.nan if s['continuity_change'] is None else s['continuity_change'] for s in steps]
    ax2.plot(x, c, color='tab:green', label='continuity C')
    ax2.plot(x, dc, color='tab:purple', label='change dC')
    ax2.axhline(0.0, color='grey', linewidth=0.5)
    ax2.set_xlabel('step')
    ax2.set_ylabel('normalised actions')
    ax2.legend(loc='lower right', fontsize=7)
    title = f'episode {e["index"]}: "{e["instruction"]}"'
    if e.get('task'):
        title += f' ({e["task"]}, success {e.get("success")})'
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_errors(plt: Any, path: Path, episodes: list[dict]) -> None:
    """Mean |action error| per step against each reference, episodes one after another."""
    steps = [s for e in episodes for s in e['steps']]
    refs = sorted({r for s in steps for r in s['errors']})
    fig, ax = plt.subplots(figsize=(9, 3.5), dpi=80)
    floor = 1e-12  # exact matches on a log axis
    for r in refs:
        y = [np.nan if s['errors'].get(r) is None else max(s['errors'][r]['mean_abs'], floor)
             for s in steps]
        ax.plot(np.arange(len(steps)), y, marker='.', linewidth=0.8, label=f'vs {r}')
    start = 0
    for e in episodes[:-1]:
        start += len(e['steps'])
        ax.axvline(start - 0.5, color='grey', linewidth=0.5)
    ax.set_yscale('log')
    ax.set_xlabel('step (episodes in order)')
    ax.set_ylabel(f'mean |action error| (floor {floor:g})')
    if refs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(plt: Any, path: Path, steps: list[dict]) -> None:
    """Histogram of the policy step's latency."""
    values = [s['latency_ms']['total'] for s in steps if 'total' in s['latency_ms']]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
    ax.hist(values, bins=min(40, max(5, len(values) // 3)), color='tab:blue')
    if values:
        ax.axvline(float(np.median(values)), color='k', linestyle='--',
                   label=f'median {np.median(values):.2f} ms')
        ax.legend(fontsize=8)
    ax.set_xlabel('policy step latency (ms)')
    ax.set_ylabel('steps')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
