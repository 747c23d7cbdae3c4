"""HFT, half fine-tuning (Hui et al., 2024, "HFT: Half Fine-Tuning for Large Language Models"):
in each stage, half of the parameter tensors are frozen and the other half trained; a new half is
drawn at every stage start, so what one stage froze the next may train.

``selection = "category"`` (the paper's category-level choice, as we read it): within each decoder
layer, half of the attention projections, half of the MLP projections and half of the other
tensors (norms) are frozen; the tensors outside the layers (embeddings, final norm, output
layer) form one more category. A category of odd size freezes one more or one fewer in turn, so
about half of the tensors are frozen overall. ``selection = "random"``: half of all trainable
tensors, drawn uniformly. Both draws are seeded by the run seed and the stage.

Frozen tensors get no gradient (``after_backward`` drops it, so the optimizer skips them: no
update, no weight decay, their moments untouched) and are declared in ``held_fixed``. Our choices,
not the paper's: the category split above, and that frozen tensors keep their Adam moments for
when a later stage trains them again.
"""

from __future__ import annotations

import dataclasses
import random
import re

from torch import nn

from methods.base import Method, MethodConfig, StageContext
from methods.parts.frozen import FrozenTensors
from methods.registry import register
from pluggable.search import choice

_LAYER = re.compile(r"\.(\d+)\.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFTConfig(MethodConfig):
    selection: str = dataclasses.field(default="category", metadata={"help": "category | random",
                                                                      "search": choice("category", "random")})

    def __post_init__(self) -> None:
        self.check(self.selection in ("category", "random"), "selection", "'category' or 'random'")


def category_of(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``3:attention``; outside the layers: ``outside``."""
    layer = _LAYER.search(name)
    if layer is None:
        return "outside"
    kind = "attention" if "attn" in name else "mlp" if "mlp" in name else "other"
    return f"{layer.group(1)}:{kind}"


def frozen_half(names: list[str], selection: str, rng: random.Random) -> list[str]:
    """The names frozen for one stage: half of every category, or half of all."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(category_of(name) if selection == "category" else "all", []).append(name)
    frozen, odd = [], 0
    for members in groups.values():
        count = len(members) // 2 + (len(members) % 2) * odd
        odd ^= len(members) % 2
        frozen += rng.sample(members, count)
    return sorted(frozen, key=names.index)


@register("hft")
class HFT(FrozenTensors, Method[HFTConfig]):
    """Freezes a new half of the tensors at every stage start."""

    def prepare(self, model: nn.Module) -> nn.Module:
        self.track(model)
        return model

    def on_stage_start(self, ctx: StageContext) -> None:
        rng = random.Random(f"{ctx.data.seed}:{ctx.stage}:hft")
        self.frozen = frozen_half(list(self.params), self.config.selection, rng)
