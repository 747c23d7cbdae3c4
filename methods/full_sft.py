"""Full supervised fine-tuning: every parameter trains. The reference every ratio is taken to."""

from __future__ import annotations

import dataclasses

from methods.base import Method, MethodConfig
from methods.registry import register


@dataclasses.dataclass(frozen=True, kw_only=True)
class FullSFTConfig(MethodConfig):
    """Full SFT has no options."""


@register("full_sft")
class FullSFT(Method[FullSFTConfig]):
    """All hooks are the base class's no-ops."""
