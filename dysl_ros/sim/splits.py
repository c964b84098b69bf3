"""The tabletop's evaluation seeds: two disjoint, named ranges.

- `validation`: every choice made from closed-loop runs (tau, lambda, drop_margin,
  thresholds, budgets such as train-baselines --target-layers, checkpoints, model size);
- `test`: only to report the choices once they are made.

Episode i of every task runs seed `start + i` of its split. Both ranges lie at 10**9 and up,
clear of the demonstrations: gen-demos draws seed (10 s + task) * 100_000 + k for dataset
seed s (sim.demos.episode_seed), all below 10**9 while s < 1000 (the datasets in use: 0-4).
Both stay below 2**31, so a seed fits any int32 field.
"""
from __future__ import annotations

SPLITS: dict[str, range] = {
    'validation': range(1_000_000_000, 1_000_100_000),
    'test': range(2_000_000_000, 2_000_100_000),
}


def split_seeds(split: str, episodes: int) -> range:
    """The first `episodes` seeds of `split` (ValueError naming the splits, or the size)."""
    if split not in SPLITS:
        raise ValueError(f'split={split!r} is invalid: expected one of {sorted(SPLITS)}')
    seeds = SPLITS[split]
    if not 1 <= episodes <= len(seeds):
        raise ValueError(f'episodes={episodes!r} is invalid: the {split} split holds '
                         f'{len(seeds)} seeds per task')
    return seeds[:episodes]
