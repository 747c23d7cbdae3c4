"""Write a task's rows as JSONL plus the lm-eval YAML tasks that score them (offline).

For each task two lm-eval tasks are generated next to the data:
- ``iso_<task>``: the score (``generate_until`` + exact_match, or ``multiple_choice`` + acc);
- ``iso_<task>_nll``: ``loglikelihood`` of the gold target; lm-eval's ``perplexity`` aggregate is
  ``exp(-mean log-likelihood)``, so the mean gold-answer NLL (nats per answer) is its log.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.tasks.base import Row, Task


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def jsonl(rows: list[Row]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)


def _yaml(config: dict[str, Any]) -> str:
    # JSON is valid YAML: no extra dependency, and deterministic bytes.
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def lm_eval_configs(task: Task, test_file: Path, max_gen_toks: int) -> dict[str, dict[str, Any]]:
    """lm-eval task configs (score and NLL) for ``task`` over ``test_file``."""
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(test_file)}},
              "test_split": "test", "doc_to_text": "{{prompt}}", "target_delimiter": " ",
              "metadata": {"version": 1.0}}
    if task.kind == "generate":
        score = {**common, "output_type": "generate_until", "doc_to_target": "{{target}}",
                 "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
                 "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                  "regexes_to_ignore": ["^\\s+", "\\s+$"]}]}
    else:
        score = {**common, "output_type": "multiple_choice", "doc_to_target": "{{gold}}",
                 "doc_to_choice": "{{choices}}",
                 "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    nll = {**common, "output_type": "loglikelihood", "doc_to_target": "{{target}}",
           "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}]}
    return {f"iso_{task.name}": {"task": f"iso_{task.name}", **score},
            f"iso_{task.name}_nll": {"task": f"iso_{task.name}_nll", **nll}}


def write_task_files(task: Task, train: list[Row], test: list[Row], folder: Path, max_gen_toks: int) -> None:
    """``folder/<task>/{train,test}.jsonl`` and ``folder/lm_eval/iso_<task>*.yaml``."""
    atomic_write(folder / task.name / "train.jsonl", jsonl(train))
    atomic_write(folder / task.name / "test.jsonl", jsonl(test))
    test_file = (folder / task.name / "test.jsonl").resolve()
    for name, config in lm_eval_configs(task, test_file, max_gen_toks).items():
        atomic_write(folder / "lm_eval" / f"{name}.yaml", _yaml(config))
