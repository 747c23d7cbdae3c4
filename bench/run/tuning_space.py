"""The search space of one method, as dotted run-config keys: what ``isobench tune`` draws.

Every method is searched over the learning rate (``train.lr``: the run config's domain, or the
method's own ``lr_search``) and over each of its options that declares a domain
(``method.options.<name>``). Nothing else varies between a method's trials, so two methods differ
in what they search only by what their own files declare.
"""

from __future__ import annotations

import dataclasses

import methods
from bench.config.schema import TrainConfig
from pluggable.search import Domain


def default_lr_domain() -> Domain:
    """The run config's domain for ``train.lr`` (its field's ``search`` metadata)."""
    return next(f.metadata["search"] for f in dataclasses.fields(TrainConfig) if f.name == "lr")


def space_of(method: str) -> dict[str, Domain]:
    """``{"train.lr": ..., "method.options.<option>": ...}`` for ``method`` (a registered name)."""
    own = methods.search_space(method)
    space = {"train.lr": own.pop("train.lr", None) or default_lr_domain()}
    space.update({f"method.options.{k}": d for k, d in sorted(own.items())})
    return space
