"""LoRA through peft: low-rank adapters on the chosen projections; ``export`` merges them."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, cast

from torch import nn

from methods.base import Method, MethodConfig
from methods.registry import register
from pluggable.search import choice, log_uniform


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig(MethodConfig):
    """peft ``LoraConfig`` fields that matter for the comparison."""

    r: int = dataclasses.field(default=8, metadata={"help": "adapter rank", "search": choice(4, 8, 16, 32)})
    alpha: int = dataclasses.field(default=16, metadata={"help": "scaling numerator (alpha / r)"})
    dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: tuple[str, ...] = dataclasses.field(
        default=("q_proj", "v_proj"), metadata={"help": "module names that get adapters"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        self.check(isinstance(self.r, int) and self.r > 0, "r", "an integer > 0")
        self.check(self.alpha > 0, "alpha", "a number > 0")
        self.check(0.0 <= self.dropout < 1.0, "dropout", "0 <= dropout < 1")
        self.check(len(self.target_modules) > 0 and all(isinstance(m, str) for m in self.target_modules),
                   "target_modules", "a non-empty list of module names")


@register("lora")
class LoRA(Method[LoRAConfig]):
    """Injects adapters in ``adapt``; the base weights stay frozen by peft."""

    lr_search = log_uniform(1e-5, 1e-2)  # adapters train at larger rates than full weights (1e-4 to 1e-3 is usual)

    def adapt(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model  # peft imports take seconds: only when used

        c = self.config
        peft_config = LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                                 target_modules=list(c.target_modules), task_type="CAUSAL_LM")
        return get_peft_model(model, peft_config)

    def save_extras(self, model: nn.Module, folder: Path) -> None:
        cast(Any, model).save_pretrained(folder / "adapter")  # the adapter alone, loadable by peft

    def export(self, model: nn.Module) -> nn.Module:
        # Merge into a copy: in the sequential regime training goes on after each evaluation.
        merged: nn.Module = cast(Any, copy.deepcopy(model)).merge_and_unload()
        merged.eval()
        return merged
