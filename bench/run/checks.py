"""Checks of a whole run config that need more than its own fields: the registries (method,
tasks, judge), the file system (study name, results_dir, task sources, a local backbone folder),
and the parsers of its option tables into their typed options (the method's, retention, the
judge, the analyses), each raising ``ConfigError`` naming the file, the key and what is allowed.
``bench.run.cell.resolve`` calls them once per cell, before any model loads and before anything
is written.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import methods
from bench.analysis import ANALYSES
from bench.backbones.registry import BACKBONES
from bench.config import ConfigError, RunConfig, check_unique
from bench.config.schema import validation_rows
from bench.suite.judge import JUDGE_OPTIONS
from bench.suite.retention import RetentionOptions
from bench.suite.retention import source_problem as retention_source_problem
from bench.suite.tasks import TASKS, source_problem
from pluggable import options


def check_config(config: RunConfig, where: str) -> None:
    """Cross-field checks that need the registries (method name, task names), paths (study,
    results_dir, task sources, a local backbone folder) and duplicates."""
    check_study(config.study, where)
    check_results_dir(config.results_dir, where)
    check_backbone(config.backbone.name, where)
    check_unique(config.tasks.names, "tasks.names", where)
    for task, source in config.tasks.sources.items():
        problem = source_problem(task, Path(source)) if source != "hub" else None
        if problem:
            raise ConfigError(f"{where}: key 'tasks.sources.{task}': {source!r} {problem}; "
                              f"allowed: 'hub' or an existing file, or a folder with the task's files")
    try:
        methods.get(config.method.name)
    except KeyError as e:
        raise ConfigError(f"{where}: key 'method': {e.args[0]}") from None
    check_stages(config, where)
    unknown = [t for t in config.tasks.names if t not in TASKS]
    if unknown or not config.tasks.names:
        raise ConfigError(f"{where}: bad value {config.tasks.names!r} for key 'tasks.names'; "
                          f"allowed: a non-empty list of {', '.join(TASKS)}")
    for task in config.tasks.sources:
        if task not in config.tasks.names or TASKS[task].loader is None:
            raise ConfigError(f"{where}: key 'tasks.sources.{task}': not a paper task of tasks.names")
    want = config.tasks.train_size + config.tasks.test_size
    keys = "tasks.train_size + tasks.test_size"
    if config.eval.split == "validation":
        want += validation_rows(config.tasks.train_size, config.tasks.val_size)
        keys += " + the validation rows (tasks.val_size)"
    for name in sorted(config.tasks.names, key=lambda n: TASKS[n].distinct or 0):  # the tightest bound first
        most = TASKS[name].distinct
        if most is not None and want > most:
            raise ConfigError(f"{where}: {keys} = {want}, but task {name!r} has "
                              f"{most} distinct prompts; allowed: at most {most} together")
    context = BACKBONES[config.backbone.name].context if config.backbone.name in BACKBONES else None
    for key, value in (("eval.max_gen_toks", config.eval.max_gen_toks), ("train.max_length", config.train.max_length)):
        if context is not None and value >= context:
            raise ConfigError(f"{where}: bad value {value} for key {key!r}: {config.backbone.name} attends over "
                              f"{context} tokens; allowed: below {context}")
    if config.eval.limit > config.tasks.test_size:
        raise ConfigError(f"{where}: eval.limit = {config.eval.limit} exceeds tasks.test_size = "
                          f"{config.tasks.test_size}")


def parse_method(config: RunConfig, where: str) -> methods.MethodConfig:
    """``method.options`` as the method's typed config."""
    cls = methods.get(config.method.name)
    try:
        return options.build(cls.Config, config.method.options, where=f"method {config.method.name!r}")
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: key 'method': {e.args[0] if e.args else e}") from None


def parse_analyses(tables: dict[str, dict[str, Any]], where: str) -> dict[str, options.Options]:
    """The enabled analyses (a non-empty ``analysis.<name>`` table) as their typed options."""
    out = {}
    for name, table in tables.items():
        if not table:
            continue
        try:
            out[name] = options.build(ANALYSES[name].Options, table, where=where, what="key",
                                      prefix=f"analysis.{name}.", error=ConfigError)
        except ConfigError:
            raise
        except ValueError as e:  # a rule of the options' own checks
            raise ConfigError(f"{where}: key 'analysis.{name}': {e}") from None
    return out


def parse_retention(table: dict[str, Any], where: str, context: int | None = None) -> RetentionOptions | None:
    """``eval.retention`` (None: off): every option's type, windows that fit the backbone's
    ``context``, and a local text file that can give them (``source_problem``)."""
    if not table:
        return None
    try:
        chosen = options.build(RetentionOptions, table, where=where, what="key", prefix="eval.retention.",
                               error=ConfigError)
    except ConfigError:
        raise
    except ValueError as e:  # a rule of the options' own checks
        raise ConfigError(f"{where}: key 'eval.retention': {e}") from None
    if context is not None and chosen.tokens > context:
        raise ConfigError(f"{where}: bad value {chosen.tokens} for key 'eval.retention.tokens': the backbone attends "
                          f"over {context} tokens; allowed: at most {context}")
    problem = retention_source_problem(chosen)
    if problem:
        raise ConfigError(f"{where}: key 'eval.retention.source': {problem}")
    return chosen


def parse_judge(judge: dict[str, Any], where: str) -> options.Options | None:
    """``eval.judge`` (None: off): its kind, every option's type, and what it points at (a set
    key variable, a local judge folder), before any model loads."""
    if not judge:
        return None
    kind = judge.get("kind")
    if kind not in JUDGE_OPTIONS:
        raise ConfigError(f"{where}: bad value {kind!r} for key 'eval.judge.kind'; allowed: "
                          f"{', '.join(map(repr, JUDGE_OPTIONS))}")
    missing = [f.name for f in dataclasses.fields(JUDGE_OPTIONS[kind]) if f.name not in judge
               and f.default is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: key 'eval.judge' of kind {kind!r} misses {', '.join(missing)}")
    try:
        chosen = options.build(JUDGE_OPTIONS[kind], judge, where=where, what="key", prefix="eval.judge.",
                               error=ConfigError)
    except ConfigError:
        raise
    except ValueError as e:  # a rule of the options' own checks
        raise ConfigError(f"{where}: key 'eval.judge': {e}") from None
    if kind == "hf":
        check_backbone(judge["model"], where, key="eval.judge.model")
    return chosen


def stage_count(config: RunConfig) -> int:
    """The stages the config's regime makes (before a method that plans its own replaces them)."""
    return {"multitask": 1, "sequential": len(config.tasks.names)}.get(
        config.regime, len(config.tasks.groups) or config.tasks.num_groups)


def stage_problem(config: RunConfig) -> str | None:
    """Why the config's method is full SFT by construction in its regime (``Method.min_stages``), or None."""
    cls = methods.get(config.method.name)
    if cls.plans_stages or stage_count(config) >= cls.min_stages:
        return None
    return (f"method {config.method.name!r} needs at least {cls.min_stages} stages ({cls.needs_stages_because}); "
            f"regime {config.regime!r} makes {stage_count(config)}")


def check_stages(config: RunConfig, where: str) -> None:
    """The multistage regime's groups cover every task exactly once (or K fits the task count),
    a method that plans its own stages runs in that regime, and a method that acts between
    stages gets enough of them."""
    names, groups = config.tasks.names, config.tasks.groups
    if methods.get(config.method.name).plans_stages and config.regime != "multistage":
        raise ConfigError(f"{where}: method {config.method.name!r} plans its own stages; bad value "
                          f"{config.regime!r} for key 'regime'; allowed: 'multistage'")
    if (problem := stage_problem(config)) is not None:
        raise ConfigError(f"{where}: {problem}; allowed: 'sequential' or 'multistage' with at least "
                          f"{methods.get(config.method.name).min_stages} stages for key 'regime'")
    if config.regime != "multistage":
        return
    flat = [t for g in groups for t in g]
    if groups and (sorted(flat) != sorted(names) or any(not g for g in groups)):
        raise ConfigError(f"{where}: bad value {groups!r} for key 'tasks.groups'; allowed: non-empty groups that "
                          f"together name every task of tasks.names ({', '.join(names)}) exactly once")
    if not groups and config.tasks.num_groups > len(names):
        raise ConfigError(f"{where}: bad value {config.tasks.num_groups} for key 'tasks.num_groups'; allowed: "
                          f"1 to {len(names)} (the number of tasks), or give tasks.groups")


STUDY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_study(study: str, where: str) -> None:
    """A study is one plain folder name: no '..', no absolute path, no separator."""
    if not STUDY.match(study) or study in (".", ".."):
        raise ConfigError(f"{where}: bad value {study!r} for key 'study'; allowed: a plain folder name "
                          f"(letters, digits, '_', '.', '-'; no '/', no '..')")


def check_results_dir(results_dir: str, where: str) -> None:
    """``results_dir`` is a folder, or can become one (no regular file on its path)."""
    path = Path(results_dir).expanduser()
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{where}: bad value {results_dir!r} for key 'results_dir': {part} is a file, "
                                  f"not a folder; allowed: a folder path")
            return


def check_backbone(name: str, where: str, key: str = "backbone.name") -> None:
    """A name that can only be a local folder must exist and hold a model config."""
    if name in BACKBONES:
        return
    path = Path(name).expanduser()
    local = path.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1
    if local and not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "holds no config.json"
        raise ConfigError(f"{where}: bad value {name!r} for key {key!r}: the local folder {what}; "
                          f"allowed: {', '.join(BACKBONES)}, a hub id (org/name) or a folder with config.json")
