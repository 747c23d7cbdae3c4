"""Per-item forgetting: which test items a model stops (or starts) getting right.

For a task whose own stage is not the last, the earlier evaluation is the stage before the last
at which the task scored best (the stage ``F`` compares against); an item is *forgotten* when it
was right there and is wrong after the last stage, *gained* the other way round. Only tasks
scored right-or-wrong per item (exact match, accuracy) count; ROUGE-L and judge scores have no
flips. For multiple-choice tasks the expected share of such flips from guessing alone is
``100 c (1 - c)`` with ``c`` the chance level (``reports.items.chance_flip_rate``): the table
subtracts it in ``forgot − chance`` (generation tasks have chance 0 and nothing to subtract).
Across seeds, ``agree`` is the share of items forgotten in at least half of a row's seeds: flips
that recur, not one seed's noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reports.items import agreeing, chance_flip_rate, flips, record
from reports.load import Run
from reports.metrics import own_stages
from reports.tables import Table, complete_matrix, row_groups, runs_label, score_matrix


def earlier_stage(run: Run, tasks: Sequence[str], j: int) -> int | None:
    """The stage before the last at which task ``j`` scored best (its forgetting reference), or
    None when its own stage is the last."""
    stages = run.data.evaluation.stages
    own = own_stages([s.trained_on for s in stages], tasks)
    if own[j] >= len(stages) - 1:
        return None
    A = score_matrix(run, tasks)
    k = max(range(len(stages) - 1), key=lambda s: (A[s][j], -s))  # the first best stage
    return stages[k].stage


def run_flips(run: Run, tasks: Sequence[str], j: int) -> tuple[set[int], set[int], int] | None:
    """(forgotten ids, gained ids, items) of task ``j`` in one run, or None when it has none."""
    k = earlier_stage(run, tasks, j)
    if k is None:
        return None
    earlier, final = record(run, tasks[j], k), record(run, tasks[j], run.data.evaluation.stages[-1].stage)
    if earlier is None or final is None:
        return None
    return flips(earlier, final)


def flips_table(runs: Sequence[Run], regime: str, methods: Sequence[str], tasks: Sequence[str]) -> Table | None:
    """Forgotten and gained items (% of the task's items) per task, and their means, per row;
    None when no run of ``regime`` has per-item records of a right-or-wrong task."""
    groups = row_groups(runs, regime, methods)
    complete = {r.run_id for _, _, g in groups for r in g if complete_matrix(r, tasks)}
    found = {(r.run_id, j): f for _, _, g in groups for r in g if r.run_id in complete
             for j in range(len(tasks)) if (f := run_flips(r, tasks, j)) is not None}
    columns = sorted({j for _, j in found})
    if not columns:
        return None
    chance = next((r.data.evaluation.chance for r in runs if r.ok), {})
    rows = []
    for backbone, method, group in groups:
        ok = [r for r in group if r.run_id in complete]
        forgot = [[100.0 * len(found[r.run_id, j][0]) / found[r.run_id, j][2] for r in ok if (r.run_id, j) in found]
                  for j in columns]
        gained = [[100.0 * len(found[r.run_id, j][1]) / found[r.run_id, j][2] for r in ok if (r.run_id, j) in found]
                  for j in columns]
        per_seed = [[(f, g, chance_flip_rate(chance.get(tasks[j], 0.0)))
                     for j in columns if (r.run_id, j) in found
                     for f, g in [(100.0 * len(found[r.run_id, j][0]) / found[r.run_id, j][2],
                                   100.0 * len(found[r.run_id, j][1]) / found[r.run_id, j][2])]] for r in ok]
        means = [[sum(x[0] for x in seed) / len(seed) for seed in per_seed if seed],
                 [sum(x[0] - x[2] for x in seed) / len(seed) for seed in per_seed if seed],
                 [sum(x[1] for x in seed) / len(seed) for seed in per_seed if seed]]
        agree = [agreeing([found[r.run_id, j][0] for r in ok if (r.run_id, j) in found],
                          max((found[r.run_id, j][2] for r in ok if (r.run_id, j) in found), default=0))
                 for j in columns]
        known = [a for a in agree if a is not None]
        values = ([v or None for v in forgot] + [v or None for v in gained] + [m or None for m in means]
                  + [[sum(known) / len(known)] if known else None])
        rows.append(([backbone, method, runs_label(group)], values))
    names = [tasks[j] for j in columns]
    note = (f"{regime.capitalize()} regime. Items (% of a task's test items) right at the task's best stage before "
            "the last and wrong after the last stage (forgot), and the reverse (gained), for tasks scored right or "
            "wrong per item; mean ± std over seeds. forgot − chance subtracts the share expected from guessing "
            "alone, 100·c·(1 − c) for chance level c (0 for generation tasks). agree ≥ ½ = items forgotten in at "
            "least half of the row's seeds, mean over tasks.")
    return Table(f"flips_{regime}", ["backbone", "method", "runs"],
                 [f"forgot {t}" for t in names] + [f"gained {t}" for t in names]
                 + ["Avg. forgot", "forgot − chance", "Avg. gained", "agree ≥ ½"],
                 rows, [False] * len(names) + [True] * len(names) + [False, False, True, False], note)


def flips_plot(table: Table, out: Path) -> Path:
    """Mean forgotten against mean gained items per row (lower right is better)."""
    import matplotlib.pyplot as plt

    from reports.metrics import mean_std
    from reports.plots import save_figure

    at = {c: i for i, c in enumerate(table.columns)}
    fig, ax = plt.subplots(figsize=(5, 4))
    for labels, values in table.rows:
        forgot, gained = mean_std(values[at["Avg. forgot"]] or [])[0], mean_std(values[at["Avg. gained"]] or [])[0]
        if forgot is not None and gained is not None:
            ax.scatter(gained, forgot)
            ax.annotate(labels[1], (gained, forgot), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("gained items (%)")
    ax.set_ylabel("forgotten items (%)")
    ax.set_title(table.name.replace("_", " "))
    return save_figure(fig, out / f"{table.name}.png")
