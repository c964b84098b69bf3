"""`python -m dysl_ros export`: a DySL model -> ONNX graphs + manifest.json.

Per segment (the default): the embedder, one graph per static segment and the head. A
segment graph is model.segment.SegmentGraph: (hidden, allow_from, threshold) -> (hidden_out,
skipped_at), its skip decisions in-graph (ONNX `If`, written by the dynamo exporter from
torch.cond; opset >= 18). A runtime launches one graph per segment and reads the skip
positions once per step. Every layer is in exactly one segment: no weight is duplicated.

Per unit (--granularity unit, for debugging): the embedder, every backbone layer, every
adapter, every controller (or, with --fuse-controllers, controller j inside the graph of
layer j - 1, whose output it reads) and the head, each with the TorchScript exporter
(dynamo=False: clean static graphs for our blocks and Hugging Face Llama layers alike).

Batch 1, static shapes, each graph `onnx.checker`-clean (full check). After export every
graph is run through ONNX Runtime, from the manifest, on the same input as PyTorch and
compared (fp32: relative error <= 1e-4): a segment at every allow point, each forced to skip
there and once at full depth, with the same skip position as PyTorch.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from ..paths import default_model_dir
from ..guidance import GuidanceConfig
from ..model.dysl import DySL
from ..model.segment import SegmentGraph
from ..runtime.manifest import (GRANULARITIES, MANIFEST_NAME, Manifest, TensorSpec, Unit,
                                guidance_config, sha256_file, unit_name)
from ..skipping import NO_SKIP

DEFAULT_OPSET = 18
DYNAMO_TORCH = (2, 6)  # the first torch whose dynamo exporter writes torch.cond as ONNX If
DEFAULT_MODEL = default_model_dir()
RTOL = {'float32': 1e-4, 'float16': 1e-2}  # parity bound per export precision
_DTYPE = {torch.float32: 'float32', torch.float16: 'float16'}


class ExportError(RuntimeError):
    """A unit could not be exported, or does not match PyTorch after export."""


# -- unit graphs -------------------------------------------------------------------------

class _Embed(nn.Module):
    """images (1, N, 3, S, S) float32, tokens (1, L) int64 -> hidden (1, T, C) in model dtype."""

    def __init__(self, embed: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.embed, self.dtype = embed, dtype

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(images.to(self.dtype), tokens)


class _Float(nn.Module):
    """A unit whose single output is returned as float32 (head chunk, controller prob)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).float()


class _LayerAndController(nn.Module):
    """Layer j - 1 fused with controller j: hidden -> (hidden_out, prob of skipping j)."""

    def __init__(self, block: nn.Module, controller: nn.Module):
        super().__init__()
        self.block, self.controller = block, controller

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.block(x)  # (1, T, C)
        return y, self.controller(y).float()  # (1,)


@dataclass(frozen=True)
class UnitCheck:
    """How far one exported unit is from PyTorch on the same input."""

    unit: str
    max_abs: float
    mean_abs: float
    rel: float  # max_abs / max |reference|

    def describe(self) -> str:
        return (f'{self.unit}: max abs error {self.max_abs:.3g}, mean {self.mean_abs:.3g}, '
                f'relative {self.rel:.3g}')


class _Segment(nn.Module):
    """A SegmentGraph whose hidden output keeps the model dtype and whose inputs are
    (1,)-shaped: hidden, allow_from int64, threshold float32 -> hidden_out, skipped_at."""

    def __init__(self, segment: SegmentGraph):
        super().__init__()
        self.segment = segment  # not 'graph': torch.fx's GraphModule has that attribute

    def forward(self, x: torch.Tensor, allow_from: torch.Tensor, threshold: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.segment(x, allow_from, threshold)


def _export_graph(module: nn.Module, args: tuple, path: Path, inputs: Sequence[str],
                  outputs: Sequence[str], opset: int) -> None:
    if isinstance(module, _Segment):  # in-graph conditionals: only the dynamo exporter
        _export_dynamo(module, args, path, inputs, outputs, opset)
        return
    with warnings.catch_warnings():
        # dynamo=False is deliberate (see the module docstring); its deprecation notice and
        # tracer remarks about Python values frozen into static shapes are expected.
        warnings.filterwarnings('ignore', message='.*TorchScript-based ONNX export.*')
        warnings.filterwarnings('ignore', message='.*feature will be removed.*')
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(inputs), output_names=list(outputs),
                          do_constant_folding=True)


def segments_exportable() -> bool:
    """Whether this torch can write segment graphs (torch.cond -> ONNX If)."""
    return tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2]) >= DYNAMO_TORCH


def _export_dynamo(module: nn.Module, args: tuple, path: Path, inputs: Sequence[str],
                   outputs: Sequence[str], opset: int) -> None:
    if opset < 18:
        raise ExportError(f'opset {opset}: segment graphs need opset >= 18 (ONNX If from '
                          'torch.cond through the dynamo exporter)')
    if not segments_exportable():
        raise ExportError(f'torch {torch.__version__}: segment graphs need torch >= '
                          f'{".".join(map(str, DYNAMO_TORCH))} (torch.cond through the dynamo '
                          'exporter); export per unit (--granularity unit) here, or per '
                          'segment on a machine with a newer torch and copy the export')
    loggers = [logging.getLogger(n) for n in ('torch.onnx', 'onnxscript', 'onnx_ir')]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:  # progress lines and optimiser remarks on stdout and in the log: keep output readable
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                        input_names=list(inputs), output_names=list(outputs),
                                        verbose=False)
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
    proto = program.model_proto  # built anew on each access
    _strip_metadata(proto.graph)  # the source stack trace of every node: half the file
    onnx.save(proto, str(path))


def _strip_metadata(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ''
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _strip_metadata(a.g)


def _tensor_specs(values: Sequence[Any], path: Path) -> tuple[TensorSpec, ...]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField('dim_value') else 0 for d in t.shape.dim]
        if any(d < 1 for d in dims):
            raise ExportError(f'{path}: tensor {v.name!r} has a dynamic shape {dims}; the '
                              'export must be static (batch 1)')
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        specs.append(TensorSpec(v.name, tuple(dims), dtype))
    return tuple(specs)


def _write_unit(module: nn.Module, args: tuple, out_dir: Path, kind: str, index: Optional[int],
                inputs: Sequence[str], outputs: Sequence[str], opset: int,
                fused: Optional[int] = None, layers: Optional[tuple[int, int]] = None) -> Unit:
    name = unit_name(kind, index)
    path = out_dir / f'{name}.onnx'
    try:
        _export_graph(module, args, path, inputs, outputs, opset)
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # exporter and checker raise many types; name the unit
        raise ExportError(f'unit {name} ({path}): {type(e).__name__}: {e}') from e
    return Unit(name=name, kind=kind, index=index, file=path.name, sha256=sha256_file(path),
                inputs=_tensor_specs(model.graph.input, path),
                outputs=_tensor_specs(model.graph.output, path), fused_controller=fused,
                layers=layers)


def sample_inputs(vla: nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic embedder inputs for `vla`: images (1, N, 3, S, S) in [-1, 1], tokens."""
    cfg = vla.cfg
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, len(cfg.cameras), 3, cfg.image_size, cfg.image_size,
                        generator=g) * 2 - 1
    tokens = torch.randint(2, len(vla.tokenizer), (1, cfg.max_instruction_tokens), generator=g)
    return images, tokens


def export_model(vla: nn.Module, dysl: DySL, out_dir: Path | str,
                 guidance: GuidanceConfig | dict, *, granularity: str = 'segment',
                 opset: int = DEFAULT_OPSET, fuse_controllers: bool = False,
                 check: bool = True, rtol: Optional[float] = None, seed: int = 0,
                 progress: bool = True) -> tuple[Manifest, list[UnitCheck]]:
    """Export (vla, dysl) into out_dir, per segment or per unit; write the manifest, check
    parity.

    `vla` is the default VLA or anything shaped like it (embed, blocks, head, cfg,
    tokenizer, action_mean/std). Returns the manifest and, with check, the UnitChecks (per
    unit; per segment and allow point); a graph beyond the tolerance, or a segment that
    skips elsewhere than PyTorch, raises ExportError naming it.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f'granularity={granularity!r} is invalid: expected one of '
                         f'{GRANULARITIES}')
    if fuse_controllers and granularity != 'unit':
        raise ValueError('fuse_controllers applies to per-unit exports (granularity=\'unit\'); '
                         'a segment graph holds its controllers already')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(guidance, GuidanceConfig):
        guidance = guidance_config(guidance, 'guidance')
    if list(dysl.blocks) != list(vla.blocks):
        raise ExportError('dysl must wrap the blocks of vla (DySL(vla.blocks, ...))')
    vla.eval()
    dysl.eval()
    layout = dysl.layout
    param = next(vla.blocks.parameters())
    dtype, device = param.dtype, param.device
    if dtype not in _DTYPE:
        raise ExportError(f'model dtype {dtype} is not exportable: use float32 or float16')
    images, tokens = sample_inputs(vla, seed)
    images, tokens = images.to(device), tokens.to(device)
    with torch.no_grad():
        embed = _Embed(vla.embed, dtype)
        x0 = embed(images, tokens)
        _, hiddens = dysl.forward_full(x0, collect=True)  # input of every layer + the output
    fused = set(layout.dynamic) if fuse_controllers else set()

    hidden, out = ('hidden',), ('hidden_out',)
    # (module, example inputs, kind, index, input names, output names, fused controller,
    #  segment layers)
    graphs: list[tuple] = [(embed, (images, tokens), 'embed', None, ('images', 'tokens'),
                            hidden, None, None)]
    if granularity == 'segment':
        threshold = torch.tensor([dysl.cfg.skip_threshold], dtype=torch.float32)
        for k, seg in enumerate(layout.segments):
            allow = torch.tensor([seg.static + 1], dtype=torch.int64)
            graphs.append((_Segment(SegmentGraph(vla.blocks, dysl, seg)),
                           (hiddens[seg.static], allow, threshold), 'segment', k,
                           hidden + ('allow_from', 'threshold'), out + ('skipped_at',), None,
                           (seg.static, seg.end)))
    else:
        for i in range(layout.num_layers):
            if i + 1 in fused:
                graphs.append((_LayerAndController(vla.blocks[i], dysl.controllers[str(i + 1)]),
                               (hiddens[i],), 'layer', i, hidden, out + ('prob',), i + 1, None))
            else:
                graphs.append((vla.blocks[i], (hiddens[i],), 'layer', i, hidden, out, None,
                               None))
        for j in layout.dynamic:
            graphs.append((dysl.adapters[str(j)], (hiddens[j],), 'adapter', j, hidden, out,
                           None, None))
            if j not in fused:
                graphs.append((_Float(dysl.controllers[str(j)]), (hiddens[j],), 'controller',
                               j, hidden, ('prob',), None, None))
    graphs.append((_Float(vla.head), (hiddens[-1],), 'head', None, hidden, ('chunk',), None,
                   None))
    units = [_write_unit(m, args, out_dir, kind, index, ins, outs, opset, f, layers)
             for m, args, kind, index, ins, outs, f, layers in tqdm(
                 graphs, desc='export', unit='graph', disable=not progress, leave=False)]
    cfg = vla.cfg
    manifest = Manifest(
        directory=out_dir, units=tuple(units), layout=layout, cameras=cfg.cameras,
        image_size=cfg.image_size, vocab=tuple(vla.tokenizer.vocab),
        max_instruction_tokens=cfg.max_instruction_tokens, action_names=cfg.action_names,
        chunk_size=cfg.chunk_size,
        action_mean=tuple(vla.action_mean.detach().float().cpu().tolist()),
        action_std=tuple(vla.action_std.detach().float().cpu().tolist()),
        d_model=cfg.d_model, num_tokens=int(x0.shape[1]),
        skip_threshold=dysl.cfg.skip_threshold, guidance=dataclasses.asdict(guidance),
        precision=_DTYPE[dtype], opset=opset,
        exporter={'torch': torch.__version__, 'onnx': onnx.__version__,
                  'exporter': ('torch.onnx.export(dynamo=True), segments: torch.cond -> If'
                               if granularity == 'segment'
                               else 'torch.onnx.export(dynamo=False)')})
    manifest.save()
    checks: list[UnitCheck] = []
    if check:
        from ..runtime.onnx_runner import OnnxRunner
        runner = OnnxRunner(manifest, providers=['CPUExecutionProvider'])
        compare = compare_segments if granularity == 'segment' else compare_units
        checks = compare(vla, dysl, runner, images.cpu().numpy(), tokens.cpu().numpy())
        bound = RTOL[manifest.precision] if rtol is None else rtol
        bad = [c for c in checks if not c.rel <= bound]
        if bad:
            raise ExportError(f'{len(bad)} unit(s) differ from PyTorch beyond relative error '
                              f'{bound:g}: ' + '; '.join(c.describe() for c in bad))
    return manifest, checks


def _errors(name: str, got: np.ndarray, ref: np.ndarray) -> UnitCheck:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise ExportError(f'{name}: output shape {got.shape} differs from PyTorch {ref.shape}')
    diff = np.abs(got - ref)
    scale = max(float(np.abs(ref).max()), 1e-12)
    return UnitCheck(name, float(diff.max()), float(diff.mean()), float(diff.max()) / scale)


@torch.no_grad()
def compare_units(vla: nn.Module, dysl: DySL, runner: Any, images: np.ndarray,
                  tokens: np.ndarray,
                  to_hidden: Callable[[np.ndarray], Any] = lambda a: a,
                  to_numpy: Callable[[Any], np.ndarray] = np.asarray) -> list[UnitCheck]:
    """Every unit of `runner` against PyTorch on the same input; the hidden-state inputs are
    PyTorch's own full-depth hidden states (so errors do not accumulate along the stack).

    to_hidden / to_numpy convert numpy arrays to the runner's hidden-state type and back
    (identity for ONNX Runtime; a device tensor for TensorRT).
    """
    param = next(vla.blocks.parameters())
    embed = _Embed(vla.embed, param.dtype)
    x0 = embed(torch.from_numpy(images).to(param.device),
               torch.from_numpy(tokens).to(param.device))  # (1, T, C)
    _, hiddens = dysl.forward_full(x0, collect=True)
    h = [t.cpu().numpy() for t in hiddens]
    checks = [_errors('embed', to_numpy(runner.embed(images, tokens)), x0.cpu().numpy())]
    for i in range(dysl.layout.num_layers):
        checks.append(_errors(f'layer_{i}', to_numpy(runner.layer(i, to_hidden(h[i]))), h[i + 1]))
    for j in dysl.layout.dynamic:
        ref = dysl.adapters[str(j)](hiddens[j]).cpu().numpy()
        checks.append(_errors(f'adapter_{j}', to_numpy(runner.adapter(j, to_hidden(h[j]))), ref))
        prob = dysl.controllers[str(j)](hiddens[j]).float().cpu().numpy()  # (1,)
        if j - 1 >= 0 and getattr(runner, 'fused', {}).get(j) is not None:
            x = runner.layer(j - 1, to_hidden(h[j - 1]))  # the fused graph computes it
            got = runner.controller(j, x)
        else:
            got = runner.controller(j, to_hidden(h[j]))
        checks.append(_errors(f'controller_{j}', np.array([got]), prob))
    ref = vla.head(hiddens[-1]).float()[0].cpu().numpy()
    checks.append(_errors('head', runner.head(to_hidden(h[-1])), ref))
    return checks


@torch.no_grad()
def compare_segments(vla: nn.Module, dysl: DySL, runner: Any, images: np.ndarray,
                     tokens: np.ndarray,
                     to_hidden: Callable[[np.ndarray], Any] = lambda a: a,
                     to_numpy: Callable[[Any], np.ndarray] = np.asarray) -> list[UnitCheck]:
    """Every segment graph of `runner` against PyTorch (SegmentGraph on the host) at every
    allow point: forced to skip at each dynamic layer (threshold -1), at full depth, and at
    the model's threshold from the first dynamic layer. Each input is PyTorch's full-depth
    hidden state at the segment's static layer. A segment that skips elsewhere than PyTorch
    raises ExportError; the numbers are returned as UnitChecks ('segment_k skip@j', ...)."""
    from ..skipping import HOST
    param = next(vla.blocks.parameters())
    x0 = _Embed(vla.embed, param.dtype)(torch.from_numpy(images).to(param.device),
                                        torch.from_numpy(tokens).to(param.device))
    _, hiddens = dysl.forward_full(x0, collect=True)
    checks = [_errors('embed', to_numpy(runner.embed(images, tokens)), x0.cpu().numpy())]
    threshold = float(dysl.cfg.skip_threshold)
    for k, seg in enumerate(dysl.layout.segments):
        reference = SegmentGraph(vla.blocks, dysl, seg, HOST)
        cases = {f'skip@{j}': (j, -1.0) for j in seg.dynamic}
        cases['full'] = (seg.end, threshold)
        if seg.dynamic:
            cases['decide'] = (seg.static + 1, threshold)
        for case, (allow, thr) in cases.items():
            name = f'{unit_name("segment", k)} {case}'
            want, want_skip = reference(hiddens[seg.static], allow, thr)
            got, record = runner.segment(k, to_hidden(hiddens[seg.static].cpu().numpy()),
                                         allow, thr)
            got_skip = runner.read_skips([record])[0]
            if got_skip != want_skip:
                raise ExportError(f'{name}: skipped at {got_skip}, PyTorch at {want_skip} '
                                  f'({NO_SKIP}: none)')
            checks.append(_errors(name, to_numpy(got), want.cpu().numpy()))
    ref = vla.head(hiddens[-1]).float()[0].cpu().numpy()
    checks.append(_errors('head', runner.head(to_hidden(hiddens[-1].cpu().numpy())), ref))
    return checks


# -- command line ------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL,
                        help='model directory with vla.json and dysl.json '
                             '(default: the embedded models/default)')
    parser.add_argument('--out', type=Path, default=None,
                        help='export directory (default: <model>/onnx)')
    parser.add_argument('--fresh', action='store_true',
                        help='export a freshly built default-size model (random weights, '
                             'calibrated layout) instead of --model: a smoke run')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset (default {DEFAULT_OPSET})')
    parser.add_argument('--granularity', choices=GRANULARITIES, default='segment',
                        help='one graph per static segment, skip decisions in-graph (default), '
                             'or one per unit: layer, adapter, controller (for debugging)')
    parser.add_argument('--fuse-controllers', action='store_true',
                        help='with --granularity unit: put controller j in the graph of layer '
                             'j - 1 (one graph less per dynamic layer; the probability is then '
                             'computed on every pass)')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the ONNX Runtime vs PyTorch parity check')
    parser.add_argument('--rtol', type=float, default=None,
                        help='parity bound on max abs error / max |reference| '
                             '(default 1e-4 for fp32, 1e-2 for fp16)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the check inputs and of '
                                                            '--fresh (default 0)')


def run(args: argparse.Namespace) -> int:
    from ..runtime.loading import load_torch_model
    from ..train.calibrate import fresh_model
    if args.fresh:
        if args.out is None:
            raise SystemExit('--fresh needs --out DIR')
        vla, dysl = fresh_model(seed=args.seed)
        guidance, source = GuidanceConfig(), 'a fresh default-size model (random weights)'
    else:
        if not (Path(args.model) / 'vla.json').is_file():
            raise SystemExit(f'{args.model}: no model (vla.json); train one, pass --model DIR, '
                             'or use --fresh --out DIR for a smoke export')
        vla, dysl, guidance = load_torch_model(args.model)
        if dysl is None:
            raise SystemExit(f'{args.model}: no DySL parts (dysl.json); train them first, or '
                             'use --fresh --out DIR for a smoke export')
        source = str(args.model)
    out = args.out or Path(args.model) / 'onnx'
    try:
        manifest, checks = export_model(vla, dysl, out, guidance,
                                        granularity=args.granularity, opset=args.opset,
                                        fuse_controllers=args.fuse_controllers,
                                        check=not args.no_check, rtol=args.rtol,
                                        seed=args.seed)
    except (ExportError, ValueError) as e:
        print(f'export failed: {e}')
        return 1
    by_unit: dict[str, UnitCheck] = {}  # the worst check of each graph
    for c in checks:
        name = c.unit.split(' ')[0]
        if name not in by_unit or c.rel > by_unit[name].rel:
            by_unit[name] = c
    print(f'exported {source}: {len(manifest.units)} {manifest.granularity} graphs, '
          f'opset {manifest.opset}, '
          f'{manifest.precision}, layout static {list(manifest.layout.static)} '
          f'of {manifest.layout.num_layers}')
    def tensors(specs: Sequence[TensorSpec]) -> str:
        return ' '.join(f'{t.name}{list(t.shape)}' for t in specs)

    rows = []
    for u in manifest.units:
        rows.append((u.name, tensors(u.inputs), tensors(u.outputs),
                     f'{by_unit[u.name].rel:.2e}' if u.name in by_unit else '-'))
        c = by_unit.get(f'controller_{u.fused_controller}')
        if c is not None:  # computed by this layer's graph
            rows.append((f'  +controller_{u.fused_controller}', '(fused)', 'prob[1]',
                         f'{c.rel:.2e}'))
    w = [max(len(r[i]) for r in rows + [('graph', 'inputs', 'outputs', '')]) for i in range(3)]
    print(f'{"graph":<{w[0]}}  {"inputs":<{w[1]}}  {"outputs":<{w[2]}}  {"rel err":>9}')
    for name, ins, outs, rel in rows:
        print(f'{name:<{w[0]}}  {ins:<{w[1]}}  {outs:<{w[2]}}  {rel:>9}')
    if checks:
        worst = max(checks, key=lambda c: c.rel)
        print(f'parity vs PyTorch: every unit within {args.rtol or RTOL[manifest.precision]:g} '
              f'(worst {worst.describe()})')
    g = manifest.guidance_config()
    print(f'tau {g.tau:g}, K {g.history}; manifest: {out / MANIFEST_NAME}')
    return 0
