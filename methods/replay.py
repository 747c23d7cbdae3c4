"""Experience replay: a few rows of every finished stage are kept, and a share of every later
step's rows is replaced by rows drawn from them (the rehearsal baseline of TRACE, mammoth and
avalanche, in its simplest form).

At each stage end, ``rows_per_stage`` of the stage's training rows are drawn (seeded by the run
seed and the stage) into the buffer. From then on, in every step ``max(1, round(ratio * batch_size))``
positions of the drawn batch (at least one, so a small ratio at a small batch never silently replays
nothing), chosen at random, get a row drawn from the buffer; the batch size,
and so the compute per step, stays the same. The draws of step ``s`` are seeded by the run seed
and ``s``, so every rank replaces the same rows and a resumed run replays what it would have.

Our choices: a uniform buffer over all earlier stages (no reservoir, no class balance), rows
replaced rather than appended, and no replay in the regime's first stage (nothing is kept yet:
in the multitask regime, one stage, replay trains exactly as full SFT).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from methods.base import Method, MethodConfig, Row, StageContext
from methods.registry import register
from pluggable.search import uniform


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayConfig(MethodConfig):
    ratio: float = dataclasses.field(default=0.25, metadata={"help": "share of each step's rows replaced by replay",
                                                             "search": uniform(0.05, 0.5)})
    rows_per_stage: int = dataclasses.field(default=64, metadata={"help": "training rows kept from each finished stage",
                                                                  "minimum": 1})

    def __post_init__(self) -> None:
        self.check(0.0 < self.ratio <= 1.0, "ratio", "a fraction in (0, 1]")


@register("replay")
class Replay(Method[ReplayConfig]):
    """Replaces a share of every step's rows with rows kept from earlier stages."""

    min_stages = 2
    needs_stages_because = "it replays rows of finished stages: in one stage it has none and trains as full SFT"

    def __init__(self, config: ReplayConfig) -> None:
        super().__init__(config)
        self.buffer: list[Row] = []
        self.seed = 0
        self.replayed = 0

    def on_stage_start(self, ctx: StageContext) -> None:
        self.seed = ctx.data.seed

    def on_stage_end(self, ctx: StageContext) -> None:
        rows = [row for task in ctx.data.tasks for row in ctx.data.rows[task]]
        rng = random.Random(f"{ctx.data.seed}:{ctx.stage}:replay-keep")
        self.buffer += rng.sample(rows, min(self.config.rows_per_stage, len(rows)))

    def rows(self, step: int, rows: list[Row]) -> list[Row]:
        if not self.buffer:
            return rows
        rng = random.Random(f"{self.seed}:{step}:replay")
        count = max(1, round(self.config.ratio * len(rows)))  # a ratio that rounds to 0 still replays
        out = list(rows)
        for position in rng.sample(range(len(rows)), count):
            out[position] = self.buffer[rng.randrange(len(self.buffer))]
        self.replayed += count
        return out

    def stats(self) -> dict[str, float]:
        return {"buffer": float(len(self.buffer)), "replayed": float(self.replayed)}

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": [(list(ids), list(labels)) for ids, labels in self.buffer], "seed": self.seed,
                "replayed": self.replayed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = [(list(ids), list(labels)) for ids, labels in state["buffer"]]
        self.seed, self.replayed = state["seed"], state["replayed"]
