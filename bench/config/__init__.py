"""What a run is: the schema of a run config (frozen dataclasses, with the regime and precision
names as constants) and its loading from TOML and ``--set``. No torch, nothing else of bench.

The names most callers need are re-exported here: ``from bench.config import RunConfig``.
"""

from bench.config.loading import Replace, check_unique, expand_home, from_dict, merge, parse_override, read_toml, resolve_sources
from bench.config.schema import (
    ADDED_LATER,
    OPERATIONAL,
    POLICIES,
    REGIMES,
    RENAMED,
    AnalysisConfig,
    BackboneConfig,
    ConfigError,
    EvalConfig,
    MethodSpec,
    RunConfig,
    TasksConfig,
    TrainConfig,
    config_digest,
    field,
    lookup,
    run_folder,
    to_dict,
)

__all__ = ["ADDED_LATER", "OPERATIONAL", "POLICIES", "REGIMES", "RENAMED", "AnalysisConfig", "BackboneConfig",
           "ConfigError", "EvalConfig", "MethodSpec", "Replace", "RunConfig", "TasksConfig", "TrainConfig",
           "check_unique", "config_digest", "expand_home", "field", "from_dict", "lookup", "merge", "parse_override", "read_toml",
           "resolve_sources", "run_folder", "to_dict"]
