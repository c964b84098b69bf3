"""The latency table and what the command prints and writes."""
from __future__ import annotations

import numpy as np


def format_table(results: dict[str, dict]) -> str:
    head = (f'{"backend":<12}{"mode":<6}{"backbone ms":>16}{"step ms":>16}{"layers":>8}'
            f'{"speedup bb/step":>17}{"of ideal bb/step":>18}')
    lines = [head + '   (ms: median / p90; of ideal: best of repeats)', '-' * len(head)]
    for name, r in results.items():
        for mode in ('full', 'dysl'):
            m = r[mode]
            bb, st = m['backbone_ms'], m['step_ms']
            row = (f'{name:<12}{mode:<6}{bb["median"]:>8.2f} /{bb["p90"]:>6.2f}'
                   f'{st["median"]:>8.2f} /{st["p90"]:>6.2f}{m["layer_fraction"]:>8.0%}')
            if mode == 'dysl':
                sp, fi = r['speedup'], r['fraction_of_ideal']
                row += (f'{sp["backbone"]:>9.2f}x /{sp["step"]:>5.2f}x'
                        f'{fi["backbone"]:>11.2f} /{fi["step"]:>5.2f}')
            lines.append(row)
    lines.append('')
    lines.append(f'{"per step (best, ms)":<18}{"layers":>9}{"adapters":>10}{"controllers":>13}'
                 f'{"host overhead":>15}{"other":>8}   unit ms: layer / adapter / controller')
    for name, r in results.items():
        u = r['unit_ms']
        mean = lambda k: np.mean([v for n, v in u.items() if n.startswith(k)] or [0.0])  # noqa
        for mode in ('full', 'dysl'):
            b = r[mode]['breakdown_ms']
            tail = ''
            if mode == 'full':
                tail = (f'   {mean("layer_"):.3f} / {mean("adapter_"):.3f} / '
                        f'{mean("controller_"):.3f}')
            lines.append(f'{name + " " + mode:<18}{b["layers"]:>9.2f}{b["adapters"]:>10.2f}'
                         f'{b["controllers"]:>13.2f}{b["host_overhead"]:>15.2f}'
                         f'{b["other"]:>8.2f}{tail}')
    return '\n'.join(lines)
