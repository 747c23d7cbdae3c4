"""The one interface every fine-tuning method implements.

The training loop (``bench/engine/train.py``) owns forward, backward, clipping, the optimizer, the LR
schedule and logging; a method only acts through the hooks below, which all do nothing by
default. Two runs that differ only in their ``Method`` object are therefore a fair comparison.
``step`` always counts optimizer steps done before the call, over all stages, never micro-batches.

Every call, in order, for one run::

    adapt(model) -> model                         once; change the structure (inject adapters, freeze)
    (a sharded run shards the model here: parameters become this rank's blocks, methods.parts.collectives)
    prepare(model) -> model                       once; allocate state for the parameters to train
    param_groups(model)                           once; the optimizer is then built from them
    plan_stages(ctx) -> StagePlan | None          once, before the first stage; ctx: the regime's
                                                  plan, every task's data, model, optimizer, seed;
                                                  None keeps the regime's plan
    drain_events()
    for each stage of the plan:
        (the stage's LR scheduler is built)
        on_stage_start(ctx)                       ctx: stage, step, data, model, optimizer
        for each optimizer step:
            before_step(step, model)
            rows(step, rows) -> rows              the step's rows, before they are dealt to workers
            forward + backward of every micro-batch (under the run's precision)
            loss(step, model) -> tensor | None    a term added once to the step's loss; backward
            after_backward(step, model)           gradients summed, before clipping
            (gradients clipped; the loss is checked: a NaN/inf loss stops the run here)
            optimizer.step(); scheduler.step()
            after_step(step, model, optimizer)
            held_fixed()                          read now: the entries this step kept unchanged
            (zero_grad; every ``log_every`` steps a metrics line takes ``stats()``)
            drain_events()                        after every step: written to events/method.jsonl
        on_stage_end(ctx)
        drain_events()
        export(model)                             a plain model for the stage's evaluation
    save_extras(model, folder)                    once at the end, if the run keeps its final weights
    state_dict() / load_state_dict()              whenever the trainer is saved or restored
    stats()                                       also once more for result.json at the end

Observers (``bench/engine/observers.py``) get the same calls after the method (plus ``attach`` after ``prepare``
and ``on_gradients`` right after the backward pass, before ``after_backward``), and never change state.

Three kinds of method fit these hooks, and the contract (``tests/harness.py``) checks each claim:
- a method that keeps entries fixed (isolation, MoFO, HFT) declares them in ``held_fixed``; the
  contract checks that they are bit-identical across every step, and, where ``update_budget``
  states a share, that no more entries moved than that;
- a regularizer (EWC) returns its term from ``loss``; it is logged as ``method_loss`` beside the
  task loss;
- a data method (replay) replaces rows in ``rows``.
Every method but full SFT must end with other weights than full SFT on the same seed and data.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from methods.parts.contexts import Batch, PlanContext, Row, StageContext, StageData, StagePlan, tensor_bytes
from pluggable.options import Options
from pluggable.search import Domain

__all__ = ["Batch", "Method", "MethodConfig", "PlanContext", "Row", "StageContext", "StageData", "StagePlan",
           "tensor_bytes"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig(Options):
    """Base of every method's options (``pluggable.options.Options``: ``check`` and ``build``);
    subclasses validate in ``__post_init__``."""


C = TypeVar("C", bound=MethodConfig)


class Method(Generic[C]):
    """Base class: every hook is a no-op, so a method overrides only what it changes.

    ``class EWC(Method[EWCConfig])`` declares the method's options: ``EWC.Config`` is
    ``EWCConfig`` (the registry builds it from a config table) and ``self.config`` is typed as one.

    ``isolates = True`` declares that the method freezes entries (``isolation_masks``); the
    contract tests then require that it isolates something and keeps it bit-identical.
    ``min_stages = 2`` (with ``needs_stages_because``) declares a method that is full SFT by
    construction in a single stage, such as replay (nothing earlier to replay).
    Each option may declare a search domain (``pluggable.search``) in its field's metadata, and
    ``lr_search`` the learning rate's: ``isobench tune`` searches exactly those.
    ``plans_stages = True`` declares that ``plan_stages`` replaces the regime's grouping of tasks
    into stages; such a method runs only in the ``multistage`` regime (checked with the config).
    Events (``drain_events``) are dicts with a ``kind`` (e.g. ``"set_drift"``), ``step`` and
    ``stage``; reports select them by kind, never by the method that wrote them.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    isolates: ClassVar[bool] = False
    plans_stages: ClassVar[bool] = False
    # A method that acts only between stages declares the stages it needs and why: a run whose
    # regime makes fewer (multitask: one) is refused, and a grid does not cross it with that regime.
    min_stages: ClassVar[int] = 1
    needs_stages_because: ClassVar[str] = ""
    # Where a tuner looks for this method's learning rate, when the run config's domain for
    # ``train.lr`` does not suit it (LoRA's adapters train at larger rates); None: that domain.
    lr_search: ClassVar[Domain | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """``Config`` from the options class of ``Method[...]`` (unless the class sets it)."""
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:
            return
        for base in cls.__dict__.get("__orig_bases__", ()):
            args = typing.get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], MethodConfig):
                cls.Config = args[0]

    def __init__(self, config: C) -> None:
        self.config = config

    # -- set-up -------------------------------------------------------------------------------
    def adapt(self, model: nn.Module) -> nn.Module:
        """Change the model's structure (inject adapters, freeze weights) before it is sharded;
        return the model to train."""
        return model

    def prepare(self, model: nn.Module) -> nn.Module:
        """Allocate state for the parameters as they will be trained (after ``adapt`` and any
        sharding: hold parameter objects from here, never from ``adapt``); return the model."""
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups the optimizer sees (default: every trainable parameter)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def plan_stages(self, ctx: PlanContext) -> StagePlan | None:
        """Group the run's tasks into stages (e.g. by overlap of per-task importance) and make
        any change to the starting weights that goes with it; None keeps ``ctx.plan``."""
        return None

    # -- training -----------------------------------------------------------------------------
    def on_stage_start(self, ctx: StageContext) -> None:
        """Start of a regime stage (e.g. calibrate importance on a few batches of ``ctx.data``)."""

    def before_step(self, step: int, model: nn.Module) -> None:
        """Before the micro-batches of optimizer step ``step``."""

    def rows(self, step: int, rows: list[Row]) -> list[Row]:
        """The rows step ``step`` trains on (``batch_size`` tokenized rows, the stream's draw);
        return them, or a list of the same length with some replaced (e.g. replayed rows of an
        earlier stage). Called on every rank with the same rows, before they are dealt to the
        workers: it must return the same rows on every rank (draw from the method's own seeded
        state, which ``state_dict`` must hold)."""
        return rows

    def loss(self, step: int, model: nn.Module) -> torch.Tensor | None:
        """A term added once to step ``step``'s loss, after the micro-batches' backward, in the
        units of the task loss (mean NLL per answer token); the trainer back-propagates it and
        logs its value as ``method_loss``. It is a function of the parameters (e.g. EWC's
        penalty), computed on this rank's blocks (``methods.parts.collectives.local``): under sharding
        the ranks' terms add up to the one-process term, and each rank's gradient lands on its
        own entries. None: no term (the default)."""
        return None

    def after_backward(self, step: int, model: nn.Module) -> None:
        """Gradients accumulated for ``step``, before clipping (mask grads, read importance)."""

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.step()`` (restore isolated entries, refresh masks)."""

    def on_stage_end(self, ctx: StageContext) -> None:
        """End of a regime stage, before its evaluation."""

    # -- outputs ------------------------------------------------------------------------------
    def export(self, model: nn.Module) -> nn.Module:
        """A plain model for evaluation and saving (e.g. LoRA merged)."""
        return model

    def save_extras(self, model: nn.Module, folder: Path) -> None:
        """Save what the method adds beyond ``export``'s plain model (e.g. LoRA's adapter) into
        ``folder``, when a run keeps its final weights; default nothing."""

    def isolation_masks(self) -> dict[str, torch.Tensor]:
        """Current isolation masks by parameter name, True = isolated; empty if none."""
        return {}

    def held_fixed(self) -> dict[str, torch.Tensor]:
        """The entries the step just taken kept unchanged by design, read after ``after_step``:
        per parameter name, either a bool tensor of this rank's block's shape (True = held; a 0-d
        True holds the whole parameter) or sorted flat int indices into the block. Names absent
        held nothing. The contract checks every such entry bit for bit; the lost-update sentinel
        does not count them, and result.json's budget counts them as not updated."""
        return {}

    def update_budget(self) -> float | None:
        """The share of trainable entries this method's options say one step may update (MoFO:
        alpha); the contract fails a run in which more moved. None: no such claim."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (masks, importance, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""

    def planned_state_bytes(self) -> int:
        """Bytes of state this method will hold during training, for a memory plan made right
        after ``prepare`` (possibly on the meta device); default: its ``state_dict`` now."""
        return tensor_bytes(self.state_dict())

    def stats(self) -> dict[str, float]:
        """Scalars for the log (density, churn, trainable count)."""
        return {}

    def drain_events(self) -> list[dict[str, Any]]:
        """Events produced since the last call (each with ``kind``, ``step``, ``stage``)."""
        return []

    def timed_operations(self) -> dict[str, Any]:
        """Named zero-argument callables a cost benchmark may time on their own (``bench.tools.perf``
        reports ``<name>_s``), e.g. one mask refresh; default none."""
        return {}
