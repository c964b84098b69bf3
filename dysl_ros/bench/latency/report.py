"""The latency table, the unit path's breakdown, and the verdict on the targets."""
from __future__ import annotations

import numpy as np

from ...layout import Layout
from .measure import MODES

# Fraction of ideal each backend's segment path should reach (issue 19: CPU, one thread)
OF_IDEAL = {'onnxruntime': 0.95, 'torch': 0.9}


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """Backends x modes as rows, the paths side by side as column groups."""
    paths = list(dict.fromkeys(p for r in results.values() for p in r))
    cols = (f'{"backbone ms":>14}{"step ms":>9}{"layers":>7}{"launch":>7}{"reads":>9}'
            f'{"ideal":>7}{"speedup":>8}')
    groups = ''.join(f' | {p + " path":^{len(cols)}}' for p in paths)
    head = f'{"backend":<12}{"mode":<5}' + ''.join(f' | {cols}' for _ in paths)
    lines = [(' ' * 17 + groups).rstrip(), head, '-' * len(head)]
    for name, r in results.items():
        for mode in MODES:
            row = f'{name:<12}{mode:<5}'
            for p in paths:
                if p not in r:
                    row += f' | {"(not run)":^{len(cols)}}'
                    continue
                m = r[p][mode]
                bb, reads = m['backbone_ms'], m['host_reads_per_step']
                cell = (f'{bb["median"]:>7.2f} /{bb["p90"]:>5.1f}{m["step_ms"]["median"]:>9.2f}'
                        f'{m["layer_fraction"]:>7.0%}{m["launches_per_step"]:>7.1f}'
                        f'{reads["inside"]:>5.1f}+{reads["end"]:<3.0f}')
                if mode == 'dysl':
                    cell += (f'{r[p]["fraction_of_ideal"]["backbone"]:>7.2f}'
                             f'{r[p]["speedup"]["backbone"]:>7.2f}x')
                row += f' | {cell:<{len(cols)}}'
            lines.append(row.rstrip())
    lines += ['backbone ms: median / p90; launch: launches per step (embed + units or segments '
              '+ head, verifications included); ideal: fraction of ideal of the backbone (best '
              'of repeats);',
              'speedup: of the backbone (medians); reads: host reads in the backbone per step, '
              'inside the walk + at its end (inside a segment: a runner deciding on the host,',
              'as torch\'s skipping.HOST does: on the CPU such a read waits for nothing queued, on '
              'a GPU it is a sync)']
    return '\n'.join(lines)


def format_breakdown(results: dict[str, dict[str, dict]]) -> str:
    """The unit path's backbone per step, unit by unit (where a backend ran it)."""
    lines = [f'{"unit path, per step (best, ms)":<31}{"layers":>9}{"adapters":>10}'
             f'{"controllers":>13}{"host overhead":>15}{"other":>8}'
             '   unit ms: layer / adapter / controller']
    for name, r in results.items():
        if 'unit' not in r:
            continue
        u = r['unit']['unit_ms']
        mean = lambda k: np.mean([v for n, v in u.items() if n.startswith(k)] or [0.0])  # noqa
        for mode in MODES:
            b = r['unit'][mode]['breakdown_ms']
            tail = ''
            if mode == 'full':
                tail = (f'   {mean("layer_"):.3f} / {mean("adapter_"):.3f} / '
                        f'{mean("controller_"):.3f}')
            lines.append(f'{name + " " + mode:<31}{b["layers"]:>9.2f}{b["adapters"]:>10.2f}'
                         f'{b["controllers"]:>13.2f}{b["host_overhead"]:>15.2f}'
                         f'{b["other"]:>8.2f}{tail}')
    return '\n'.join(lines)


def targets(results: dict[str, dict[str, dict]], layout: Layout) -> dict[str, dict]:
    """Per backend and per path other than 'unit': each target of issue 19, its figure and
    whether it is met (None where the issue sets no figure for that backend)."""
    launches = len(layout.segments) + 2
    out: dict[str, dict] = {}
    for name, r in results.items():
        for p, res in r.items():
            if p == 'unit':
                continue
            seen = sorted({n for m in MODES for n in res[m]['launches_unverified']})
            inside = max(res[m]['host_reads_per_step']['inside'] for m in MODES)
            end = max(res[m]['host_reads_per_step']['end'] for m in MODES)
            frac = res['fraction_of_ideal']['backbone']
            want = OF_IDEAL.get(name)
            t = {'launches': {'want': launches, 'got': seen, 'met': seen == [launches]},
                 'reads_inside': {'want': 0, 'got': inside, 'met': inside == 0},
                 'reads_per_step': {'want': 1, 'got': end, 'met': end <= 1},
                 'of_ideal': {'want': want, 'got': frac,
                              'met': None if want is None else frac >= want}}
            if 'unit' in r:
                unit = r['unit']
                mine, theirs = (x['dysl']['backbone_ms']['best'] for x in (res, unit))
                ufrac = unit['fraction_of_ideal']['backbone']
                t['better_than_unit'] = {'of_ideal': [frac, ufrac], 'dysl_backbone_ms':
                                         [mine, theirs],
                                         'met': frac > ufrac and mine < theirs}
            out.setdefault(name, {})[p] = t
    return out


def format_targets(verdict: dict[str, dict]) -> str:
    def met(t: dict) -> str:
        return {True: 'met', False: 'MISSED', None: 'no target'}[t['met']]

    lines = []
    for name, paths in verdict.items():
        for p, t in paths.items():
            la, ri, re, fi = (t[k] for k in ('launches', 'reads_inside', 'reads_per_step',
                                             'of_ideal'))
            want = '' if fi['want'] is None else f'>= {fi["want"]}: '
            line = (f'target {name} {p}: launches {"/".join(map(str, la["got"]))} (want '
                    f'segments + 2 = {la["want"]}: {met(la)}); host reads inside the backbone '
                    f'{ri["got"]:.2f} (want 0: {met(ri)}), at its end {re["got"]:.0f} (want '
                    f'<= 1: {met(re)}); of ideal {fi["got"]:.2f} ({want}{met(fi)})')
            if 'better_than_unit' in t:
                b = t['better_than_unit']
                line += (f'; vs unit: of ideal {b["of_ideal"][0]:.2f} vs {b["of_ideal"][1]:.2f},'
                         f' DySL backbone {b["dysl_backbone_ms"][0]:.2f} vs '
                         f'{b["dysl_backbone_ms"][1]:.2f} ms best (want both better: {met(b)})')
            lines.append(line)
    return '\n'.join(lines)
