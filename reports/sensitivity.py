"""Sensitivity of a method to its swept options (e.g. a fraction rho x an update interval): every config
variant of a method gets its own row, labelled with the swept values, and a plot per swept key
draws Avg. Norm. and Avg. F against it, one line per value of the other swept keys; mean ± std
over seeds. Runs of different variants are never pooled as if they were seeds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.load import Run  # noqa: E402
from reports.metrics import average_forgetting, mean_std, own_stages  # noqa: E402
from reports.tables import (  # noqa: E402
    Table,
    avg_norm_by_seed,
    complete_matrix,
    kept_tasks,
    normalizers,
    row_groups,
    runs_label,
    score_matrix,
)

PNG_META = {"Software": None}


def short(key: str) -> str:
    return key.removeprefix("method.options.")


def swept(runs: Sequence[Run], regime: str, methods: Sequence[str]) -> list[tuple[str, str, list[Run]]]:
    """(backbone, method, runs of one variant) for the methods that have several variants, in the
    order of the swept values (numbers numerically)."""
    out = [(b, g[0].method, g) for b, _, g in row_groups(runs, regime, methods) if g and g[0].variant_values]

    def order(row: tuple[str, str, list[Run]]) -> tuple[Any, ...]:
        values = row[2][0].variant_values
        return (row[0], methods.index(row[1]) if row[1] in methods else len(methods),
                *((0, v, "") if isinstance(v, int | float) else (1, 0, json.dumps(v)) for _, v in sorted(values.items())))

    return sorted(out, key=order)


def forgetting_by_seed(group: Sequence[Run], tasks: Sequence[str]) -> list[float]:
    out = []
    for r in group:
        if r.regime in ("sequential", "multistage") and complete_matrix(r, tasks):
            own = own_stages([s.trained_on for s in r.data.evaluation.stages], tasks)
            if (f := average_forgetting(score_matrix(r, tasks), own)) is not None:
                out.append(f)
    return out


def sensitivity_table(runs: Sequence[Run], regime: str, methods: Sequence[str], tasks: Sequence[str]) -> Table | None:
    rows_of = swept(runs, regime, methods)
    if not rows_of:
        return None
    best, dropped = normalizers(runs, row_groups(runs, regime, methods), tasks)
    keys = sorted({k for _, _, g in rows_of for k in g[0].variant_values})
    rows = []
    for backbone, method, group in rows_of:
        labels = [backbone, method, *(json.dumps(group[0].variant_values.get(k)) for k in keys), runs_label(group)]
        kept = kept_tasks(tasks, dropped.get(backbone, {}))
        rows.append((labels, [list(avg_norm_by_seed(group, kept, best.get(backbone, {})).values()) or None,
                              forgetting_by_seed(group, tasks) or None]))
    note = ("Sensitivity to the swept config keys: one row per variant (never pooled as seeds), mean ± std over "
            "seeds. Avg. Norm. as in the main table; Avg. F as in the forgetting table (sequential and "
            "multistage regimes).")
    return Table(f"sensitivity_{regime}", ["backbone", "method", *map(short, keys), "runs"], ["Avg. Norm.", "Avg. F"],
                 rows, [True, False], note)


LR = "train.lr"


def lr_robustness_table(runs: Sequence[Run], regime: str, methods: Sequence[str], tasks: Sequence[str]) -> Table | None:
    """For a grid with a ``train.lr`` axis: per (backbone, method, other swept values), the Avg.
    Norm. and Avg. F at the best learning rate (by mean Avg. Norm.) beside their means over every
    learning rate of the axis. A method whose good score needs one exact learning rate shows a
    large gap; a smaller learning rate alone can remove much forgetting (TALR, 2025), so a table of
    best-LR rows alone can flatter a method."""
    rows_of = [row for row in swept(runs, regime, methods) if LR in row[2][0].variant_values]
    if not rows_of:
        return None
    best, dropped = normalizers(runs, row_groups(runs, regime, methods), tasks)
    by_rest: dict[tuple[str, str, str], list[tuple[float, float | None, float | None]]] = {}
    for backbone, method, group in rows_of:
        values = group[0].variant_values
        rest = ", ".join(f"{short(k)}={json.dumps(v)}" for k, v in sorted(values.items()) if k != LR)
        kept = kept_tasks(tasks, dropped.get(backbone, {}))
        norm = mean_std(list(avg_norm_by_seed(group, kept, best.get(backbone, {})).values()))[0]
        forgetting = mean_std(forgetting_by_seed(group, tasks))[0]
        by_rest.setdefault((backbone, method, rest), []).append((values[LR], norm, forgetting))
    rows: list[tuple[list[str], list[list[float] | None]]] = []
    for (backbone, method, rest), points in by_rest.items():
        scored: list[tuple[float, float, float | None]] = [(lr, n, f) for lr, n, f in points if n is not None]
        if len(points) < 2 or not scored:
            continue
        top = max(scored, key=lambda p: p[1])
        forgettings = [f for _, _, f in points if f is not None]
        rows.append(([backbone, method, rest or "-", f"{top[0]:g}", str(len(points))],
                     [[top[1]], [sum(n for _, n, _ in scored) / len(scored)],
                      [top[2]] if top[2] is not None else None,
                      [sum(forgettings) / len(forgettings)] if forgettings else None]))
    if not rows:
        return None
    note = ("Learning-rate robustness: per method, Avg. Norm. and Avg. F at the best learning rate of the "
            "train.lr axis (by mean Avg. Norm.) beside their means over every learning rate of the axis (each "
            "a mean over seeds).")
    return Table(f"lr_robustness_{regime}", ["backbone", "method", "other swept", "best lr", "lrs"],
                 ["Avg. Norm. (best lr)", "Avg. Norm. (mean over lrs)", "Avg. F (best lr)", "Avg. F (mean over lrs)"],
                 rows, [None, None, None, None], note)


def sensitivity_plots(runs: Sequence[Run], regime: str, methods: Sequence[str], tasks: Sequence[str],
                      out: Path) -> list[Path]:
    """Per (backbone, method, swept numeric key): Avg. Norm. and Avg. F against the key's value."""
    rows_of = swept(runs, regime, methods)
    best, dropped = normalizers(runs, row_groups(runs, regime, methods), tasks)
    paths = []
    for backbone, method in sorted({(b, m) for b, m, _ in rows_of}):
        variants = [g for b, m, g in rows_of if (b, m) == (backbone, method)]
        keys = sorted({k for g in variants for k in g[0].variant_values})
        for key in keys:
            if not all(isinstance(g[0].variant_values.get(key), int | float) for g in variants):
                continue
            lines: dict[str, list[tuple[float, list[Any]]]] = {}
            for g in variants:  # in the order of the swept values (``swept``)
                rest = ", ".join(f"{short(k)}={g[0].variant_values[k]}" for k in keys if k != key) or method
                lines.setdefault(rest, []).append((g[0].variant_values[key], g))
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
            for (label, points), color in zip(lines.items(), (f"C{i}" for i in range(99))):
                points.sort(key=lambda p: p[0])
                kept = kept_tasks(tasks, dropped.get(backbone, {}))
                for ax, values in zip(axes, ([list(avg_norm_by_seed(g, kept, best.get(backbone, {})).values())
                                              for _, g in points], [forgetting_by_seed(g, tasks) for _, g in points])):
                    stats = [mean_std(v) for v in values]
                    xs = [x for (x, _), s in zip(points, stats) if s[0] is not None]
                    ys = [s[0] for s in stats if s[0] is not None]
                    errs = [s[1] or 0.0 for s in stats if s[0] is not None]
                    if xs:
                        ax.errorbar(xs, ys, yerr=errs, fmt="-o", ms=3, capsize=2, color=color, label=label)
            for ax, ylabel in zip(axes, ("Avg. Norm.", "Avg. F")):
                ax.set(xlabel=short(key), ylabel=ylabel)
                if len({x for pts in lines.values() for x, _ in pts}) > 2 and min(
                        x for pts in lines.values() for x, _ in pts) > 0:
                    ax.set_xscale("log")
            axes[0].legend(fontsize=7)
            fig.suptitle(f"sensitivity: {method} ({backbone}, {regime})")
            fig.tight_layout()
            slug = "".join(c if c.isalnum() or c in "_.-" else "-" for c in f"{regime}_{backbone}_{method}_{short(key)}")
            path = out / f"sensitivity_{slug}.png"
            fig.savefig(path, dpi=110, metadata=PNG_META)
            plt.close(fig)
            paths.append(path)
    return paths
