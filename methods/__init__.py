"""The method registry. Adding a method = one new file here plus one import line below."""

from methods import (  # noqa: F401
    cpi_ft,
    epi,
    epi_adaptive,
    ewc,
    freeze_bottom,
    full_sft,
    hft,
    lora,
    mofo,
    random_isolation,
    replay,
    static_isolation,
)
from methods.base import Method, MethodConfig, PlanContext, StageContext, StageData, StagePlan
from methods.registry import METHODS, Registry, build, describe, get, names, register, search_space

__all__ = ["METHODS", "Method", "MethodConfig", "PlanContext", "Registry", "StageContext", "StageData",
           "StagePlan", "build", "describe", "get", "search_space",
           "names", "register"]
