"""PNG plots from loaded runs (matplotlib, Agg backend, no metadata timestamps so identical
inputs give identical files): set drift, adapted schedules, per-task score bars, sequential
heatmaps."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.load import Run  # noqa: E402
from reports.metrics import DRIFT, SCHEDULE, drift_series, mean_std  # noqa: E402
from reports.tables import complete_matrix, final_scores, score_matrix  # noqa: E402

PNG_META = {"Software": None}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def stage_ends(run: Run) -> list[int]:
    """Optimizer steps at which a stage ended and the next began (task switches)."""
    if run.result is None:
        return []
    done = [s.steps_done for s in run.result.evaluation.stages[:-1] if s.steps_done is not None]
    return sorted(set(done))


def drift_plots(runs: Sequence[Run], out: Path) -> list[Path]:
    """One figure per (regime, backbone, method, variant, event source) with ``set_drift`` events
    (a method's re-selected set, or the importance-drift analysis of any method): Jaccard of each
    set with the previous one (solid) and with the first one (dashed), one colour per seed;
    dotted vertical lines where a stage ended (task switches)."""
    paths = []

    def key(r: Run, source: str) -> tuple[str, str, str, str, str]:
        return (r.regime, r.backbone, r.method, r.variant, source)

    keys = sorted({key(r, e["source"]) for r in runs for e in r.events_of(DRIFT)})
    for regime, backbone, method, variant, source in keys:
        chosen = sorted((r for r in runs if any(key(r, e["source"]) == (regime, backbone, method, variant, source)
                                                for e in r.events_of(DRIFT))), key=lambda r: r.seed)
        events = {r.run_id: [e for e in r.events_of(DRIFT) if e["source"] == source] for r in chosen}
        what = events[chosen[0].run_id][0].get("set", "set")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, r in enumerate(chosen):
            d = drift_series(events[r.run_id])
            color = f"C{i}"
            prev = [(s, j) for s, j in zip(d["step"], d["jaccard_prev"]) if j is not None]
            if prev:
                ax.plot(*zip(*prev), "-o", ms=3, color=color, label=f"seed {r.seed}: vs previous")
            ax.plot(d["step"], d["jaccard_first"], "--", color=color, label=f"seed {r.seed}: vs first")
        for step in sorted({s for r in chosen for s in stage_ends(r)}):
            ax.axvline(step, color="0.6", linestyle=":", linewidth=1)
        label = f"{method}" + (f" ({variant})" if variant else "")
        ax.set(xlabel="optimizer step (dotted: stage ends)", ylabel="Jaccard", ylim=(0, 1.05),
               title=f"{what} drift: {label}\n({backbone}, {regime}, {source})")
        ax.legend(fontsize=7)
        name = "_".join(slug(x) for x in (regime, backbone, method) + ((variant,) if variant else ())
                        + ((source,) if source != "method" else ()))
        paths.append(save_figure(fig, out / f"drift_{name}.png"))
    return paths


def schedule_plots(runs: Sequence[Run], out: Path) -> list[Path]:
    """One figure per (regime, backbone, method, variant) whose runs wrote ``schedule`` events (a
    method that adapts its own settings while it trains: a share of entries, ``ratio``, and an
    ``interval`` in steps): the ratio (top) and the interval (bottom) at each event, one colour per
    seed, dotted lines where a stage ended. Drawn from the events alone, whatever method wrote them."""
    paths = []
    keys = sorted({(r.regime, r.backbone, r.method, r.variant) for r in runs if r.events_of(SCHEDULE)})
    for regime, backbone, method, variant in keys:
        chosen = sorted((r for r in runs if (r.regime, r.backbone, r.method, r.variant) == (regime, backbone, method,
                                                                                             variant)
                         and r.events_of(SCHEDULE)), key=lambda r: r.seed)
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
        for i, r in enumerate(chosen):
            events = sorted(r.events_of(SCHEDULE), key=lambda e: e["step"])
            steps = [e["step"] for e in events]
            top.plot(steps, [e["ratio"] for e in events], "-o", ms=3, color=f"C{i}", label=f"seed {r.seed}")
            bottom.step(steps, [e["interval"] for e in events], "-", where="post", color=f"C{i}")
        for step in sorted({s for r in chosen for s in stage_ends(r)}):
            for ax in (top, bottom):
                ax.axvline(step, color="0.6", linestyle=":", linewidth=1)
        label = f"{method}" + (f" ({variant})" if variant else "")
        top.set(ylabel="ratio (share of entries)", title=f"adapted schedule: {label}\n({backbone}, {regime})")
        bottom.set(xlabel="optimizer step (dotted: stage ends)", ylabel="interval (steps)")
        top.legend(fontsize=7)
        name = "_".join(slug(x) for x in (regime, backbone, method) + ((variant,) if variant else ()))
        paths.append(save_figure(fig, out / f"schedule_{name}.png"))
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
        paths.append(save_figure(fig, out / f"scores_{slug(regime)}_{slug(backbone)}.png"))
    return paths


def heatmaps(runs: Sequence[Run], methods: Sequence[str], tasks: Sequence[str], out: Path) -> list[Path]:
    """Sequential regime: mean over seeds of A[stage][task] per (backbone, method, config variant)."""
    paths = []
    for backbone in sorted({r.backbone for r in runs if r.regime == "sequential"}):
        for m in methods:
            for variant in sorted({r.variant for r in runs if r.regime == "sequential" and r.method == m}):
                ok = [r for r in runs if r.regime == "sequential" and r.backbone == backbone and r.method == m
                      and r.variant == variant and complete_matrix(r, tasks)]
                if ok:
                    paths.append(heatmap(ok, tasks, f"{m} ({variant})" if variant else m, backbone, out))
    return paths


def heatmap(ok: Sequence[Run], tasks: Sequence[str], label: str, backbone: str, out: Path) -> Path:
    mats = [score_matrix(r, tasks) for r in ok]
    mean = [[sum(M[k][j] for M in mats) / len(mats) for j in range(len(tasks))] for k in range(len(tasks))]
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(tasks), 1.2 + 0.8 * len(tasks)))
    im = ax.imshow(mean, vmin=0, vmax=100, cmap="viridis")
    for k, row in enumerate(mean):
        for j, v in enumerate(row):
            ax.text(j, k, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=8)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30)
    ax.set_yticks(range(len(tasks)), [f"after {t}" for t in tasks])
    ax.set_title(f"{label} ({backbone}), n={len(ok)}", fontsize=8 if len(label) > 20 else 10)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, out / f"heatmap_{slug(backbone)}_{slug(label.replace(' (', '_').rstrip(')'))}.png")


def forest_plots(comparisons: Sequence[Any], out: Path) -> list[Path]:
    """Per regime: each (backbone, method, task) score difference against the baseline with its
    95% interval, the baseline at 0; significant ones (Holm) drawn filled."""
    paths = []
    for regime in sorted({c.regime for c in comparisons}):
        rows = [c for c in comparisons if c.regime == regime and c.metric == "score"]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
        for y, c in enumerate(reversed(rows)):
            r = c.result
            ax.errorbar(r.diff, y, xerr=[[r.diff - r.ci_low], [r.ci_high - r.diff]], fmt="o", capsize=3,
                        color="tab:red" if c.significant else "tab:blue", mfc=None if c.significant else "white")
        ax.axvline(0, color="#555", lw=1)
        ax.set_yticks(range(len(rows)), [f"{c.backbone} {c.method}: {c.task}" for c in reversed(rows)], fontsize=8)
        ax.set_xlabel(f"final score − {rows[0].baseline} (points), 95% CI")
        ax.set_title(f"{regime}: paired differences (red = Holm-adjusted p < 0.05, CI excludes 0)", fontsize=9)
        paths.append(save_figure(fig, out / f"forest_{slug(regime)}.png"))
    return paths
