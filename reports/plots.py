"""PNG plots from loaded runs (matplotlib, Agg backend, no metadata timestamps so identical
inputs give identical files): set drift, per-task score bars, sequential heatmaps."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.load import Run  # noqa: E402
from reports.metrics import DRIFT, drift_series, mean_std  # noqa: E402
from reports.tables import complete_matrix, final_scores, score_matrix  # noqa: E402

PNG_META = {"Software": None}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def drift_plots(runs: Sequence[Run], out: Path) -> list[Path]:
    """One figure per (regime, backbone, method) with ``set_drift`` events: Jaccard of each set
    with the previous one (solid) and with the first one (dashed), one colour per seed."""
    paths = []
    keys = sorted({(r.regime, r.backbone, r.method) for r in runs if r.events_of(DRIFT)})
    for regime, backbone, method in keys:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        what = next(r.events_of(DRIFT)[0].get("set", "set") for r in runs
                    if (r.regime, r.backbone, r.method) == (regime, backbone, method) and r.events_of(DRIFT))
        for i, r in enumerate(sorted((r for r in runs if (r.regime, r.backbone, r.method) == (regime, backbone, method)
                                      and r.events_of(DRIFT)), key=lambda r: r.seed)):
            d = drift_series(r.events_of(DRIFT))
            color = f"C{i}"
            prev = [(s, j) for s, j in zip(d["step"], d["jaccard_prev"]) if j is not None]
            if prev:
                ax.plot(*zip(*prev), "-o", ms=3, color=color, label=f"seed {r.seed}: vs previous")
            ax.plot(d["step"], d["jaccard_first"], "--", color=color, label=f"seed {r.seed}: vs first")
        ax.set(xlabel="optimizer step", ylabel="Jaccard", ylim=(0, 1.05),
               title=f"{what} drift: {method} ({backbone}, {regime})")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"drift_{slug(regime)}_{slug(backbone)}_{slug(method)}.png"))
    return paths


def score_bars(runs: Sequence[Run], methods: Sequence[str], tasks: Sequence[str], out: Path) -> list[Path]:
    """Per (regime, backbone): final score per task, one bar per method, error bar = std."""
    paths = []
    for regime, backbone in sorted({(r.regime, r.backbone) for r in runs}):
        group = [r for r in runs if (r.regime, r.backbone) == (regime, backbone) and r.ok]
        present = [m for m in methods if any(r.method == m for r in group)]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.5))
        width = 0.8 / len(present)
        for i, m in enumerate(present):
            finals = [final_scores(r) for r in group if r.method == m]
            stats = [mean_std([f[t] for f in finals if t in f]) for t in tasks]
            ax.bar([j + i * width for j in range(len(tasks))], [s[0] or 0.0 for s in stats], width,
                   yerr=[s[1] or 0 for s in stats], capsize=2, label=m)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
        ax.set(ylabel="final score", title=f"{backbone}, {regime}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"scores_{slug(regime)}_{slug(backbone)}.png"))
    return paths


def heatmaps(runs: Sequence[Run], methods: Sequence[str], tasks: Sequence[str], out: Path) -> list[Path]:
    """Sequential regime: mean over seeds of A[stage][task] per (backbone, method)."""
    paths = []
    for backbone in sorted({r.backbone for r in runs if r.regime == "sequential"}):
        for m in methods:
            ok = [r for r in runs if r.regime == "sequential" and r.backbone == backbone and r.method == m
                  and complete_matrix(r, tasks)]
            if not ok:
                continue
            mats = [score_matrix(r, tasks) for r in ok]
            mean = [[sum(M[k][j] for M in mats) / len(mats) for j in range(len(tasks))] for k in range(len(tasks))]
            fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(tasks), 1.2 + 0.8 * len(tasks)))
            im = ax.imshow(mean, vmin=0, vmax=100, cmap="viridis")
            for k, row in enumerate(mean):
                for j, v in enumerate(row):
                    ax.text(j, k, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=8)
            ax.set_xticks(range(len(tasks)), tasks, rotation=30)
            ax.set_yticks(range(len(tasks)), [f"after {t}" for t in tasks])
            ax.set_title(f"{m} ({backbone}), n={len(ok)}")
            fig.colorbar(im, ax=ax)
            paths.append(_save(fig, out / f"heatmap_{slug(backbone)}_{slug(m)}.png"))
    return paths
