"""A small driver around ``bench.engine.train.Trainer`` for method-level tests: the real stage hooks,
a constant learning rate, no evaluation, so losses and parameters can be compared exactly.

``ContractCheck`` is an observer that records every broken promise of the Method interface
while the harness trains: isolated entries that receive a gradient before clipping, isolated
entries whose value changes during a step, entries declared in ``held_fixed`` that change, more
entries moved than ``update_budget`` allows, and entries declared free of which most did not
move. It also measures the peak of the method's state over the run (``state_bytes``: every
tensor the method object holds, transient copies included, beside the model's own parameters,
gradients and optimizer state). ``contract_violations`` drives a method through three sequential
stages with it, fails a method that declares ``isolates`` but never isolates anything, and
fails every method that ends with exactly full SFT's weights (so no check passes vacuously and a
method whose effect was removed is caught).
"""

from __future__ import annotations

import functools
import io
from typing import Any

import torch

import methods
from bench import analysis
from bench.backbones.registry import tiny_llama
from bench.config import TrainConfig
from bench.engine.data import StageData, Stream, encode
from bench.engine.observers import Observer
from bench.engine.precision import Precision
from bench.engine.train import Trainer
from bench.run import regimes
from bench.run.checks import parse_analyses
from bench.suite.tasks import TASKS
from methods.parts.held import held_mask

CPU = torch.device("cpu")
# Options that make every isolation method isolate something within a few steps.
FAST = {"epi": {"refresh_every": 2, "rho": 0.05}, "epi_adaptive": {"refresh_every": 2, "rho": 0.05},
        "random_isolation": {"refresh_every": 2, "rho": 0.05},
        "static_isolation": {"rho": 0.05, "calibration_batches": 2},
        "cpi_ft": {"rho": 0.05, "probe_steps": 2, "tau": 1.0, "group_order": "tasks"}}


def rows(task: str = "arithmetic", n: int = 64, seed: int = 0) -> list[Any]:
    _, tok = tiny_llama(0)
    train, _ = TASKS[task].generate(seed, n, 1)
    return [encode(r, tok, 96) for r in train]


def _storages(obj: Any, seen: set[int], out: dict[int, int], depth: int = 0) -> None:
    """Every tensor storage reachable from ``obj`` (dicts, lists, tuples, modules, plain objects)."""
    if depth > 6:
        return
    if isinstance(obj, torch.Tensor):
        t = obj.to_local() if hasattr(obj, "to_local") else obj
        if t.device.type != "meta":
            out.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return
    if isinstance(obj, torch.Generator):  # its state is memory too (mt19937: 5 KB)
        out.setdefault(id(obj), obj.get_state().numel())
        return
    if id(obj) in seen or isinstance(obj, str | int | float | bool | type(None)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        for t in [*obj.parameters(), *obj.buffers()]:
            _storages(t, seen, out, depth + 1)
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, seen, out, depth + 1)
    elif isinstance(obj, list | tuple | set):
        for v in obj:
            _storages(v, seen, out, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, torch.optim.Optimizer):
        _storages(vars(obj), seen, out, depth + 1)


def state_bytes(method: methods.Method, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the method object holds now, except the model's parameters and
    gradients and the optimizer's state (which the memory plan counts on their own)."""
    theirs: dict[int, int] = {}
    _storages([*model.parameters(), *[p.grad for p in model.parameters() if p.grad is not None],
               *[v for s in optimizer.state.values() for v in s.values()]], set(), theirs)
    mine: dict[int, int] = {}
    _storages(vars(method), set(), mine)
    return sum(n for ptr, n in mine.items() if ptr not in theirs)


class ContractCheck(Observer):
    """Read-only observer that records violations of the method interface's promises."""

    name = "contract"

    def __init__(self, method: methods.Method, free_must_move: bool = True) -> None:
        self.method, self.free_must_move = method, free_must_move
        self.violations: list[str] = []
        self.steps_with_isolation = 0
        self.frozen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.start: dict[str, torch.Tensor] = {}
        self.moved: list[float] = []  # share of trainable entries that changed, per step
        self.peak = 0
        self.optimizer: torch.optim.Optimizer | None = None

    def measure(self, model: torch.nn.Module) -> None:
        if self.optimizer is not None:
            self.peak = max(self.peak, state_bytes(self.method, model, self.optimizer))

    def before_step(self, step: int, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        self.frozen = {n: (m, params[n].detach()[m].clone()) for n, m in self.method.isolation_masks().items()
                       if m.any()}
        self.steps_with_isolation += bool(self.frozen)
        self.start = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}

    def after_backward(self, step: int, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for n, (m, _) in self.frozen.items():
            grad = params[n].grad
            if grad is not None and bool(grad[m].any()):
                self.violations.append(f"step {step}: isolated entries of {n} have a gradient before clipping")
        self.measure(model)

    def after_step(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = dict(model.named_parameters())
        for n, (m, values) in self.frozen.items():
            if not torch.equal(params[n].detach()[m], values):
                self.violations.append(f"step {step}: isolated entries of {n} changed")
        held = self.method.held_fixed()
        moved = fixed = 0
        for n, before in self.start.items():
            now = params[n].detach()
            mask = held_mask(held[n], now) if n in held else torch.zeros_like(now, dtype=torch.bool)
            if not torch.equal(now[mask], before[mask]):
                self.violations.append(f"step {step}: entries of {n} declared held fixed (held_fixed) changed")
            moved += int((now != before).sum())
            fixed += int(mask.sum())
        count = sum(t.numel() for t in self.start.values())
        self.moved.append(moved / count)
        budget = self.method.update_budget()
        if budget is not None and moved / count > budget + 0.01:
            self.violations.append(f"step {step}: {moved / count:.1%} of the trainable entries moved, more than "
                                   f"the {budget:.1%} its options allow (update_budget)")
        if self.free_must_move and moved < 0.5 * (count - fixed):
            self.violations.append(f"step {step}: only {moved} of the {count - fixed} entries not declared held "
                                   f"fixed moved: held_fixed declares too little")
        self.measure(model)


class Harness:
    """``Harness("epi", {"refresh_every": 2}).steps(5)`` -> losses of 5 optimizer steps.

    ``regime="multitask"``: one stage over all ``tasks``; ``"sequential"``: stage k trains on
    ``tasks[k]`` (``next_stage`` moves on, through the real ``on_stage_end``/``on_stage_start``).
    A method that plans its own stages (``plan_stages``) replaces that plan first, as in a run."""

    def __init__(self, method: str, options: dict[str, Any] | None = None, seed: int = 0,
                 tasks: tuple[str, ...] = ("arithmetic", "format"), regime: str = "multitask",
                 check: bool = False, data_seed: int | None = None, precision: str = "fp32",
                 analyses: dict[str, dict[str, Any]] | None = None, **train: Any) -> None:
        torch.manual_seed(seed)
        model, self.tokenizer = tiny_llama(seed)
        self.precision = Precision(precision, CPU)
        model = model.to(self.precision.param_dtype)
        settings = {"batch_size": 4, "lr": 1e-2, "weight_decay": 0.1, "warmup_steps": 0,
                    "schedule": "constant_with_warmup", **train}
        self.config, self.regime = TrainConfig(**settings), regime
        self.seed = seed if data_seed is None else data_seed  # seeds the stages' row order
        self.method = methods.build(method, options or {})
        self.check = ContractCheck(self.method, free_must_move=precision != "bf16-pure") if check else None
        self.rows = {t: rows(t) for t in tasks}
        everything = StageData(-1, self.rows, self.config.batch_size, self.tokenizer.pad_token_id, CPU, self.seed,
                               False, self.precision)
        observers = ([self.check] if self.check else []) + analysis.build(parse_analyses(analyses or {}, "<test>"), everything)
        self.trainer = Trainer(model, self.method, self.config, self.tokenizer.pad_token_id, self.precision,
                               observers=observers, progress=False)
        if self.check is not None:
            self.check.optimizer = self.trainer.optimizer
        default = regimes.plan("multitask" if regime == "multitask" else "sequential", tasks)
        self.plan = self.trainer.plan_stages(default, everything, self.seed)
        self.start(0)

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    def stage_rows(self, stage: int) -> dict[str, list[Any]]:
        group = self.plan.groups[stage % len(self.plan.groups)]
        return {t: self.rows[t] for t in group}

    def start(self, stage: int) -> None:
        """Start (or, after ``load``, resume) ``stage``."""
        rows = self.stage_rows(stage)
        self.data = StageData(stage, rows, self.config.batch_size, self.tokenizer.pad_token_id, CPU, self.seed,
                              False, self.precision)
        self.trainer.start_stage(stage, self.data, Stream(rows, f"{self.seed}:{stage}", False), 10**6)

    def next_stage(self) -> None:
        stage = self.trainer.stage
        self.trainer.end_stage()
        self.start(stage + 1)

    def step(self) -> float:
        return self.trainer.step_once()

    def steps(self, n: int) -> list[float]:
        return [self.step() for _ in range(n)]

    def save(self) -> bytes:
        """The whole trainer state, serialized as a checkpoint would be."""
        buffer = io.BytesIO()
        torch.save(self.trainer.state_dict(), buffer)
        return buffer.getvalue()

    def load(self, blob: bytes) -> None:
        """Restore ``save``'s state into this harness and resume its stage."""
        self.trainer.load_state_dict(torch.load(io.BytesIO(blob), weights_only=False))
        self.start(self.trainer.stage)


REFERENCE = "full_sft"  # every other method must end with other weights than this one


def contract_run(name: str, options: dict[str, Any] | None = None, stages: int = 3, steps_per_stage: int = 3,
                 precision: str = "fp32") -> Harness:
    """Method ``name`` driven through ``stages`` sequential stages (weight decay on), checked."""
    h = Harness(name, FAST.get(name, {}) if options is None else options, regime="sequential",
                tasks=("arithmetic", "format", "program"), check=True, weight_decay=0.1, precision=precision)
    for stage in range(stages):
        if stage:
            h.next_stage()
        h.steps(steps_per_stage)
    h.trainer.end_stage()
    return h


@functools.lru_cache(maxsize=8)
def reference_weights(stages: int, steps_per_stage: int, precision: str) -> dict[str, torch.Tensor]:
    h = contract_run(REFERENCE, {}, stages, steps_per_stage, precision)
    return {n: p.detach().clone() for n, p in h.model.named_parameters()}


def contract_violations(name: str, options: dict[str, Any] | None = None, stages: int = 3,
                        steps_per_stage: int = 3, precision: str = "fp32") -> list[str]:
    """Every broken promise of method ``name`` over ``stages`` sequential stages; an isolating
    method that never isolated anything, and a method that ends with full SFT's weights, are too."""
    h = contract_run(name, options, stages, steps_per_stage, precision)
    assert h.check is not None
    violations = list(h.check.violations)
    isolated = sum(int(m.sum()) for m in h.method.isolation_masks().values())
    if h.method.isolates and (isolated == 0 or h.check.steps_with_isolation == 0):
        violations.append(f"{name} declares that it isolates but isolated nothing "
                          f"({h.check.steps_with_isolation} steps with isolated entries, {isolated} at the end)")
    if name != REFERENCE:
        reference = reference_weights(stages, steps_per_stage, precision)
        weights = dict(h.method.export(h.model).named_parameters())
        if weights.keys() == reference.keys() and all(torch.equal(weights[n], w) for n, w in reference.items()):
            violations.append(f"{name} trains exactly as {REFERENCE} on the same seed and data: its hooks change "
                              f"nothing")
    return violations


def cell_of(table: dict[str, Any]) -> Any:
    """The resolved cell of a run config table (``bench.run.cell.resolve``)."""
    from bench.config import RunConfig, from_dict
    from bench.run.cell import resolve

    return resolve(from_dict(RunConfig, table, "<test>"), "<test>")
