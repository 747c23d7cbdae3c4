"""The method registry. Adding a method = one new file here plus one import line below."""

from methods import epi, full_sft, lora, random_isolation, static_isolation  # noqa: F401  (registers)
from methods.base import Method, MethodConfig, StageData
from methods.registry import build, describe, get, names, register

__all__ = ["Method", "MethodConfig", "StageData", "build", "describe", "get", "names", "register"]
