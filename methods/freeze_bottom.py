"""Freeze the bottom: the embeddings and the lowest decoder layers never train; everything above
trains as in full SFT. The strongest trivial static baseline a parameter-isolation method has to
beat: it isolates by position alone, with no importance signal (the "freeze the bottom layers"
practice of layer-wise transfer studies, e.g. Lee et al., 2019, "What would Elsa do? Freezing
layers during transformer fine-tuning").

Our choices: ``bottom`` is a share of the decoder layers (``floor(bottom x layers)`` from the
input side), so one setting means the same on any depth; ``embeddings`` also freezes the input
embeddings, and with them the output layer when the backbone ties the two (SmolLM2 does). Frozen
tensors get no gradient (``after_backward`` drops it, so the optimizer skips them: no update, no
weight decay) and are declared in ``held_fixed``, whose entries the contract checks bit for bit.
"""

from __future__ import annotations

import dataclasses
import re

from torch import nn

from methods.base import Method, MethodConfig
from methods.parts.frozen import FrozenTensors
from methods.registry import register
from pluggable.search import choice, uniform

_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FreezeBottomConfig(MethodConfig):
    bottom: float = dataclasses.field(default=0.25, metadata={
        "help": "share of the decoder layers frozen, from the input side (rounded down)", "search": uniform(0.0, 0.75)})
    embeddings: bool = dataclasses.field(default=True, metadata={
        "help": "also freeze the input embeddings (and a tied output layer)", "search": choice(True, False)})

    def __post_init__(self) -> None:
        self.check(0.0 <= self.bottom < 1.0, "bottom", "a share in [0, 1)")


def frozen_names(names: list[str], bottom: float, embeddings: bool) -> list[str]:
    """The parameter names frozen: layers below ``floor(bottom x layers)``, and the embeddings."""
    layers = {int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    cut = int(bottom * len(layers))
    low = set(sorted(layers)[:cut])
    return [n for n in names if ((m := _LAYER.search(n)) and int(m.group(1)) in low)
            or (embeddings and "embed_tokens" in n)]


@register("freeze_bottom")
class FreezeBottom(FrozenTensors, Method[FreezeBottomConfig]):
    """Holds the embeddings and the bottom share of the decoder layers fixed for the whole run."""

    def prepare(self, model: nn.Module) -> nn.Module:
        self.track(model)
        self.frozen = frozen_names(list(self.params), self.config.bottom, self.config.embeddings)
        return model
