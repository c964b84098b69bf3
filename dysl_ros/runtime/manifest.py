"""The export manifest: every unit's file, tensors and sha256, plus all a runtime needs.

One JSON file next to the ONNX units. A runner and a GuidedPolicy are built from it alone:
the static/dynamic layout, the controller threshold, the guidance settings (tau, K =
`guidance['history']`), cameras, image size, tokenizer vocabulary, action names and
normalisation statistics. Every file is read through `Manifest.read`, which checks its
sha256, so a changed file is refused by name before anything runs.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..guidance import GuidanceConfig
from ..layout import Layout
from ..model.config import from_dict
from ..model.tokenizer import WordTokenizer
from .policy import ModelSpec

FORMAT = 1
MANIFEST_NAME = 'manifest.json'
KINDS = ('embed', 'layer', 'adapter', 'controller', 'segment', 'head')
GRANULARITIES = ('segment', 'unit')  # one graph per static segment, or per unit (debugging)
DTYPES = ('float32', 'float16', 'int64', 'int32')
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
_FILE = re.compile(r'^[A-Za-z0-9_.-]+$')


class ManifestError(ValueError):
    """A manifest, or a file it lists, is missing, malformed or changed since export."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def unit_name(kind: str, index: Optional[int] = None) -> str:
    """'embed', 'head', or '<kind>_<index>' ('layer_3', 'adapter_4', 'segment_1')."""
    if kind not in KINDS:
        raise ValueError(f'kind={kind!r} is invalid: expected one of {KINDS}')
    if kind in ('embed', 'head'):
        return kind
    if index is None:
        raise ValueError(f'a {kind} unit needs an index')
    return f'{kind}_{int(index)}'


def guidance_config(d: dict, source: str = 'manifest') -> GuidanceConfig:
    """GuidanceConfig from a stored dict; unknown keys or bad values name the source."""
    try:
        return from_dict(GuidanceConfig, dict(d))
    except (TypeError, ValueError) as e:
        raise ManifestError(f'{source}: bad guidance entry ({e})') from None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a unit: name, static shape, numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, 'shape', tuple(int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f'tensor {self.name!r}: dtype={self.dtype!r} is invalid: '
                             f'expected one of {DTYPES}')
        if any(d < 1 for d in self.shape):
            raise ValueError(f'tensor {self.name!r}: shape={self.shape} is invalid: expected '
                             'static dimensions >= 1')

    def to_dict(self) -> dict:
        return {'name': self.name, 'shape': list(self.shape), 'dtype': self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> 'TensorSpec':
        return cls(str(d['name']), tuple(d['shape']), str(d['dtype']))


@dataclass(frozen=True)
class Unit:
    """One exported graph. A layer unit with `fused_controller = j` also outputs the skip
    probability of controller j (= layer + 1) computed on the layer's output. A segment
    unit (index k) runs layers [static, end) of segment k (model.segment.SegmentGraph)."""

    name: str
    kind: str
    index: Optional[int]
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fused_controller: Optional[int] = None
    layers: Optional[tuple[int, int]] = None  # a segment's [static, end)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'inputs', tuple(self.inputs))
        if self.layers is not None:
            object.__setattr__(self, 'layers', tuple(int(i) for i in self.layers))
        if (self.kind == 'segment') != (self.layers is not None):
            raise ValueError(f'unit {self.name}: layers={self.layers!r}: a segment unit, and '
                             'only a segment unit, names its layers [static, end)')
        object.__setattr__(self, 'outputs', tuple(self.outputs))
        if self.name != unit_name(self.kind, self.index):
            raise ValueError(f'unit name={self.name!r} does not fit kind={self.kind!r} '
                             f'index={self.index!r}')
        if not _FILE.match(self.file) or self.file.startswith('.'):
            raise ValueError(f'unit {self.name}: file={self.file!r} is invalid: expected a '
                             'plain file name inside the export directory')
        if not _SHA256.match(self.sha256):
            raise ValueError(f'unit {self.name}: sha256={self.sha256!r} is not 64 hex digits')
        if not self.inputs or not self.outputs:
            raise ValueError(f'unit {self.name}: needs at least one input and one output')
        if self.fused_controller is not None and (
                self.kind != 'layer' or self.fused_controller != self.index + 1):
            raise ValueError(f'unit {self.name}: fused_controller={self.fused_controller!r} is '
                             f'invalid: only layer i may fuse controller i + 1')

    def to_dict(self) -> dict:
        return {'name': self.name, 'kind': self.kind, 'index': self.index, 'file': self.file,
                'sha256': self.sha256, 'inputs': [t.to_dict() for t in self.inputs],
                'outputs': [t.to_dict() for t in self.outputs],
                'fused_controller': self.fused_controller,
                'layers': None if self.layers is None else list(self.layers)}

    @classmethod
    def from_dict(cls, d: dict) -> 'Unit':
        index = d.get('index')
        fused = d.get('fused_controller')
        layers = d.get('layers')
        return cls(str(d['name']), str(d['kind']), None if index is None else int(index),
                   str(d['file']), str(d['sha256']),
                   tuple(TensorSpec.from_dict(t) for t in d['inputs']),
                   tuple(TensorSpec.from_dict(t) for t in d['outputs']),
                   None if fused is None else int(fused),
                   None if layers is None else tuple(layers))


@dataclass(frozen=True)
class Manifest:
    """An exported DySL model: units + everything ModelSpec and GuidanceConfig need.

    `directory` is where the unit files live (not stored: the export can move).
    """

    directory: Path
    units: tuple[Unit, ...]
    layout: Layout
    cameras: tuple[str, ...]
    image_size: int
    vocab: tuple[str, ...]
    max_instruction_tokens: int
    action_names: tuple[str, ...]
    chunk_size: int
    action_mean: tuple[float, ...]
    action_std: tuple[float, ...]
    d_model: int
    num_tokens: int
    skip_threshold: float
    guidance: dict
    precision: str
    opset: int
    exporter: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'directory', Path(self.directory))
        for name in ('units', 'cameras', 'vocab', 'action_names', 'action_mean', 'action_std'):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise ValueError(f'duplicate unit names in {names}')
        D = len(self.action_names)
        if len(self.action_mean) != D or len(self.action_std) != D:
            raise ValueError(f'action_mean/action_std have {len(self.action_mean)}/'
                             f'{len(self.action_std)} entries for {D} action names')
        missing = [n for n in self.required_units() if n not in set(names)]
        if missing:
            raise ValueError(f'units {missing} are missing for layout {self.layout.to_dict()}')
        for u in self.units:
            if u.kind == 'segment':
                seg = self.layout.segments[u.index] if u.index < len(self.layout.segments) \
                    else None
                if seg is None or u.layers != (seg.static, seg.end):
                    raise ValueError(f'unit {u.name} runs layers {u.layers}, the layout\'s '
                                     f'segment {u.index} is {seg}')
        guidance_config(self.guidance)  # validated here, once

    # -- units --------------------------------------------------------------------------

    @property
    def granularity(self) -> str:
        """'segment' (one graph per static segment) or 'unit' (one per unit)."""
        return 'segment' if any(u.kind == 'segment' for u in self.units) else 'unit'

    def required_units(self) -> list[str]:
        """Names every export of this layout must hold (a fused controller counts as held)."""
        if self.granularity == 'segment':
            return ['embed', 'head'] + [unit_name('segment', k)
                                        for k in range(len(self.layout.segments))]
        fused = {u.fused_controller for u in self.units if u.fused_controller is not None}
        names = ['embed', 'head'] + [unit_name('layer', i) for i in range(self.layout.num_layers)]
        for j in self.layout.dynamic:
            names.append(unit_name('adapter', j))
            if j not in fused:
                names.append(unit_name('controller', j))
        return names

    def has(self, kind: str, index: Optional[int] = None) -> bool:
        name = unit_name(kind, index)
        return any(u.name == name for u in self.units)

    def unit(self, kind: str, index: Optional[int] = None) -> Unit:
        name = unit_name(kind, index)
        for u in self.units:
            if u.name == name:
                return u
        raise ManifestError(f'{self.manifest_path}: no unit {name!r}')

    def path(self, unit: Unit) -> Path:
        return self.directory / unit.file

    def read(self, unit: Unit) -> bytes:
        """The unit's file, after checking it exists and its sha256 matches the manifest."""
        path = self.path(unit)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ManifestError(f'{path}: missing (unit {unit.name} of {self.manifest_path}); '
                                're-export the model') from None
        actual = sha256_bytes(data)
        if actual != unit.sha256:
            raise ManifestError(
                f'{path}: sha256 {actual[:16]}... does not match the manifest '
                f'({unit.sha256[:16]}...): unit {unit.name} was changed after export; '
                're-export the model (python -m dysl_ros export)')
        return data

    def verify(self) -> None:
        """Check every unit file against its sha256 (raises ManifestError naming the file)."""
        for u in self.units:
            self.read(u)

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    # -- what a runtime needs -----------------------------------------------------------

    def spec(self) -> ModelSpec:
        """The ModelSpec of the exported model (no torch model needed)."""
        return ModelSpec(
            cameras=self.cameras, image_size=self.image_size,
            tokenizer=WordTokenizer(list(self.vocab), self.max_instruction_tokens),
            action_names=self.action_names, chunk_size=self.chunk_size,
            action_mean=np.asarray(self.action_mean, dtype=np.float32),
            action_std=np.asarray(self.action_std, dtype=np.float32),
            layout=self.layout, skip_threshold=self.skip_threshold)

    def guidance_config(self) -> GuidanceConfig:
        return guidance_config(self.guidance, str(self.manifest_path))

    # -- (de)serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            'format': FORMAT,
            'granularity': self.granularity,  # derived from the units; for readers
            'precision': self.precision,
            'opset': self.opset,
            'exporter': dict(self.exporter),
            'model': {
                'cameras': list(self.cameras), 'image_size': self.image_size,
                'vocab': list(self.vocab), 'max_instruction_tokens': self.max_instruction_tokens,
                'action_names': list(self.action_names), 'chunk_size': self.chunk_size,
                'action_mean': [float(v) for v in self.action_mean],
                'action_std': [float(v) for v in self.action_std],
                'd_model': self.d_model, 'num_tokens': self.num_tokens,
            },
            'layout': self.layout.to_dict(),
            'skip_threshold': self.skip_threshold,
            'guidance': dict(self.guidance),
            'units': [u.to_dict() for u in self.units],
        }

    def save(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.manifest_path
        path.write_text(json.dumps(self.to_dict(), indent=2) + '\n')
        return path

    @classmethod
    def from_dict(cls, d: dict, directory: Path) -> 'Manifest':
        m = d['model']
        return cls(
            directory=Path(directory), units=tuple(Unit.from_dict(u) for u in d['units']),
            layout=Layout.from_dict(d['layout']), cameras=tuple(m['cameras']),
            image_size=int(m['image_size']), vocab=tuple(m['vocab']),
            max_instruction_tokens=int(m['max_instruction_tokens']),
            action_names=tuple(m['action_names']), chunk_size=int(m['chunk_size']),
            action_mean=tuple(float(v) for v in m['action_mean']),
            action_std=tuple(float(v) for v in m['action_std']),
            d_model=int(m['d_model']), num_tokens=int(m['num_tokens']),
            skip_threshold=float(d['skip_threshold']), guidance=dict(d['guidance']),
            precision=str(d['precision']), opset=int(d['opset']),
            exporter=dict(d.get('exporter', {})))

    @classmethod
    def load(cls, path: Path | str) -> 'Manifest':
        """Read a manifest (its JSON file, or the export directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f'{path}: no such manifest; export the model first '
                                '(python -m dysl_ros export)') from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f'{path}: not valid JSON ({e})') from None
        if not isinstance(d, dict) or d.get('format') != FORMAT:
            got = d.get('format') if isinstance(d, dict) else type(d).__name__
            raise ManifestError(f'{path}: format {got!r} is not the supported {FORMAT}')
        try:
            return cls.from_dict(d, path.parent)
        except KeyError as e:
            raise ManifestError(f'{path}: missing entry {e}') from None
        except (TypeError, ValueError) as e:
            raise ManifestError(f'{path}: {e}') from None


def check_tensors(unit: Unit, got: Sequence[tuple[str, Sequence[Any], str]], what: str,
                  expected: Sequence[TensorSpec], source: str) -> None:
    """Compare (name, shape, dtype) triples a backend reports with the manifest's."""
    want = [(t.name, tuple(t.shape), t.dtype) for t in expected]
    have = [(n, tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in s), dt)
            for n, s, dt in got]
    if want != have:
        raise ManifestError(f'{source}: unit {unit.name} {what} are {have}, the manifest says '
                            f'{want}; re-export the model or rebuild its engines')
