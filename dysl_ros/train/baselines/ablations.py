"""DySL ablations: parts distilled jointly (no stage 1), or on a layout with only layer 0
static; saved with save_dysl under <model_dir>/ablations/<name>/."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ...layout import Layout
from ...model.config import DySLConfig
from ...model.dysl import DySL
from ...model.io import save_dysl
from ...model.vla import VLA
from ..distill import DistillConfig, distill
from .common import Batch, Job, split_batch


def train_dysl_ablation(vla: VLA, inputs: Iterable[Batch], name: str, layout: Layout,
                        dysl_cfg: DySLConfig, distill_cfg: DistillConfig,
                        guidance: dict[str, Any], directory: Path) -> dict[str, Any]:
    """'dysl-joint': distil with joint=True on `layout`; 'dysl-no-static': two stages on a
    layout with only layer 0 static. Saved with save_dysl into `directory`."""
    if name == 'dysl-no-static':
        layout = Layout(layout.num_layers, (0,))
    elif name != 'dysl-joint':
        raise ValueError(f'unknown DySL ablation {name!r}; expected dysl-joint or '
                         'dysl-no-static')
    device = vla.action_mean.device
    dysl = DySL(vla.blocks, vla.cfg.d_model, layout, dysl_cfg).to(device)
    xs = [split_batch(b, device)[0] for b in inputs]
    out = distill(dysl, xs, distill_cfg, head=vla.head, joint=name == 'dysl-joint')
    dysl.eval()
    save_dysl(dysl, directory, guidance)
    return {'layout': layout.to_dict(), 'stage2_after': out['stage2']['after'],
            'trainable_parameters': dysl.num_trainable()}


def make(job: Job, name: str, out_dir: Path) -> dict[str, Any]:
    """Distil the ablation `name` on the embedded demos and save it."""
    return train_dysl_ablation(job.vla, job.hidden, name, job.layout, job.dysl_cfg,
                               job.distill_cfg, job.guidance, out_dir)
