"""The method registry. Adding a method = one new file here plus one import line below."""

from methods import cpi_ft, epi, full_sft, lora, random_isolation, static_isolation  # noqa: F401  (registers)
from methods.base import Method, MethodConfig, PlanContext, StageContext, StageData, StagePlan
from methods.registry import METHODS, Registry, build, describe, get, names, register

__all__ = ["METHODS", "Method", "MethodConfig", "PlanContext", "Registry", "StageContext", "StageData",
           "StagePlan", "build", "describe", "get",
           "names", "register"]
