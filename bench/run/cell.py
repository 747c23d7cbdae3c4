"""One resolved cell: a run config parsed once into everything a run consumes.

``resolve(config, where)`` checks the config against the registries and the file system and
parses each option table into its typed options, once: the method's config, general-ability
retention, the judge and the enabled analyses, plus the precision policy with ``auto`` resolved
on this machine. Every consumer (the run, the memory and cost plans, the analyses, retention,
the judge) takes these typed pieces; none parses a table again.

The run id hashes what the options resolve to, not how they are spelled: a method option equal
to its default hashes as absent (so ``{}``, ``{r = 8}`` and ``{r = 8, alpha = 16}`` are one LoRA
cell), and a table that switches something on (retention, the judge, an analysis) hashes with
every field filled in. A cell that leaves its options unset keeps the id it always had.
``spelled_id`` is the id an earlier version gave the same config as written; a study's folder
under it is this cell's twin (``bench.run.status``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import methods
from bench.backbones.registry import BACKBONES, device
from bench.config import AnalysisConfig, ConfigError, RunConfig, config_digest, run_folder, to_dict
from bench.engine.precision import Precision
from bench.run.checks import check_config, parse_analyses, parse_judge, parse_method, parse_retention
from bench.suite.retention import RetentionOptions
from pluggable.options import Options, as_table, non_default

# The config's sections a cell reads through unchanged (they hold no option table).
SECTIONS = ("study", "regime", "seed", "results_dir", "backbone", "tasks", "train", "eval")


@dataclasses.dataclass(frozen=True)
class Cell:
    """A run config with its option tables parsed (built by ``resolve`` only)."""

    config: RunConfig
    options: methods.MethodConfig  # the method's typed config
    retention: RetentionOptions | None  # None: retention is off
    judge: Options | None  # None: open-ended tasks are scored by ROUGE-L
    analyses: dict[str, Options]  # the enabled analyses, by name
    precision: str  # the policy ``train.precision`` resolved to on this machine

    def __getattr__(self, name: str) -> Any:
        """The config's plain sections read through (``cell.train``, ``cell.tasks``, ``cell.seed``...);
        its option tables are read as the typed fields above, never as tables."""
        if name in SECTIONS:
            return getattr(self.config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def method_name(self) -> str:
        return self.config.method.name

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.study

    def canonical(self) -> dict[str, Any]:
        """The config as its options resolve: method options that differ from their defaults,
        and every field of each table that is switched on. Recorded as the run's config."""
        table = to_dict(self.config)
        table["method"]["options"] = non_default(self.options)
        table["eval"]["retention"] = as_table(self.retention) if self.retention is not None else {}
        table["eval"]["judge"] = as_table(self.judge) if self.judge is not None else {}
        table["analysis"] = {name: as_table(self.analyses[name]) if name in self.analyses else {}
                             for name in to_dict(AnalysisConfig())}
        return table

    @property
    def config_hash(self) -> str:
        """Hash of ``canonical()`` without the operational keys: the same science, however its
        options are spelled, always has the same hash."""
        return config_digest(self.canonical())

    @property
    def run_id(self) -> str:
        """Method name + short config hash."""
        return f"{self.method_name}-{self.config_hash[:10]}"

    @property
    def spelled_id(self) -> str:
        """The id of the config as written (an earlier version's id of this cell)."""
        return f"{self.method_name}-{self.config.spelled_hash[:10]}"

    @property
    def run_dir(self) -> Path:
        """``<results_dir>/<study>/<run_id>``, checked to lie inside ``results_dir``."""
        return run_folder(self.results_dir, self.study, self.run_id)


def context_of(backbone: str) -> int | None:
    """The tokens a registered backbone attends over (None: not known before it loads)."""
    return BACKBONES[backbone].context if backbone in BACKBONES else None


def resolve(config: RunConfig, where: str) -> Cell:
    """The cell of ``config``: every check that needs the registries or the file system, and
    every option table parsed once (a bad value raises ``ConfigError`` naming ``where``, the key
    and what is allowed)."""
    check_config(config, where)
    cell = Cell(config=config, options=parse_method(config, where),
                retention=parse_retention(config.eval.retention, where, context_of(config.backbone.name)),
                judge=parse_judge(config.eval.judge, where),
                analyses=parse_analyses(dataclasses.asdict(config.analysis), where),
                precision=Precision.from_config(config.train.precision, device()).name)
    try:
        cell.run_dir  # noqa: B018 - resolving it checks that it stays inside results_dir
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cell


def recorded_id(config_table: dict[str, Any]) -> str | None:
    """The run id that a result's recorded config resolves to now, or None when it no longer
    resolves (a method or a key that is gone, a judge whose key variable is not set here). Only
    the option tables are parsed: the paths and sources of a recorded run are not checked again."""
    from bench.config import from_dict
    from bench.suite.judge import JUDGE_OPTIONS
    from pluggable import options

    try:
        config = from_dict(RunConfig, config_table, "<recorded config>")
        retention, judge = config.eval.retention, config.eval.judge
        cell = Cell(config=config, options=parse_method(config, ""),
                    analyses=parse_analyses(dataclasses.asdict(config.analysis), ""),
                    retention=options.build(RetentionOptions, retention, error=ConfigError) if retention else None,
                    judge=options.build(JUDGE_OPTIONS[judge["kind"]], judge, error=ConfigError) if judge else None,
                    precision=config.train.precision)
        return cell.run_id
    except (ConfigError, KeyError, TypeError, ValueError):
        return None
