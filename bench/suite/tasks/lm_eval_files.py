"""Write a task's rows as JSONL plus the lm-eval YAML tasks that score them (offline).

For each task two lm-eval tasks are generated next to the data:
- ``iso_<task>``: the score (``generate_until`` + exact_match, or ``multiple_choice`` + acc);
- ``iso_<task>_nll``: ``loglikelihood`` of the gold target, reported as the mean gold-answer NLL
  in nats per answer (``bench.suite.tasks.scoring.gold_nll``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.files import atomic_write
from bench.suite.tasks.base import Row, Task


def jsonl(rows: list[Row]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)


def _yaml(config: dict[str, Any]) -> str:
    """Block YAML with sorted keys (deterministic bytes); ``process_results`` becomes lm-eval's
    ``!function`` tag, resolved against ``isobench_metrics.py`` written beside the YAML."""
    import yaml

    config = dict(config)
    function = config.pop("process_results", None)
    text = yaml.safe_dump(config, sort_keys=True, default_flow_style=False, allow_unicode=True, width=1000)
    return text + (f"process_results: !function {function}\n" if function else "")


METRICS_MODULE = '''"""Written by isobench: lm-eval imports per-item scorers from here."""
from bench.suite.tasks.scoring import gold_nll, rouge_l  # noqa: F401
'''


# Bump when the generated task files or scoring change: suite folders and cached base scores are
# keyed by it, so numbers from an older scoring are never reused.
FORMAT_VERSION = 2

GSM8K_NUMBER = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
GSM8K_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


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
    elif task.kind == "gsm8k":
        # lm-eval's own GSM8K "flexible-extract": the last number of the output; commas, "$" and a
        # trailing "." are ignored on both sides.
        score = {**common, "output_type": "generate_until", "doc_to_target": "{{eval_target}}",
                 "generation_kwargs": {"until": ["Question:", "\n\n"], "do_sample": False,
                                       "max_gen_toks": max_gen_toks},
                 "filter_list": [{"name": "flexible-extract", "filter": [
                     {"function": "regex", "group_select": -1, "regex_pattern": GSM8K_NUMBER},
                     {"function": "take_first"}]}],
                 "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                  "ignore_case": True, "regexes_to_ignore": GSM8K_IGNORE}]}
    elif task.kind == "open":
        score = {**common, "output_type": "generate_until", "doc_to_target": "{{target}}",
                 "generation_kwargs": {"until": ["\n\n\n", "Instruction:"], "do_sample": False,
                                       "max_gen_toks": max_gen_toks},
                 "process_results": "isobench_metrics.rouge_l",
                 "metric_list": [{"metric": "rougeL", "aggregation": "mean", "higher_is_better": True}]}
    else:
        score = {**common, "output_type": "multiple_choice", "doc_to_target": "{{gold}}",
                 "doc_to_choice": "{{choices}}",
                 "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    # lm-eval adds no target_delimiter to plain loglikelihood requests: the space is written here
    # so the scored continuation is " <target>", exactly what training teaches after the prompt.
    nll = {**common, "output_type": "loglikelihood", "doc_to_target": " {{target}}",
           "process_results": "isobench_metrics.gold_nll",
           "metric_list": [{"metric": "nll", "aggregation": "mean", "higher_is_better": False}]}
    return {f"iso_{task.name}": {"task": f"iso_{task.name}", **score},
            f"iso_{task.name}_nll": {"task": f"iso_{task.name}_nll", **nll}}


def write_task_files(task: Task, train: list[Row], test: list[Row], folder: Path, max_gen_toks: int) -> None:
    """``folder/<task>/{train,test}.jsonl`` and ``folder/lm_eval/iso_<task>*.yaml``."""
    atomic_write(folder / task.name / "train.jsonl", jsonl(train))
    atomic_write(folder / task.name / "test.jsonl", jsonl(test))
    test_file = (folder / task.name / "test.jsonl").resolve()
    for name, config in lm_eval_configs(task, test_file, max_gen_toks).items():
        atomic_write(folder / "lm_eval" / f"{name}.yaml", _yaml(config))
    atomic_write(folder / "lm_eval" / "isobench_metrics.py", METRICS_MODULE)
