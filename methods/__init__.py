"""The method registry. Adding a method = one new file here plus one import line below."""

from methods import epi, full_sft, lora, random_isolation, static_isolation  # noqa: F401  (registers)
from methods.base import Method, MethodConfig, StageContext, StageData
from methods.registry import METHODS, Registry, build, describe, get, names, register

__all__ = ["METHODS", "Method", "MethodConfig", "Registry", "StageContext", "StageData", "build", "describe", "get",
           "names", "register"]
