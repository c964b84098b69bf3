"""Save and load models as safetensors + JSON (no pickle anywhere)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..layout import Layout
from ..paths import DYSL_JSON, VLA_JSON
from .config import DySLConfig, VLAConfig
from .dysl import DySL
from .tokenizer import WordTokenizer
from .vla import VLA

VLA_WEIGHTS, DYSL_WEIGHTS = 'vla.safetensors', 'dysl.safetensors'  # beside VLA_JSON, DYSL_JSON
FORMAT = 1


def read_json(path: Path) -> dict:
    """Parse a JSON file, or raise ValueError naming the file and what is wrong."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: no such file') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from None


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + '\n')


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, or raise ValueError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'{path}: no such file')
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f'{path}: not a readable safetensors file ({e})') from None


def save_vla(vla: VLA, directory: Path, half: bool = False) -> None:
    """Write vla.safetensors + vla.json (config, vocabulary) into `directory`. half: store the
    parameters in float16 (half the file, for a model kept in git; load_vla converts them
    back), buffers such as the action statistics in full precision."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = {name for name, _ in vla.named_parameters()}
    state = {k: (v.half() if half and k in params else v).detach().contiguous()
             for k, v in vla.state_dict().items()}
    save_file(state, str(directory / VLA_WEIGHTS))
    write_json(directory / VLA_JSON, {'format': FORMAT, 'config': vla.cfg.to_dict(),
                                      'vocab': list(vla.tokenizer.vocab)})


def load_vla(directory: Path, map_location: str = 'cpu') -> VLA:
    """Rebuild a VLA from `directory` in float32 (half-stored weights too); the model comes
    back in eval mode."""
    directory = Path(directory)
    meta = read_json(directory / VLA_JSON)
    _check_format(directory / VLA_JSON, meta)
    cfg = VLAConfig.from_dict(meta['config'])
    vla = VLA(cfg, WordTokenizer(meta['vocab'], cfg.max_instruction_tokens))
    _load_state(vla, read_tensors(directory / VLA_WEIGHTS), directory / VLA_WEIGHTS)
    return vla.to(map_location).eval()


def save_dysl(dysl: DySL, directory: Path, guidance: dict[str, Any]) -> None:
    """Write only the trainable parts (adapters, controllers), the layout and the guidance
    configuration (tau, K, ...) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in dysl.trainable_state_dict().items()}
    save_file(state, str(directory / DYSL_WEIGHTS))
    write_json(directory / DYSL_JSON, {'format': FORMAT, 'layout': dysl.layout.to_dict(),
                                       'config': dysl.cfg.to_dict(), 'guidance': guidance})


def load_dysl(directory: Path, vla: VLA) -> tuple[DySL, dict[str, Any]]:
    """Attach saved adapters and controllers to `vla`'s blocks; returns (DySL, guidance dict)."""
    directory = Path(directory)
    meta = read_json(directory / DYSL_JSON)
    _check_format(directory / DYSL_JSON, meta)
    layout = Layout.from_dict(meta['layout'])
    dysl = DySL(vla.blocks, vla.cfg.d_model, layout, DySLConfig.from_dict(meta['config']))
    try:
        dysl.load_trainable_state_dict(read_tensors(directory / DYSL_WEIGHTS))
    except (ValueError, RuntimeError) as e:
        raise ValueError(f'{directory / DYSL_WEIGHTS}: {e}') from None
    dysl.to(vla.action_mean.device).eval()
    return dysl, dict(meta['guidance'])


def update_guidance(directory: Path, guidance: dict[str, Any], layout: Layout) -> None:
    """Store new guidance settings (tau, margins, ...) with saved DySL parts; the parts were
    trained for one layout, so a calibration with another layout is refused."""
    path = Path(directory) / DYSL_JSON
    meta = read_json(path)
    _check_format(path, meta)
    if Layout.from_dict(meta['layout']) != layout:
        raise ValueError(f'{path}: its layout {meta["layout"]["static"]} differs from the '
                         f'calibrated static layers {list(layout.static)}; distil again')
    meta['guidance'] = dict(guidance)
    write_json(path, meta)


def _check_format(path: Path, meta: dict) -> None:
    if meta.get('format') != FORMAT:
        raise ValueError(f'{path}: format {meta.get("format")!r} is not the supported {FORMAT}')


def _load_state(module: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f'{path}: weights do not fit the config ({e})') from None
