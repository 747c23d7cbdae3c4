"""Paper-style tables from loaded runs, rendered with tabulate as Markdown (github), LaTeX
(booktabs) and CSV. Cells are ``mean ± std`` over seeds; the best mean of a column is bold only
where a corrected test separates it from every other row (``separated``, set by
``reports.comparisons.mark_tables``); failed and missing runs are counted in the ``runs``
column, never averaged in."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import itertools
from collections.abc import Iterable, Sequence

from tabulate import _table_formats, tabulate

from reports.items import final_error
from reports.load import Run
from reports.metrics import (
    average_forgetting,
    average_normalized,
    backward_transfer,
    forgetting,
    learning,
    mean_std,
    normalizable,
    own_stages,
)

# tabulate's latex_booktabs, minus its escaping of cells (ours hold \\textbf and $\\pm$ on purpose;
# labels are escaped by ``latex_escape``).
BOOKTABS_RAW = _table_formats["latex_booktabs"]._replace(headerrow=_table_formats["latex_raw"].headerrow,
                                                          datarow=_table_formats["latex_raw"].datarow)
LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}", "±": r"$\pm$", "·": r"$\cdot$",
                 "−": "-"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def number(x: float, decimals: int = 1) -> str:
    """``decimals`` decimals, without the '-0.0' that rounding a tiny negative gives."""
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


@dataclasses.dataclass
class Table:
    """Rows of label cells followed by per-seed value lists (None = no value)."""

    name: str
    labels: list[str]
    columns: list[str]
    rows: list[tuple[list[str], list[list[float] | None]]]
    higher_is_better: Sequence[bool | None]  # None: a measurement, not a score (nothing in bold)
    footnote: str = ""
    decimals: int = 1  # scores in points: 1; Jaccard, cosines and correlations: 2
    # per row and column, the item-level standard error of the cell's mean (None: not known);
    # printed in parentheses after the seed spread, and as ``<column>_se`` in the CSV
    errors: list[list[float | None]] | None = None
    column_decimals: dict[int, int] = dataclasses.field(default_factory=dict)  # columns with other decimals (nats)
    # per column, whether its best mean is separated from every other row by the corrected test
    # (None: not tested, nothing in bold)
    separated: list[bool] | None = None
    marks: list[list[str]] | None = None  # per row and column, a mark after the value (e.g. "†")

    def best(self) -> list[float | None]:
        out: list[float | None] = []
        for j, hib in enumerate(self.higher_is_better):
            means = [m for _, v in self.rows if (m := mean_std(v[j] or [])[0]) is not None]
            out.append((max(means) if hib else min(means)) if means and hib is not None else None)
        return out

    def formatted(self, fmt: str) -> list[list[str]]:
        best = self.best()
        body = []
        for i, (labels, values) in enumerate(self.rows):
            cells = []
            for j, v in enumerate(values):
                mean, std, _ = mean_std(v or [])
                if mean is None:
                    cells.append("—" if fmt != "latex" else "--")
                    continue
                pm = " ± " if fmt != "latex" else r" $\pm$ "
                d = self.column_decimals.get(j, self.decimals)
                text = number(mean, d) + (f"{pm}{number(std, d)}" if std is not None else "")
                se = self.errors[i][j] if self.errors is not None else None
                if se is not None:
                    text += f" ({number(se, d)})"
                if self.marks is not None and self.marks[i][j]:
                    text += f" {self.marks[i][j]}"
                top = best[j]
                bold = (top is not None and len(self.rows) > 1 and abs(mean - top) < 1e-9
                        and self.separated is not None and self.separated[j])
                if bold:
                    text = {"md": f"**{text}**", "html": f"<b>{text}</b>"}.get(fmt, rf"\textbf{{{text}}}")
                cells.append(text)
            body.append([*labels, *cells])
        return body

    def html(self) -> str:
        """An HTML table (labels escaped; best means in bold) and its footnote."""
        rows = [[html.escape(c) for c in labels] + cells[len(labels):]
                for (labels, _), cells in zip(self.rows, self.formatted("html"))]
        table = tabulate(rows, headers=[html.escape(h) for h in (*self.labels, *self.columns)], tablefmt="unsafehtml",
                         disable_numparse=True)
        return table + (f"<p class=note>{html.escape(self.footnote)}</p>" if self.footnote else "")

    def markdown(self) -> str:
        text = tabulate(self.formatted("md"), headers=[*self.labels, *self.columns], tablefmt="github",
                        disable_numparse=True)
        return text + (f"\n\n{self.footnote}\n" if self.footnote else "\n")

    def latex(self) -> str:
        headers = [latex_escape(h) for h in (*self.labels, *self.columns)]
        rows = [[latex_escape(c) for c in labels] + cells[len(labels):]
                for (labels, _), cells in zip(self.rows, self.formatted("latex"))]
        return tabulate(rows, headers=headers, tablefmt=BOOKTABS_RAW, disable_numparse=True) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        parts = ("mean", "std", "n", "se") if self.errors is not None else ("mean", "std", "n")
        w.writerow([*self.labels, *itertools.chain.from_iterable([f"{c}_{x}" for x in parts] for c in self.columns)])
        for i, (labels, values) in enumerate(self.rows):
            cells = []
            for j, v in enumerate(values):
                mean, std, n = mean_std(v or [])
                cells += ["" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}", n]
                if self.errors is not None:
                    se = self.errors[i][j]
                    cells.append("" if se is None else f"{se:.4f}")
            w.writerow([*labels, *cells])
        return out.getvalue()


def defined(values: Iterable[float | None]) -> list[float] | None:
    """The values that are not None, or None when there are none."""
    out = [v for v in values if v is not None]
    return out or None


def ordered_methods(runs: Sequence[Run], order: Sequence[str] | None) -> list[str]:
    """``order`` (e.g. the grid's ``methods``) first, then any other method, alphabetically."""
    present = {r.method for r in runs}
    preferred = list(order or [])
    return [m for m in preferred if m in present] + sorted(present - set(preferred))


def ordered_tasks(runs: Sequence[Run], order: Sequence[str] | None) -> list[str]:
    if order:
        return list(order)
    for r in runs:
        if r.result and r.result.run.tasks:
            return list(r.result.run.tasks)
    return []


def final_scores(run: Run) -> dict[str, float]:
    """Scores after the last stage; a task without a score (e.g. no parsable judge reply) is absent."""
    if not run.ok or not run.data.evaluation.stages:
        return {}
    return {t: s for t, s in run.data.evaluation.stages[-1].scores.items() if s is not None}


def complete_matrix(run: Run, tasks: Sequence[str]) -> bool:
    """A successful run with a score for every task after every stage, each task trained in
    exactly one stage (sequential: one stage per task)."""
    if not run.ok or not run.data.evaluation.stages:
        return False
    stages = run.data.evaluation.stages
    trained = [t for s in stages for t in s.trained_on]
    return (sorted(trained) == sorted(tasks) and (run.regime != "sequential" or len(stages) == len(tasks))
            and all(s.scores.get(t) is not None for s in stages for t in tasks))


def score_matrix(run: Run, tasks: Sequence[str], key: str = "scores") -> list[list[float]]:
    return [[getattr(s, key)[t] for t in tasks] for s in run.data.evaluation.stages]


def row_groups(runs: Sequence[Run], regime: str, methods: Sequence[str]) -> list[tuple[str, str, list[Run]]]:
    """(backbone, row label, runs) per row: one row per method and config variant (runs pool as
    seeds only when their configs differ in the seed alone); cells of old grid configs are left out."""
    out = []
    for backbone in sorted({r.backbone for r in runs if r.regime == regime}):
        for m in methods:
            group = [r for r in runs if r.regime == regime and r.backbone == backbone and r.method == m
                     and r.status != "stale"]
            for variant in sorted({r.variant for r in group}):
                out.append((backbone, f"{m} ({variant})" if variant else m, [r for r in group if r.variant == variant]))
    return out


def runs_label(group: Sequence[Run]) -> str:
    ok = sum(r.ok for r in group)
    failed = sum(r.status == "failed" for r in group)
    corrupt = sum(r.status == "corrupt" for r in group)
    missing = len(group) - ok - failed - corrupt
    extra = ", ".join(x for x in (f"{failed} failed" if failed else "", f"{corrupt} corrupt" if corrupt else "",
                                  f"{missing} missing" if missing else "") if x)
    return f"{ok}/{len(group)}" + (f" ({extra})" if extra else "")


def best_per_task(groups: Sequence[tuple[str, str, list[Run]]], tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per backbone, the best mean final score over methods of each task (the normalizer)."""
    return {b: {t: v for t, (v, _) in by_task.items()} for b, by_task in best_rows(groups, tasks).items()}


def best_rows(groups: Sequence[tuple[str, str, list[Run]]],
              tasks: Sequence[str]) -> dict[str, dict[str, tuple[float, list[Run]]]]:
    """Per backbone and task, the best mean final score over rows and that row's runs."""
    best: dict[str, dict[str, tuple[float, list[Run]]]] = {}
    for backbone, _, group in groups:
        ok = [r for r in group if r.ok]
        finals = [final_scores(r) for r in ok]
        for t in tasks:
            values = [f[t] for f in finals if t in f]
            if values:
                mean = sum(values) / len(values)
                if t not in best.get(backbone, {}) or mean > best[backbone][t][0]:
                    best.setdefault(backbone, {})[t] = (mean, [r for r, f in zip(ok, finals) if t in f])
    return best


def normalizers(runs: Sequence[Run], groups: Sequence[tuple[str, str, list[Run]]],
                tasks: Sequence[str]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """Per backbone, the normalizer of each task (``best_per_task``) and the tasks Avg. Norm.
    leaves out, with why (``reports.metrics.normalizable``)."""
    chance = next((r.data.evaluation.chance for r in runs if r.ok), {})
    best: dict[str, dict[str, float]] = {}
    dropped: dict[str, dict[str, str]] = {}
    for backbone, by_task in best_rows(groups, tasks).items():
        best[backbone] = {t: v for t, (v, _) in by_task.items()}
        for t, (value, group) in by_task.items():
            error = final_error(group, t)
            if not normalizable(value, chance.get(t, 0.0), error):
                floor = "" if error is None else f" by more than 2 standard errors over items ({2 * error:.1f})"
                dropped.setdefault(backbone, {})[t] = (f"best mean {value:.1f} is not above chance "
                                                       f"{chance.get(t, 0.0):.1f}{floor}")
    return best, dropped


def kept_tasks(tasks: Sequence[str], dropped: dict[str, str]) -> list[str]:
    return [t for t in tasks if t not in dropped]


def avg_norm_by_seed(group: Sequence[Run], tasks: Sequence[str], best: dict[str, float]) -> dict[int, float]:
    out = {}
    for r in group:
        final = final_scores(r)
        if r.ok and all(t in best and t in final for t in tasks):
            value = average_normalized({t: final[t] for t in tasks}, r.data.evaluation.chance, best)
            if value is not None:
                out[r.seed] = value
    return out


def unparsed_judge_runs(runs: Sequence[Run], regime: str, tasks: Sequence[str]) -> dict[str, list[str]]:
    """Per task, the successful runs whose final stage got no parsable judge reply (their cell is empty)."""
    out: dict[str, list[str]] = {}
    for r in runs:
        if r.regime != regime or not r.ok or not r.data.evaluation.stages:
            continue
        details = r.data.evaluation.stages[-1].details
        for t in tasks:
            if details.get(t, {}).get("judge_parsed") == 0:
                out.setdefault(t, []).append(r.run_id)
    return out


def main_table(runs: Sequence[Run], regime: str, methods: Sequence[str], tasks: Sequence[str]) -> Table:
    groups = row_groups(runs, regime, methods)
    best, dropped = normalizers(runs, groups, tasks)
    rows, errors = [], []
    for backbone, method, group in groups:
        ok = [r for r in group if r.ok]
        finals = [final_scores(r) for r in ok]
        values: list[list[float] | None] = [[f[t] for f in finals if t in f] or None for t in tasks]
        kept = kept_tasks(tasks, dropped.get(backbone, {}))
        values.append(list(avg_norm_by_seed(group, kept, best.get(backbone, {})).values()) or None)
        values += [budget_values(ok, "updated_share", 100.0), budget_values(ok, "state_bytes_per_param")]
        rows.append(([backbone, method, runs_label(group)], values))
        errors.append([final_error([r for r in ok if t in final_scores(r)], t) for t in tasks] + [None] * 3)
    scorers = {t: sorted({str(r.data.evaluation.scorers.get(t)) for r in runs if r.regime == regime and r.ok
                          and r.data.evaluation.scorers.get(t)}) for t in tasks}
    used = "; ".join(f"{t}: {' / '.join(s)}" for t, s in scorers.items() if s)
    unjudged = unparsed_judge_runs(runs, regime, tasks)
    note = ("Final scores (0-100; an LLM judge scores 1-10) after the last stage, mean ± sample std over seeds. "
            "Avg. Norm. = mean over tasks of 100·(s − chance)/(best − chance), "
            "best = best method mean for that backbone and task. runs = successful/expected "
            "(failed and missing runs are listed, never averaged in). (x) after a score = its standard error over "
            "test items (of the mean over seeds: sqrt(sum of the seeds' squared errors) / seeds)."
            + "".join(f" Avg. Norm. for {b} leaves out {t}: {why}." for b, by in dropped.items() for t, why in by.items())
            + " Budget: upd. % = mean share of trainable "
            "entries a step updated (those the method did not hold fixed); state B/param = the method's own "
            "state in bytes per model parameter (beyond weights, gradients and optimizer moments)."
            + (f" Scorers: {used}." if used else "")
            + "".join(f" {t}: no judge reply could be parsed in {', '.join(ids)}, so it has no score there (—)."
                      for t, ids in unjudged.items()))
    return Table(f"main_{regime}", ["backbone", "method", "runs"], [*tasks, "Avg. Norm.", "upd. %", "state B/param"],
                 rows, [True] * (len(tasks) + 1) + [None, None], note, errors=errors)


def budget_values(runs: Sequence[Run], key: str, scale: float = 1.0) -> list[float] | None:
    """One budget figure (result.json ``train.budget``) per run that recorded it."""
    values = [scale * float(v) for r in runs if (v := r.data.train.budget.get(key)) is not None]
    return values or None


def base_scores(run: Run, tasks: Sequence[str]) -> list[float | None]:
    """The untrained backbone's score per task (None where unknown)."""
    values: list[float | None] = []
    for t in tasks:
        entry = run.data.evaluation.base.get(t)
        score = entry.get("score") if isinstance(entry, dict) else entry
        values.append(None if score is None else float(score))
    return values


def per_task_forgetting(A: list[list[float]], own: list[int]) -> dict[int, float]:
    """``forgetting(A, own)`` keyed by task index (tasks trained in the last stage have none)."""
    return dict(zip([j for j, k in enumerate(own) if k < len(A) - 1], forgetting(A, own)))


def forgetting_table(runs: Sequence[Run], methods: Sequence[str], tasks: Sequence[str],
                     regime: str = "sequential") -> Table:
    """Forgetting and learning over the stages of ``regime`` (sequential or multistage): a task's
    own stage is the one that trained it, read from each run's stages."""
    groups = row_groups(runs, regime, methods)
    owns = {r.run_id: own_stages([s.trained_on for s in r.data.evaluation.stages], tasks)
            for _, _, g in groups for r in g if complete_matrix(r, tasks)}
    forgettable = [j for j in range(len(tasks)) if any(own[j] < max(own) for own in owns.values())] \
        if regime != "sequential" else list(range(len(tasks) - 1))
    rows = []
    for backbone, method, group in groups:
        ok = [r for r in group if r.run_id in owns]
        mats = {r.run_id: score_matrix(r, tasks) for r in ok}
        per_task = [per_task_forgetting(mats[r.run_id], owns[r.run_id]) for r in ok]
        values: list[list[float] | None] = [[f[j] for f in per_task if j in f] or None for j in forgettable]
        values.append(defined(average_forgetting(mats[r.run_id], owns[r.run_id]) for r in ok))
        values.append(defined(retention_change(r) for r in ok))
        values.append(defined(backward_transfer(mats[r.run_id], owns[r.run_id]) for r in ok))
        # NLL rises when a task is forgotten: forgetting of -NLL is the NLL rise over its best.
        values.append(defined(average_forgetting([[-x for x in row] for row in score_matrix(r, tasks, "nll")],
                                                 owns[r.run_id])
                              for r in ok if all(x is not None for row in score_matrix(r, tasks, "nll") for x in row)))
        gains = [learning(mats[r.run_id], base_scores(r, tasks), owns[r.run_id]) for r in ok]
        values += [defined(g[j] for g in gains) for j in range(len(tasks))]
        values.append(defined(None if None in g else sum(x or 0.0 for x in g) / len(g) for g in gains))
        rows.append(([backbone, method, runs_label(group)], values))
    note = (f"{regime.capitalize()} regime; a task's own stage is the stage that trained it. F_task = max over "
            "stages before the last of the task's score − its final score (> 0 = forgotten), for tasks whose own "
            "stage is not the last; Avg. F = their mean; BWT = mean(final − right after its own stage) "
            "(< 0 = forgetting); Ret. ΔNLL = general-ability retention: the final model's mean per-token NLL on "
            "held-out general text (eval.retention) minus the base model's, in nats (> 0 = general ability lost); "
            "Avg. F (NLL) = Avg. F on gold-answer NLL in nats (> 0 = NLL rose). "
            "L_task = score gained in its own stage (vs the stage before, or the base model for the first "
            "stage): the plasticity that freezing parameters may cost; Avg. L = their mean.")
    return Table("forgetting" if regime == "sequential" else f"forgetting_{regime}", ["backbone", "method", "runs"],
                 [f"F {tasks[j]}" for j in forgettable] + ["Avg. F", "Ret. ΔNLL", "BWT", "Avg. F (NLL)"]
                 + [f"L {t}" for t in tasks] + ["Avg. L"], rows,
                 [False] * len(forgettable) + [False, False, True, False] + [True] * (len(tasks) + 1), note,
                 column_decimals={len(forgettable) + 1: 2})


def retention_change(run: Run) -> float | None:
    """The final model's retention NLL minus the base model's (None when either is missing)."""
    ev = run.data.evaluation
    final = ev.stages[-1].retention if ev.stages else None
    return None if final is None or ev.retention_base is None else final - ev.retention_base
