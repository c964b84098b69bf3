"""Demonstration dataset folders on disk (no MuJoCo, no torch: robots convert bags too)."""
from __future__ import annotations

from pathlib import Path


def prepare_dataset_dir(out_dir: Path | str, overwrite: bool) -> Path:
    """Create the dataset folder; one that already holds a dataset is refused, or emptied of
    it when overwrite is set."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / 'index.json').exists() or any(out.glob('*.npz')):
        if not overwrite:
            raise FileExistsError(f'{out} already holds a dataset; pass overwrite=True '
                                  '(--overwrite) to replace it')
        for p in list(out.glob('*.npz')) + [out / 'index.json', out / 'stats.json']:
            p.unlink(missing_ok=True)
    return out
