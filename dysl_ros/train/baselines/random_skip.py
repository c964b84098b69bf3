"""Random skip (identity or DySL's trained adapters): q solved so that the expected layers
run match DySL's mean executed layers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ...layout import Layout
from ...model.io import write_json
from ...runtime.methods import BASELINE_JSON, COIN_METHODS, RANDOM_SKIP_FORMAT
from ...validation import require
from .common import Job


def random_skip_expected_layers(layout: Layout, q: float) -> float:
    """Expected layers run when every active dynamic layer skips with probability q and all
    allow points sit at S_k + 1: per segment 1 + sum_{m=1..n_k} (1 - q)^m."""
    require(0.0 <= q <= 1.0, 'q', q, 'a probability in [0, 1]')
    return float(sum(1 + sum((1 - q) ** m for m in range(1, len(seg.dynamic) + 1))
                     for seg in layout.segments))


def solve_random_skip_q(layout: Layout, target_layers: float) -> float:
    """q in [0, 1] whose expected layers run equal target_layers (clamped to what q reaches)."""
    lo_layers = random_skip_expected_layers(layout, 1.0)
    if target_layers >= layout.num_layers:
        return 0.0
    if target_layers <= lo_layers:
        return 1.0
    lo, hi = 0.0, 1.0  # expected layers fall as q rises
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if random_skip_expected_layers(layout, mid) > target_layers:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def save_random_skip(directory: Path, layout: Layout, q: float, seed: int = 0,
                     extra: Optional[dict] = None, method: str = 'random-skip') -> None:
    """Write <directory>/baseline.json for a coin method (no weights): random-skip, or
    random-skip-adapters (DySL's adapters, so `layout` must be DySL's)."""
    require(0.0 <= q <= 1.0, 'q', q, 'a probability in [0, 1]')
    require(method in COIN_METHODS, 'method', method, f'one of {COIN_METHODS}')
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / BASELINE_JSON, {
        'format': RANDOM_SKIP_FORMAT, 'method': method, 'q': float(q), 'seed': int(seed),
        'layout': layout.to_dict(), 'expected_layers': random_skip_expected_layers(layout, q),
        'extra': dict(extra or {})})


def make(job: Job, name: str, out_dir: Path) -> dict[str, Any]:
    """Solve q for the target layers on DySL's layout and write it (no training)."""
    q = solve_random_skip_q(job.layout, job.target_layers)
    save_random_skip(out_dir, job.layout, q, job.seed, {'target_layers': job.target_layers},
                     method=name)
    return {'q': q, 'trainable_parameters': 0}
