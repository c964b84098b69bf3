"""Training and calibration of every baseline and ablation (dysl-method.md section 4).

- random skip: q solved so that the expected layers run match DySL's mean executed layers.
- FlexiDepth: routers + adapters on the frozen backbone, L_task + alpha * (sum_l g_l)^2.
- DeeR: the shared exit head trained on every exit; thresholds eta_i solved on demonstration
  observations so that a target share of steps exits at each stage (shares decay
  geometrically, as in DeeR, and average to DySL's mean executed layers).
- static depth: keep the k layers with the lowest s_l, fine-tune them and a head with the
  task loss + output distillation from the full model; k = round(DySL's mean layers).
- DySL ablations: parts distilled jointly (no stage 1), or on a layout with only layer 0
  static; saved with save_dysl under <model_dir>/ablations/<name>/.

Inputs are re-iterable batches of embedded hidden states `x` (B, T, C), or pairs
`(x, actions)` with demonstration chunks (B, H, D) in normalised units. Without actions the
task loss uses the full-depth teacher's chunk (train.dataset.EmbeddedBatches yields both).
`python -m dysl_ros train-baselines --model-dir M --demos D` makes everything (see `run`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..guidance import GuidanceConfig, calibrate_tau
from ..layout import Layout
from ..model.baselines import (DeeR, DeeRConfig, FlexiDepth, FlexiDepthConfig, StaticDepth,
                               chunk_distance, save_baseline)
from ..model.config import DySLConfig, from_dict
from ..model.dysl import DySL
from ..model.io import DYSL_JSON, load_vla, read_json, save_dysl, write_json
from ..model.vla import VLA
from ..runtime.methods import (ABLATIONS, BASELINE_JSON, RANDOM_SKIP_FORMAT, TRAINABLE,
                               ablation_dir, baseline_dir, make_policy)
from ..runtime.policy import Policy
from ..sim.demos import Episode
from ..validation import require
from .calibrate import CALIBRATION_JSON, layer_similarity, read_calibration, select_static
from .dataset import DemoDataset, EmbeddedBatches, load_demos
from .distill import DISTILL_JSON, DistillConfig, distill, hidden_mse
from .optim import check_optimiser_fields, check_reiterable, frozen, make_optimizer

Batch = Union[torch.Tensor, tuple]


@dataclass(frozen=True)
class BaselineTrainConfig:
    """Optimisation of the trainable baselines (FlexiDepth, DeeR head, static depth).

    Args:
        steps: optimiser steps per method.
        lr: peak AdamW learning rate (RECON: 1e-4, as for DySL).
        warmup_steps: linear warm-up before the cosine decay (RECON).
        min_lr_ratio: the cosine decays to lr * min_lr_ratio.
        weight_decay: AdamW weight decay (RECON: 0.01, as for DySL).
        grad_clip: maximum global gradient norm; 0 disables clipping.
        flexi_alpha: alpha of FlexiDepth's (sum_l g_l)^2 layer-budget term (RECON: 1e-3).
        flexi_hard: train FlexiDepth with the inference decisions in the forward pass and
            straight-through gradients to the gates (RECON: True; False trains on the soft
            mix, whose states hard inference never sees).
        distill_weight: weight of static depth's output-distillation term (hidden-state MSE
            + L1 to the teacher's chunk) next to the task loss (RECON: 1.0).
        relative_mse: hidden-state MSEs relative to the target's mean square (as in distill).
        eval_samples: batch-1 samples measured after training (layers run, action error).
        progress: show tqdm progress bars.
    """

    steps: int = 2000
    lr: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    flexi_alpha: float = 1e-3
    flexi_hard: bool = True
    distill_weight: float = 1.0
    relative_mse: bool = True
    eval_samples: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.steps >= 0, 'steps', self.steps, '>= 0')
        check_optimiser_fields(self)
        require(self.flexi_alpha >= 0, 'flexi_alpha', self.flexi_alpha, '>= 0')
        require(self.distill_weight >= 0, 'distill_weight', self.distill_weight, '>= 0')
        require(self.eval_samples >= 1, 'eval_samples', self.eval_samples, '>= 1')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- random skip ---------------------------------------------------------------------------

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
                     extra: Optional[dict] = None) -> None:
    """Write <directory>/baseline.json for the random-skip baseline (no weights)."""
    require(0.0 <= q <= 1.0, 'q', q, 'a probability in [0, 1]')
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / BASELINE_JSON, {
        'format': RANDOM_SKIP_FORMAT, 'method': 'random-skip', 'q': float(q), 'seed': int(seed),
        'layout': layout.to_dict(), 'expected_layers': random_skip_expected_layers(layout, q),
        'extra': dict(extra or {})})


# -- DeeR thresholds -----------------------------------------------------------------------

def deer_shares(stage_layers: Sequence[int], target_layers: float) -> np.ndarray:
    """Share of steps exiting at each stage, q_s ~ lam^s (DeeR's geometric budget), with
    lam solved so that sum_s q_s * stage_layers[s] = target_layers (clamped to the range)."""
    layers = np.asarray(stage_layers, dtype=np.float64)  # (S,)
    if layers.ndim != 1 or layers.size == 0 or np.any(np.diff(layers) <= 0):
        raise ValueError(f'stage_layers={list(stage_layers)} is invalid: expected increasing')
    out = np.zeros_like(layers)
    if target_layers <= layers[0] or layers.size == 1:
        out[0] = 1.0
        return out
    if target_layers >= layers[-1]:
        out[-1] = 1.0
        return out
    s = np.arange(layers.size, dtype=np.float64)

    def shares(log_lam: float) -> np.ndarray:
        z = s * log_lam
        w = np.exp(z - z.max())
        return w / w.sum()

    lo, hi = -60.0, 60.0  # expected layers rise with lam
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(shares(mid) @ layers) < target_layers:
            lo = mid
        else:
            hi = mid
    return shares(0.5 * (lo + hi))


def solve_deer_thresholds(diffs: np.ndarray, shares: Sequence[float]) -> list[float]:
    """eta per decision exit so that, walking the exits in order, a share[s] of all samples
    exits at decision s (diffs (N, S-1): distance of each exit's chunk to the previous one;
    shares (S,): the last stage takes whatever remains)."""
    d = np.asarray(diffs, dtype=np.float64)
    q = np.asarray(shares, dtype=np.float64)
    if d.ndim != 2 or q.shape != (d.shape[1] + 1,):
        raise ValueError(f'diffs {d.shape} and shares {q.shape} do not fit: expected (N, S-1) '
                         'and (S,)')
    if np.any(q < 0) or not math.isclose(float(q.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f'shares={q.tolist()} is invalid: expected non-negative, summing to 1')
    n = d.shape[0]
    remaining = np.arange(n)
    cum = np.cumsum(q)
    thresholds = []
    for s in range(d.shape[1]):
        want = int(round(cum[s] * n)) - (n - remaining.size)  # exits at this stage
        col = d[remaining, s]
        if want <= 0 or col.size == 0:
            eta = 0.0
        elif want >= col.size:
            eta = float(col.max()) * 2.0 + 1e-6
        else:
            srt = np.sort(col)
            eta = float(0.5 * (srt[want - 1] + srt[want]))
        thresholds.append(eta)
        remaining = remaining[~(col < eta)]
    return thresholds


@torch.no_grad()
def exit_differences(deer: DeeR, inputs: Iterable[Batch]) -> np.ndarray:
    """(N, decisions) chunk_distance between consecutive exits, over every input sample."""
    rows = []
    device = next(deer.head.parameters()).device
    for batch in inputs:
        x, _ = _split(batch, device)
        chunks = [deer.head(h) for h in deer.exit_hiddens(x)]  # exits x (B, H, D)
        d = [chunk_distance(chunks[i], chunks[i - 1]) for i in range(1, len(chunks) - 1)]
        rows.append(torch.stack(d, dim=1) if d else x.new_zeros(x.shape[0], 0))
    return torch.cat(rows).double().cpu().numpy()


# -- training ------------------------------------------------------------------------------

def train_flexidepth(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig,
                     model_cfg: FlexiDepthConfig = FlexiDepthConfig()
                     ) -> tuple[FlexiDepth, dict[str, Any]]:
    """Routers + adapters on every layer: L = L1(chunk, target) + alpha * (sum_l g_l)^2."""
    check_reiterable(inputs)
    device = vla.action_mean.device
    fd = FlexiDepth(vla.blocks, vla.cfg.d_model, model_cfg).to(device)
    params = fd.trainable_parameters()
    hist: dict[str, list[float]] = {'loss': [], 'task': [], 'mean_gates': []}
    with frozen([vla.blocks, vla.head]):
        opt, sched = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                    cfg.steps, cfg.min_lr_ratio)
        fd.routers.train()
        fd.adapters.train()
        bar = tqdm(range(cfg.steps), desc='flexidepth', disable=not cfg.progress)
        for _, (x, y) in zip(bar, _cycle(inputs, device)):
            target = _target(vla, x, y)
            h, g = fd.forward_train(x, cfg.flexi_hard)  # (B, T, C), (B, L)
            task = F.l1_loss(vla.head(h).float(), target.float())
            loss = task + cfg.flexi_alpha * g.sum(dim=1).pow(2).mean()
            _update(opt, sched, loss, params, cfg.grad_clip)
            hist['loss'].append(float(loss.detach()))
            hist['task'].append(float(task.detach()))
            hist['mean_gates'].append(float(g.detach().sum(dim=1).mean()))
            bar.set_postfix(loss=f'{hist["loss"][-1]:.4g}', g=f'{hist["mean_gates"][-1]:.1f}')
    fd.eval()
    ev = _evaluate(vla, inputs, cfg.eval_samples, fd.infer, vla.head)
    return fd, {'steps': cfg.steps, **_summary(hist), 'eval': ev}


def train_deer(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig,
               target_layers: float, model_cfg: DeeRConfig = DeeRConfig()
               ) -> tuple[DeeR, dict[str, Any]]:
    """Train the shared exit head (mean L1 over exits), then solve eta_i on the inputs."""
    check_reiterable(inputs)
    device = vla.action_mean.device
    deer = DeeR.from_vla(vla, model_cfg).to(device)
    params = deer.trainable_parameters()
    hist: dict[str, list[float]] = {'loss': []}
    with frozen([vla.blocks, vla.head]):
        opt, sched = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                    cfg.steps, cfg.min_lr_ratio)
        deer.head.train()
        bar = tqdm(range(cfg.steps), desc='deer head', disable=not cfg.progress)
        for _, (x, y) in zip(bar, _cycle(inputs, device)):
            with torch.no_grad():
                hs = deer.exit_hiddens(x)  # exits x (B, T, C)
                target = y if y is not None else vla.head(hs[-1])
            loss = torch.stack([F.l1_loss(deer.head(h).float(), target.float())
                                for h in hs]).mean()
            _update(opt, sched, loss, params, cfg.grad_clip)
            hist['loss'].append(float(loss.detach()))
            bar.set_postfix(loss=f'{hist["loss"][-1]:.4g}')
    deer.eval()
    diffs = exit_differences(deer, inputs)
    shares = deer_shares(deer.exits[1:], target_layers)
    deer.set_thresholds(solve_deer_thresholds(diffs, shares))
    ev = _evaluate(vla, inputs, cfg.eval_samples, deer.infer, None)
    return deer, {'steps': cfg.steps, **_summary(hist), 'target_layers': float(target_layers),
                  'shares': shares.tolist(), 'eval': ev}


def keep_layers(similarity: np.ndarray, k: int) -> list[int]:
    """The k layers with the lowest s_l (ties to the earlier layer), in execution order."""
    s = np.asarray(similarity, dtype=np.float64)
    require(1 <= k <= s.size, 'k', k, f'1..{s.size}')
    return sorted(np.argsort(s, kind='stable')[:k].tolist())


def train_static_depth(vla: VLA, inputs: Iterable[Batch], cfg: BaselineTrainConfig, k: int,
                       similarity: Optional[np.ndarray] = None
                       ) -> tuple[StaticDepth, dict[str, Any]]:
    """Keep the k lowest-s_l layers; fine-tune their copies and a head copy with
    L1(chunk, target) + distill_weight * (MSE(h, h_teacher) + L1(chunk, chunk_teacher))."""
    check_reiterable(inputs)
    device = vla.action_mean.device
    if similarity is None:
        similarity = layer_similarity(vla.blocks, [_split(b, device)[0] for b in inputs],
                                      progress=cfg.progress)
    kept = keep_layers(similarity, k)
    sd = StaticDepth.from_vla(vla, kept).to(device)
    params = sd.trainable_parameters()
    hist: dict[str, list[float]] = {'loss': [], 'task': [], 'distill': []}
    with frozen([vla.blocks, vla.head]):
        opt, sched = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                    cfg.steps, cfg.min_lr_ratio)
        sd.train()
        bar = tqdm(range(cfg.steps), desc='static depth', disable=not cfg.progress)
        for _, (x, y) in zip(bar, _cycle(inputs, device)):
            with torch.no_grad():
                h_t = _full(vla, x)  # (B, T, C)
                a_t = vla.head(h_t)  # (B, H, D)
            h = sd(x)
            chunk = sd.head(h).float()
            task = F.l1_loss(chunk, (a_t if y is None else y).float())
            kd = hidden_mse(h, h_t, cfg.relative_mse) + F.l1_loss(chunk, a_t.float())
            loss = task + cfg.distill_weight * kd
            _update(opt, sched, loss, params, cfg.grad_clip)
            hist['loss'].append(float(loss.detach()))
            hist['task'].append(float(task.detach()))
            hist['distill'].append(float(kd.detach()))
            bar.set_postfix(loss=f'{hist["loss"][-1]:.4g}')
    sd.eval()
    ev = _evaluate(vla, inputs, cfg.eval_samples, sd.infer, sd.head)
    return sd, {'steps': cfg.steps, 'kept': kept,
                'similarity': [float(v) for v in similarity], **_summary(hist), 'eval': ev}


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
    xs = [_split(b, device)[0] for b in inputs]
    out = distill(dysl, xs, distill_cfg, head=vla.head, joint=name == 'dysl-joint')
    dysl.eval()
    save_dysl(dysl, directory, guidance)
    return {'layout': layout.to_dict(), 'stage2_after': out['stage2']['after']}


# -- matching DySL's mean executed layers ---------------------------------------------------

def mean_layers_run(policy: Policy, episodes: Sequence[Episode],
                    max_steps: Optional[int] = None) -> float:
    """Open-loop mean of StepStats.layers_run (verification re-runs included) over the
    observations of demonstration episodes, the guidance reset at each episode start."""
    counts = []
    for ep in tqdm(episodes, desc='mean layers run', leave=False):
        policy.reset()
        n = ep.length if max_steps is None else min(max_steps, ep.length)
        for t in range(n):
            _, stats = policy.step({c: v[t] for c, v in ep.images.items()}, ep.instruction)
            counts.append(stats.layers_run)
    if not counts:
        raise ValueError('no steps to measure: the episodes are empty')
    return float(np.mean(counts))


# -- everything ----------------------------------------------------------------------------

def train_all_baselines(model_dir: Path, episodes: Sequence[Episode],
                        methods: Sequence[str] = TRAINABLE,
                        cfg: BaselineTrainConfig = BaselineTrainConfig(),
                        distill_cfg: DistillConfig = DistillConfig(),
                        target_layers: Optional[float] = None, device: str = 'cpu',
                        batch_size: int = 32, batches: Optional[int] = None,
                        measure_episodes: Optional[int] = None, seed: int = 0
                        ) -> dict[str, Any]:
    """Make every requested baseline / ablation of the model in `model_dir` from demos.

    target_layers, DySL's mean executed layers per step (what random skip, DeeR and static
    depth match), is measured open-loop with the 'dysl' policy over the first
    measure_episodes episodes when not given. Training batches are random demo samples,
    embedded by the frozen VLA, with their normalised action chunks (batches per pass:
    one epoch by default). Writes the parts (see dysl_ros.runtime.methods) and
    <model_dir>/baselines/summary.json; returns that summary.
    """
    unknown = sorted(set(methods) - set(TRAINABLE))
    if unknown:
        raise ValueError(f'unknown methods {unknown}; trainable: {TRAINABLE}')
    model_dir = Path(model_dir)
    torch.manual_seed(seed)
    vla = load_vla(model_dir, map_location=device)
    stats = {'mean': vla.action_mean.cpu().numpy(), 'std': vla.action_std.cpu().numpy()}
    dataset = DemoDataset.for_model(episodes, stats, vla)  # the model's normalisation
    n_batches = batches or max(1, math.ceil(len(dataset) / batch_size))
    pairs = EmbeddedBatches(vla, dataset, batch_size, n_batches, seed, with_actions=True)
    hidden = EmbeddedBatches(vla, dataset, batch_size, n_batches, seed)
    summary: dict[str, Any] = {'methods': {}, 'samples': len(dataset)}
    if target_layers is None and set(methods) & {'random-skip', 'deer', 'static-depth'}:
        if not (model_dir / DYSL_JSON).is_file():
            raise FileNotFoundError(f'{model_dir / DYSL_JSON} is missing: distil DySL first, '
                                    'or pass target_layers (--target-layers)')
        target_layers = mean_layers_run(make_policy('dysl', model_dir, vla=vla),
                                        episodes[:measure_episodes])
    summary['target_layers'] = target_layers
    layout, dysl_cfg, guidance = _dysl_parts(vla, model_dir, hidden, dataset)
    for name in methods:
        out_dir = (ablation_dir if name in ABLATIONS else baseline_dir)(model_dir, name)
        if name == 'random-skip':
            q = solve_random_skip_q(layout, target_layers)
            save_random_skip(out_dir, layout, q, seed, {'target_layers': target_layers})
            info: dict[str, Any] = {'q': q}
        elif name == 'flexidepth':
            module, info = train_flexidepth(vla, pairs, cfg)
            save_baseline(module, out_dir, {'train': info, 'config': cfg.to_dict()})
        elif name == 'deer':
            module, info = train_deer(vla, pairs, cfg, target_layers)
            save_baseline(module, out_dir, {'train': info, 'config': cfg.to_dict()})
        elif name == 'static-depth':
            k = int(min(vla.cfg.n_layers, max(1, round(target_layers))))
            module, info = train_static_depth(vla, pairs, cfg, k, _stored_similarity(model_dir))
            save_baseline(module, out_dir, {'train': info, 'config': cfg.to_dict(),
                                            'target_layers': target_layers})
        else:
            info = train_dysl_ablation(vla, hidden, name, layout, dysl_cfg, distill_cfg,
                                       guidance, out_dir)
        summary['methods'][name] = {'dir': str(out_dir), **_brief(info)}
    (model_dir / 'baselines').mkdir(parents=True, exist_ok=True)
    write_json(model_dir / 'baselines' / 'summary.json', summary)
    return summary


def _stored_similarity(model_dir: Path) -> Optional[np.ndarray]:
    """s_l from calibrate's calibration.json when it is there (saves a pass over the demos)."""
    if not (Path(model_dir) / CALIBRATION_JSON).is_file():
        return None
    return np.asarray(read_calibration(model_dir)['similarity'], dtype=np.float64)


def _dysl_parts(vla: VLA, model_dir: Path, hidden: Iterable[torch.Tensor],
                dataset: DemoDataset) -> tuple[Layout, DySLConfig, dict[str, Any]]:
    """The main DySL's layout, config and guidance; calibrated here when it is absent."""
    if (model_dir / DYSL_JSON).is_file():
        meta = read_json(model_dir / DYSL_JSON)
        return (Layout.from_dict(meta['layout']), DySLConfig.from_dict(meta['config']),
                dict(meta['guidance']))
    cfg = DySLConfig()
    layout = select_static(layer_similarity(vla.blocks, hidden), cfg.static_ratio,
                           cfg.first_layer_static)
    tau = calibrate_tau(dataset.episode_actions(normalised=True), GuidanceConfig().history)
    return layout, cfg, dataclasses.asdict(GuidanceConfig(tau=tau))


# -- CLI -----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model-dir', required=True, type=Path,
                        help='holds vla.json (+ dysl.json); parts are written below it')
    parser.add_argument('--demos', required=True, type=Path,
                        help='demonstration folder (python -m dysl_ros gen-demos)')
    parser.add_argument('--methods', nargs='+', default=list(TRAINABLE), choices=TRAINABLE,
                        help='what to make (default: all)')
    parser.add_argument('--steps', type=int, default=BaselineTrainConfig.steps,
                        help='optimiser steps per baseline')
    parser.add_argument('--distill-steps', type=int, nargs=2, metavar=('STAGE1', 'STAGE2'),
                        help='stage steps of the DySL ablations (default: DistillConfig)')
    parser.add_argument('--lr', type=float, default=BaselineTrainConfig.lr)
    parser.add_argument('--alpha', type=float, default=BaselineTrainConfig.flexi_alpha,
                        help="FlexiDepth's layer-budget weight alpha")
    parser.add_argument('--target-layers', type=float,
                        help="DySL's mean executed layers (default: measured on the demos)")
    parser.add_argument('--measure-episodes', type=int, default=20,
                        help='episodes replayed to measure the target (default 20)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--batches', type=int,
                        help='batches per pass over the demos (default: one epoch)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Train / calibrate every requested method of --model-dir on the demos in --demos."""
    episodes, _ = load_demos(args.demos)
    cfg = BaselineTrainConfig(steps=args.steps, lr=args.lr, flexi_alpha=args.alpha)
    dcfg = main_distill_config(args.model_dir, args.seed)
    if args.distill_steps:
        dcfg = dataclasses.replace(dcfg, stage1_steps=args.distill_steps[0],
                                   stage2_steps=args.distill_steps[1])
    summary = train_all_baselines(args.model_dir, episodes, args.methods, cfg, dcfg,
                                  args.target_layers, args.device, args.batch_size,
                                  args.batches, args.measure_episodes, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def main_distill_config(model_dir: Path, seed: int = 0) -> DistillConfig:
    """The main DySL's distillation settings (lambda, lr, ...) from <model_dir>/distill.json,
    so an ablation differs from DySL in the one thing it ablates; the defaults without it."""
    path = Path(model_dir) / DISTILL_JSON
    if not path.is_file():
        return DistillConfig(seed=seed)
    try:
        cfg = from_dict(DistillConfig, read_json(path)['config'])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'{path}: no valid distillation config ({e}); rerun distill') from None
    return dataclasses.replace(cfg, seed=seed)


# -- helpers -------------------------------------------------------------------------------

def _split(batch: Batch, device: Optional[torch.device]
           ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
    if x.dim() != 3:
        raise ValueError(f'inputs must be hidden states (B, T, C), got {tuple(x.shape)}')
    if device is not None:
        x = x.to(device)
        y = None if y is None else y.to(device)
    return x, y


def _cycle(inputs: Iterable[Batch], device: torch.device
           ) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    while True:
        n = 0
        for batch in inputs:
            n += 1
            yield _split(batch, device)
        if n == 0:
            raise ValueError('inputs is empty: need at least one batch')


def _full(vla: VLA, x: torch.Tensor) -> torch.Tensor:
    for block in vla.blocks:
        x = block(x)
    return x  # (B, T, C)


def _target(vla: VLA, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """Demonstration chunk, or the full-depth teacher's chunk without one."""
    if y is not None:
        return y
    with torch.no_grad():
        return vla.head(_full(vla, x))  # (B, H, D)


def _update(opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor, params: list,
            clip: float) -> None:
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f'non-finite training loss {float(loss)}: lower lr or check '
                                 'the inputs')
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()


@torch.no_grad()
def _evaluate(vla: VLA, inputs: Iterable[Batch], max_samples: int, infer: Any,
              head: Any) -> dict[str, float]:
    """Batch-1 inference on the first samples: mean layers run and L1 to the teacher chunk."""
    layers, errors = [], []
    device = vla.action_mean.device
    for batch in inputs:
        x, _ = _split(batch, device)
        for i in range(x.shape[0]):
            if len(layers) >= max_samples:
                break
            out = infer(x[i:i + 1])
            chunk = out.chunk if out.chunk is not None else head(out.hidden)
            teacher = vla.head(_full(vla, x[i:i + 1]))
            layers.append(len(out.layer_ids))
            errors.append(float((chunk.float() - teacher.float()).abs().mean()))
        if len(layers) >= max_samples:
            break
    return {'mean_layers': float(np.mean(layers)), 'action_error': float(np.mean(errors)),
            'samples': len(layers)}


def _summary(hist: dict[str, list[float]]) -> dict[str, Any]:
    """First and last values of each training curve (the JSON stays small)."""
    return {f'{k}_{w}': (v[0] if w == 'first' else v[-1]) for k, v in hist.items() if v
            for w in ('first', 'last')}


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ('similarity',)}
