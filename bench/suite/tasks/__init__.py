"""Task registry and the materialized suite of a run (rows + lm-eval task files)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from bench.suite.tasks.base import Row, Task
from bench.suite.tasks.lm_eval_files import FORMAT_VERSION, write_task_files
from bench.suite.tasks.offline import OFFLINE_TASKS
from bench.suite.tasks.paper import PAPER_TASKS, DataError, source_problem, source_sha256
from pluggable.registry import Registry

__all__ = ["TASKS", "DataError", "Row", "Suite", "Task", "build_suite", "source_digests", "source_problem",
           "write_task_files"]

TASKS: Registry[Task] = Registry("task")
for _task in [*OFFLINE_TASKS, *PAPER_TASKS]:
    TASKS.add(_task.name, _task)


@dataclasses.dataclass
class Suite:
    """The rows of a run's tasks, with the folder holding their lm-eval YAML files."""

    tasks: list[Task]
    train: dict[str, list[Row]]
    test: dict[str, list[Row]]
    lm_eval_dir: Path
    notes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per task: duplicates, source hash

    def chance(self) -> dict[str, float]:
        return {t.name: t.chance(self.test[t.name]) for t in self.tasks}


def build_suite(names: list[str], seed: int, train_size: int, test_size: int, root: Path,
                max_gen_toks: int, sources: dict[str, str] | None = None, split: str = "test",
                val_size: int = 0) -> Suite:
    """Load or generate (deterministically) and write the suite under ``root/<content hash>/``.

    ``split = "validation"``: the rows evaluated (``Suite.test``, the lm-eval task files) are each
    task's ``val_size`` validation rows (``Task.validation``) instead of its test rows, so a
    tuning trial never scores the test split; the training rows are the same either way. The
    task's notes then say so and hold the validation rows' count and content hash."""
    sources = sources or {}
    digests = source_digests(sources)
    key = json.dumps([FORMAT_VERSION, names, seed, train_size, test_size, max_gen_toks, sorted(sources.items()),
                      *([sorted(digests.items())] if digests else []),
                      *([split, val_size] if split != "test" else [])]).encode()
    folder = root / hashlib.sha1(key).hexdigest()[:10]
    tasks = [TASKS[n] for n in names]
    train, test, notes = {}, {}, {}
    for task in tasks:
        source = sources.get(task.name, "hub" if task.loader else "generated")
        train[task.name], test[task.name], notes[task.name] = task.split(seed, train_size, test_size, source)
        if split == "validation":
            test[task.name] = task.validation(seed, train_size, test_size, val_size, source)
            if not test[task.name]:
                raise DataError(f"task {task.name!r} from {source}: no validation row is left beyond the "
                                f"tasks.train_size = {train_size} training rows; allowed: a smaller tasks.train_size "
                                f"or a source with more rows")
            notes[task.name] = {**notes[task.name], "split": "validation", "validation_rows": len(test[task.name]),
                                "validation_sha256": hashlib.sha256(json.dumps(test[task.name], sort_keys=True)
                                                                    .encode()).hexdigest()}
        if any(r["target"] is None for r in train[task.name] + test[task.name]):
            raise DataError(f"task {task.name!r} from {source}: rows without a reference answer (prompts only) "
                            f"can be neither trained on nor scored by ROUGE-L; use data with responses")
        write_task_files(task, train[task.name], test[task.name], folder, max_gen_toks)
    return Suite(tasks, train, test, folder / "lm_eval", {t: n for t, n in notes.items() if n})


def source_digests(sources: dict[str, str]) -> dict[str, str]:
    """task -> content hash of its local source (hub sources have none): what makes a changed
    file another source, for the run's staleness check and the base-score cache."""
    return {task: source_sha256(Path(source), task) for task, source in sorted(sources.items())
            if source != "hub" and Path(source).exists()}
