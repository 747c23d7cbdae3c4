"""CPI-FT (Core Parameter Isolation Fine-Tuning, arXiv 2508.21741), the whole pipeline:

1. per task, a probe: a copy of the base model fine-tuned ``probe_steps`` steps on that task alone
   (the run's optimizer at ``probe_lr``);
2. the task's core region = the global top-``rho`` of ``|theta_probe - theta_0|`` over the
   eligible entries (``normalize = "none"``: raw displacement, as the paper describes it);
3. tasks grouped by the Jaccard overlap of their cores: an edge where it is >= ``tau``, groups =
   connected components (``methods.parts.merging.connected_groups``);
4. groups ordered into stages: ``group_order = "random"`` (the paper; drawn from the run seed) or
   ``"tasks"`` (by each group's first task in the config);
5. fusion into the starting weights: every trainable tensor becomes
   ``theta_0 + mean_t (slerp(theta_0, theta_t, omega) - theta_0)``, then each task's core entries
   are transplanted from its probe (an entry in several cores comes from the task that moved it
   most);
6. multi-stage SFT on the groups, each stage freezing (bit-exactly) the cores of all earlier groups.

The paper gives none of omega, epsilon, the probe length or the calibration size: omega = 0.5,
epsilon = 5e-4 (mergekit's collinearity threshold), 20 probe steps of one training batch each at
lr 1e-4 (the calibration set is probe_steps x train.batch_size rows per task) are our choice.
The stage plan, core sizes, the overlap matrix and these settings go into result.json.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from methods.base import PlanContext, StageContext, StagePlan
from methods.parts.collectives import local
from methods.parts.importance import fine_tuned_weights
from methods.parts.isolation import IsolationConfig, IsolationMethod
from methods.parts.merging import connected_groups, overlap_matrix, slerp
from methods.parts.selection import select_top_fraction
from methods.registry import register
from pluggable.search import log_uniform, uniform

Index = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CPIFTConfig(IsolationConfig):
    rho: float = dataclasses.field(default=0.01, metadata={
        "help": "core region of each task: the global top fraction of |theta_probe - theta_0| (the paper's p)",
        "search": log_uniform(1e-3, 0.2)})
    probe_steps: int = dataclasses.field(default=20, metadata={"help": "fine-tuning steps of each task's probe"})
    probe_lr: float = dataclasses.field(default=1e-4, metadata={"help": "learning rate of the probes"})
    tau: float = dataclasses.field(default=0.1, metadata={"help": "core overlap (Jaccard) that joins two tasks",
                                                          "search": uniform(0.02, 0.5)})
    omega: float = dataclasses.field(default=0.5, metadata={"help": "SLERP factor towards each probe (fusion)",
                                                            "search": uniform(0.0, 1.0)})
    epsilon: float = dataclasses.field(default=5e-4, metadata={"help": "linear interpolation when |cos| > 1 - epsilon"})
    group_order: str = dataclasses.field(default="random", metadata={"help": "random | tasks"})
    normalize: str = dataclasses.field(default="none", metadata={"help": "none | layer_minmax (core selection)"})
    fuse: bool = dataclasses.field(default=True, metadata={"help": "start from the fused model (false: base)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(self.probe_steps > 0, "probe_steps", "an integer > 0")
        self.check(self.probe_lr > 0, "probe_lr", "a number > 0")
        self.check(0.0 <= self.tau <= 1.0, "tau", "a Jaccard overlap in [0, 1]")
        self.check(0.0 <= self.omega <= 1.0, "omega", "a factor in [0, 1]")
        self.check(0.0 < self.epsilon < 1.0, "epsilon", "a number in (0, 1)")
        self.check(self.group_order in ("random", "tasks"), "group_order", "'random' or 'tasks'")
        self.check(self.normalize in ("none", "layer_minmax"), "normalize", "'none' or 'layer_minmax'")
        self.check(isinstance(self.fuse, bool), "fuse", "true or false")


def union(indices: list[Index]) -> Index:
    out: Index = {}
    for index in indices:
        for n, i in index.items():
            out[n] = torch.unique(torch.cat([out[n], i.long()])) if n in out else i.long()
    return out


def strongest(indices: list[torch.Tensor], values: list[torch.Tensor],
              strengths: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique indices and, for an index given several times, the value with the largest strength."""
    index, value, strength = torch.cat(indices).long(), torch.cat(values), torch.cat(strengths)
    order = torch.argsort(strength, stable=True)
    order = order[torch.argsort(index[order], stable=True)]  # by index, then by strength ascending
    index, value = index[order], value[order]
    last = torch.ones_like(index, dtype=torch.bool)
    last[:-1] = index[1:] != index[:-1]
    return index[last], value[last]


@register("cpi_ft")
class CPIFT(IsolationMethod[CPIFTConfig]):
    plans_stages = True

    def __init__(self, config: CPIFTConfig) -> None:
        super().__init__(config)
        self.groups: list[list[str]] = []
        self.cores: dict[str, Index] = {}

    def plan_stages(self, ctx: PlanContext) -> StagePlan:
        tasks, c = list(ctx.data.tasks), self.config
        trainable = {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}
        shift = {n: torch.zeros(local(p).shape, dtype=torch.float32) for n, p in trainable.items()}  # host memory
        cores, transplants = [], []
        for task in tasks:
            probed = fine_tuned_weights(ctx.model, ctx.data.batches(c.probe_steps, task), ctx.data.loss, c.probe_lr,
                                        ctx.data.optimizer)
            moved = {n: (probed[n] - local(p).detach()).abs().float() for n, p in self.params.items()}
            core = select_top_fraction(moved, c.rho, normalize=c.normalize == "layer_minmax")
            cores.append(core)
            transplants.append({n: (i, probed[n].reshape(-1)[i], moved[n].reshape(-1)[i]) for n, i in core.items()})
            for n, p in trainable.items():
                shift[n] += (slerp(local(p), probed[n], c.omega, c.epsilon) - local(p).detach().float()).cpu()
            del probed, moved
        if c.fuse:
            self.fuse(trainable, shift, transplants, len(tasks))
        overlap = overlap_matrix(cores, self.sizes)
        groups = connected_groups(tasks, overlap, c.tau)
        if c.group_order == "random":
            random.Random(f"{ctx.seed}:cpi_ft").shuffle(groups)
        self.groups, self.cores = groups, {t: {n: i.to(torch.int32) for n, i in core.items()}
                                           for t, core in zip(tasks, cores)}
        return StagePlan(groups, {
            "source": f"method {self.name}: tasks joined where their core overlap >= tau, groups in "
                      f"{c.group_order} order", "core_sizes": {t: sum(i.numel() for i in core.values())
                                                               for t, core in zip(tasks, cores)},
            "core_overlap": {"tasks": tasks, "jaccard": overlap},
            "fusion": {"applied": c.fuse, "omega": c.omega, "epsilon": c.epsilon, "probe_steps": c.probe_steps,
                       "probe_lr": c.probe_lr, "rho": c.rho, "tau": c.tau, "normalize": c.normalize}})

    @torch.no_grad()
    def fuse(self, trainable: dict[str, torch.nn.Parameter], shift: dict[str, torch.Tensor],
             transplants: list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]], count: int) -> None:
        """Non-core entries: mean SLERP shift over tasks; core entries: the probe's own values."""
        for n, p in trainable.items():
            block = local(p)
            block.copy_((block.float() + shift[n].to(block.device) / count).to(block.dtype))
        for n, p in self.params.items():
            block = local(p)
            parts = [t[n] for t in transplants if t[n][0].numel()]
            if parts:
                index, value = strongest([i for i, _, _ in parts], [v for _, v, _ in parts], [s for _, _, s in parts])
                block.view(-1).index_copy_(0, index, value.to(block.dtype))

    def planned_state_bytes(self) -> int:
        """The isolated set's bound, the cores of 5 tasks (the papers' count; the task count is
        not known here) as int32 indices, and one copy of the trainable weights: while planning,
        a probe's gradients and optimizer state take the place of the run's own (not allocated
        yet), so the planning peak is the training peak plus the probe's weights. The fusion
        buffer is kept in host memory."""
        k = round(self.config.rho * self.eligible_count)
        value_bytes = next(iter(self.params.values())).element_size()
        return super().planned_state_bytes() + self.trainable_total * value_bytes + 5 * k * 4

    def on_stage_start(self, ctx: StageContext) -> None:
        super().on_stage_start(ctx)
        earlier = [t for group in self.groups[:ctx.stage] for t in group]
        if earlier:
            self.isolate(union([self.cores[t] for t in earlier]), ctx.step)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "groups": self.groups, "cores": self.cores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.groups, self.cores = state["groups"], state["cores"]
