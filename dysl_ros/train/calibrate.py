"""Stage 0 of DySL: pick the static ("informative") layers of a frozen block stack.

For every layer l, s_l is the mean cosine similarity between its input and output hidden
states over calibration samples and tokens; the layers that change their input the most
(lowest s_l) are static (dysl-method.md section 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..layout import Layout
from ..model.config import VLAConfig

if TYPE_CHECKING:  # torch-heavy modules: loaded only when calibrating
    from ..model.dysl import DySL
    from ..model.vla import VLA
    from .dataset import DemoDataset


def module_device(modules: Iterable[nn.Module]) -> torch.device:
    """The device of the first parameter or buffer found (CPU when there is none)."""
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            return t.device
    return torch.device('cpu')


@torch.no_grad()
def layer_similarity(blocks: Sequence[nn.Module], inputs: Iterable[torch.Tensor],
                     progress: bool = True) -> np.ndarray:
    """(L,) s_l = mean over samples and tokens of cos(x_l_in, x_l_out) along the stack."""
    if len(blocks) == 0:
        raise ValueError('blocks is empty: nothing to calibrate')
    device = module_device(blocks)
    modes = [b.training for b in blocks]
    for b in blocks:
        b.eval()
    sums = torch.zeros(len(blocks), dtype=torch.float64, device=device)
    count = 0
    try:
        for x in tqdm(inputs, desc='layer similarity', disable=not progress, leave=False):
            if x.dim() != 3:
                raise ValueError(f'inputs must be hidden states (B, T, C), got {tuple(x.shape)}')
            x = x.to(device)
            for i, block in enumerate(blocks):
                y = block(x)
                cos = F.cosine_similarity(x.float(), y.float(), dim=-1)  # (B, T)
                sums[i] += cos.double().sum()
                x = y
            count += x.shape[0] * x.shape[1]
    finally:
        for b, mode in zip(blocks, modes):
            b.train(mode)
    if count == 0:
        raise ValueError('inputs yielded no hidden states: need calibration samples')
    return (sums / count).cpu().numpy()


def num_static(num_layers: int, ratio: float) -> int:
    """ceil(ratio * L), robust to float error (0.3 * 10 is 3, not 4)."""
    return int(math.ceil(round(ratio * num_layers, 9)))


STATIC_RULES = ('spread', 'lowest')


def select_static(similarity: np.ndarray, ratio: float = 0.2,
                  first_layer_static: bool = True, rule: str = 'spread') -> Layout:
    """The static layers from each layer's input/output similarity s_l: n = ceil(ratio * L).

    rule='lowest': the n layers with the lowest s_l (the method's rule as stated), plus
    layer 0 when first_layer_static (RECON). On a backbone whose late layers all barely
    change the hidden state this puts every static layer at the bottom, and DySL degenerates
    into an early exit (a single segment holds all the dynamic layers).
    rule='spread' (RECON, the default): the depth is cut into n equal windows and each
    window's lowest-s_l layer is static (layer 0 for the first window when
    first_layer_static), at least two layers after the previous pick where the window
    allows, so that every segment but the last holds a dynamic layer: static layers, allow
    points and skips exist along the whole depth, and no segment is longer than two
    windows. Ties go to the earlier layer.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f'similarity must be a non-empty (L,) array, got shape {s.shape}')
    if not np.all(np.isfinite(s)):
        raise ValueError(f'similarity has non-finite values at layers '
                         f'{np.flatnonzero(~np.isfinite(s)).tolist()}')
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f'ratio={ratio!r} is invalid: expected a value in [0, 1]')
    if rule not in STATIC_RULES:
        raise ValueError(f'rule={rule!r} is invalid: expected one of {STATIC_RULES}')
    L, n = s.size, num_static(s.size, ratio)
    if rule == 'lowest':
        chosen = set(np.argsort(s, kind='stable')[:n].tolist())
    else:
        edges = [round(i * L / n) for i in range(n + 1)]
        picks: list[int] = []
        for a, b in zip(edges, edges[1:]):
            if not picks and first_layer_static:
                picks.append(0)  # the first window's static layer is layer 0
                continue
            lo = picks[-1] + 2 if picks and picks[-1] + 2 < b else a  # >= 1 dynamic layer
            picks.append(max(lo, a) + int(np.argmin(s[max(lo, a):b])))
        chosen = set(picks)
    if first_layer_static:
        chosen.add(0)
    elif 0 not in chosen:
        raise ValueError('first_layer_static=False needs layer 0 among the chosen layers '
                         f'(a Layout requires layer 0 static); chosen {sorted(chosen)}')
    return Layout(L, tuple(sorted(chosen)))


def fresh_model(cfg: VLAConfig = VLAConfig(), seed: int = 0, static_ratio: float = 0.2,
                calibration_batches: int = 2) -> tuple['VLA', 'DySL']:
    """A freshly built VLA (random weights) with a calibrated layout and fresh DySL parts.

    For smoke runs and benchmarks of latency when no trained model exists yet: the layout
    is calibrated as in stage 0 (lowest input/output cosine similarity on random inputs).
    """
    from ..model import DySL, DySLConfig, VLA
    torch.manual_seed(seed)
    vla = VLA(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        calib = [vla.embed(torch.rand(4, len(cfg.cameras), 3, cfg.image_size, cfg.image_size,
                                      generator=g) * 2 - 1,
                           torch.randint(2, len(vla.tokenizer),
                                         (4, cfg.max_instruction_tokens), generator=g))
                 for _ in range(calibration_batches)]
        layout = select_static(layer_similarity(vla.blocks, calib, progress=False),
                               ratio=static_ratio)
    return vla, DySL(vla.blocks, cfg.d_model, layout, DySLConfig(static_ratio=static_ratio)).eval()


# -- on demonstrations, and the CLI --------------------------------------------------------

CALIBRATION_JSON = 'calibration.json'


TAU_SOURCES = ('model', 'demos')


def calibrate_model(vla: VLA, dataset: DemoDataset, ratio: float = 0.2,
                    first_layer_static: bool = True, rule: str = 'spread',
                    samples: int = 256, batch_size: int = 32,
                    history: int = 5, percentile: float = 85.0, seed: int = 0,
                    progress: bool = True, tau_from: str = 'model', executed_actions: int = 0,
                    tau_episodes: int = 200) -> dict[str, Any]:
    """Stage 0 on demonstrations: the static layers from embedded demo observations, and tau.

    tau_from='model' (default) calibrates tau on what the guidance will see: the actions the
    full-depth model predicts on demo observations, `executed_actions` of each chunk (0: all)
    per inference, over `tau_episodes` episodes. 'demos' uses the expert's actions. Both see
    the demos' states; in closed loop a policy meets its own, and its actions may jitter more
    there (the default model: 0.13 here, 0.4 chosen in closed loop), so check tau with
    `bench closed-loop --guidance tau=...` before shipping it."""
    from ..guidance import GuidanceConfig, calibrate_tau
    from .dataset import EmbeddedBatches
    if tau_from not in TAU_SOURCES:
        raise ValueError(f'tau_from={tau_from!r}: expected one of {TAU_SOURCES}')
    batches = max(1, math.ceil(samples / batch_size))
    inputs = EmbeddedBatches(vla, dataset, batch_size, batches, seed)
    s = layer_similarity(vla.blocks, inputs, progress)
    layout = select_static(s, ratio, first_layer_static, rule)
    if tau_from == 'model':
        actions = predicted_action_episodes(vla, dataset, executed_actions, tau_episodes, seed)
    else:
        actions = dataset.episode_actions(vla.action_mean.detach().cpu().numpy(),
                                          vla.action_std.detach().cpu().numpy())  # (T, D) each
    tau = calibrate_tau(actions, history, percentile)
    return {'format': 1, 'layout': layout.to_dict(), 'similarity': s.tolist(),
            'ratio': ratio, 'first_layer_static': first_layer_static, 'rule': rule,
            'samples': batches * batch_size, 'tau_percentile': percentile,
            'tau_from': tau_from,
            'guidance': dataclasses.asdict(GuidanceConfig(
                tau=tau, history=history, executed_actions=executed_actions))}


@torch.no_grad()
def predicted_action_episodes(vla: VLA, dataset: DemoDataset, executed_actions: int = 0,
                              episodes: int = 200, seed: int = 0) -> list[np.ndarray]:
    """The normalised action stream the full-depth model would hand the guidance on each of
    `episodes` random demo episodes: a chunk every n steps of the demo, its first n actions
    (n = executed_actions, 0: the whole chunk), cut to the episode's length. (T, D) each."""
    n = executed_actions or vla.cfg.chunk_size
    if not 1 <= n <= vla.cfg.chunk_size:
        raise ValueError(f'executed_actions={executed_actions}: expected 0..'
                         f'{vla.cfg.chunk_size} (the chunk size)')
    ids = np.unique(dataset.episode_of)
    ids = np.random.default_rng(seed).permutation(ids)[:max(1, episodes)]
    device = vla.action_mean.device
    was_training = vla.training
    vla.eval()
    try:
        out = []
        for e in ids:
            steps = np.flatnonzero(dataset.episode_of == e)  # (T,) this episode's samples
            b = dataset.batch(steps[::n])
            chunks = vla(b['images'].to(device), b['tokens'].to(device))  # (B, H, D)
            stream = chunks[:, :n].reshape(-1, chunks.shape[-1])[:steps.size]
            out.append(stream.float().cpu().numpy())
        return out
    finally:
        vla.train(was_training)


def read_calibration(model_dir: Path) -> dict[str, Any]:
    """`<model_dir>/calibration.json`, with its layout checked."""
    from ..model.io import read_json
    path = Path(model_dir) / CALIBRATION_JSON
    calib = read_json(path)
    try:
        Layout.from_dict(calib['layout'])
        float(calib['guidance']['tau'])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'{path}: not a valid calibration ({e}); rerun calibrate') from None
    return calib


def format_calibration(calib: dict[str, Any]) -> str:
    """A short table: s_l per layer with the static ones marked, then tau."""
    static = set(calib['layout']['static'])
    lines = ['layer  s_l      static']
    lines += [f'{i:5d}  {s:.4f}  {"*" if i in static else ""}'
              for i, s in enumerate(calib['similarity'])]
    lines.append(f'static {sorted(static)} of {len(calib["similarity"])}; '
                 f'tau = {calib["guidance"]["tau"]:.4g} (K = {calib["guidance"]["history"]}, '
                 + (f'set by --guidance; calibrated {calib.get("tau_calibrated", float("nan")):.4g})'
                    if 'tau' in calib.get('guidance_overrides', {})
                    else f'from the {calib.get("tau_from", "demos")}\'s actions)'))
    return '\n'.join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m dysl_ros calibrate`."""
    from ..model.config import DySLConfig
    d = DySLConfig()
    parser.add_argument('--model-dir', required=True, type=Path,
                        help='model folder (vla.json); calibration.json is written there')
    parser.add_argument('--demos', required=True, type=Path, help='demo folder (gen-demos)')
    parser.add_argument('--ratio', type=float, default=d.static_ratio,
                        help='share of static layers, rho (FOUND: about 0.2)')
    parser.add_argument('--static-rule', choices=STATIC_RULES, default='spread',
                        help='spread (default, RECON): the lowest-similarity layer of each of '
                             'ceil(ratio * L) equal windows; lowest: the ceil(ratio * L) '
                             'lowest-similarity layers (all at the bottom when the late layers '
                             'barely change the hidden state)')
    parser.add_argument('--samples', type=int, default=256, help='calibration observations')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--history', type=int, default=5, help='K of the continuity')
    parser.add_argument('--percentile', type=float, default=85.0,
                        help='tau = this percentile of |dC| over continuity drops (RECON)')
    parser.add_argument('--tau-from', choices=TAU_SOURCES, default='model',
                        help="'model' (default): the full-depth model's predictions on demo "
                             "observations, as the guidance will see them; 'demos': the "
                             "expert's actions")
    parser.add_argument('--tau-episodes', type=int, default=200,
                        help="demo episodes the 'model' tau is calibrated on")
    parser.add_argument('--guidance', nargs='+', default=[], metavar='KEY=VALUE',
                        help='guidance settings to store instead of the defaults, e.g. '
                             'drop_margin=1.0 executed_actions=8 (executed_actions also sets '
                             'how the model tau is measured; a tau given here replaces the '
                             'calibrated one); also refreshes dysl.json when the DySL parts '
                             'exist')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='auto', help="'auto' (CUDA if present), cpu, cuda")
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    """Calibrate static layers and tau of a trained VLA; writes calibration.json."""
    from ..guidance import GuidanceConfig, parse_overrides
    from ..model.io import DYSL_JSON, load_vla, update_guidance, write_json
    from .optim import pick_device
    from .dataset import DemoDataset, load_demos
    vla = load_vla(args.model_dir, map_location=str(pick_device(args.device)))
    episodes, stats = load_demos(args.demos)
    overrides = parse_overrides(args.guidance)
    calib = calibrate_model(vla, DemoDataset.for_model(episodes, stats, vla), args.ratio,
                            rule=args.static_rule, samples=args.samples, batch_size=args.batch_size,
                            history=args.history, percentile=args.percentile, seed=args.seed,
                            progress=not args.quiet, tau_from=args.tau_from,
                            executed_actions=overrides.get('executed_actions', 0),
                            tau_episodes=args.tau_episodes)
    calib['demos'] = str(args.demos)
    calib['tau_calibrated'] = calib['guidance']['tau']   # kept when --guidance sets tau
    calib['guidance'] = dataclasses.asdict(
        dataclasses.replace(GuidanceConfig(**calib['guidance']), **overrides))
    calib['guidance_overrides'] = overrides
    write_json(Path(args.model_dir) / CALIBRATION_JSON, calib)
    print(format_calibration(calib))
    print(f'wrote {Path(args.model_dir) / CALIBRATION_JSON}')
    if (Path(args.model_dir) / DYSL_JSON).is_file():
        update_guidance(args.model_dir, calib['guidance'], Layout.from_dict(calib['layout']))
        print(f'updated the guidance of {Path(args.model_dir) / DYSL_JSON}')
    return 0
