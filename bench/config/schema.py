"""The run config's schema: frozen dataclasses, one field per key with its default, help and
allowed values, and the names of the regimes and precision policies.

Every field is declared once here. ``bench.config.loading`` builds these from TOML (an unknown
key or a bad value raises ``ConfigError`` naming the file, the dotted key and what is allowed);
the checks that need the registries and the file system are ``bench.run.checks``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from pluggable.search import Domain, log_uniform

# Training regimes (``bench/run/regimes.py`` turns each into its stages).
REGIMES = ("multitask", "sequential", "multistage")
# Precision policies (``bench/engine/precision.py``'s docstring says what each does).
POLICIES = ("fp32", "bf16-mixed", "bf16-pure", "bf16-sr", "bf16-kahan")

# Keys of earlier versions, and what replaced them.
RENAMED = {
    "backbone.dtype": "'train.precision' (one policy for the parameter dtype, the autocast and the optimizer)",
    "train.bf16": "'train.precision'; bf16 = 'on' with 16-bit weights was 'bf16-pure', with float32 weights "
                  "'bf16-mixed'",
}
# Keys that say where, on how many workers and how often to save, not what is computed: excluded
# from the run id (N workers compute the micro-batches one process would, bench/engine/sharding.py).
OPERATIONAL = ("results_dir", "train.checkpoint_every", "train.keep_final_weights", "train.workers",
               "train.rendezvous_timeout_s")
# Keys added after results existed: left out of the run id while at these values (their
# behaviour before the key existed), so an earlier study's cells keep their run ids.
ADDED_LATER = {"tasks.groups": [], "tasks.num_groups": 3, "analysis.importance_drift": {},
               "analysis.gradient_conflict": {}, "tasks.val_size": -1, "eval.split": "test"}
# The validation split's size when tasks.val_size = -1: a tenth of the training rows, at least this.
MIN_VAL_ROWS = 32


# A stage longer than any study needs (the paper grid's is 500): a typo, refused.
MAX_STEPS = 10_000_000
# Steps of a stage above which checkpoint_every = auto keeps checkpoints on a CPU as well.
LONG_CPU_STAGE = 1000


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names file, key and allowed."""


def field(default: Any, help: str, choices: tuple[Any, ...] | None = None,  # noqa: A002
          minimum: float | None = None, search: Domain | None = None) -> Any:
    """A dataclass field with its help text and constraints (checked by ``validate``), and where a
    tuner may search it (``pluggable.search``)."""
    factory = {"default_factory": (lambda d=default: type(d)(d))} if isinstance(default, list | dict) else {"default": default}
    meta = {"help": help, "choices": choices, "minimum": minimum, **({"search": search} if search else {})}
    return dataclasses.field(metadata=meta, **factory)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    name: str = field("tiny-llama", "tiny-llama | smollm2-135m | a hub id | a local folder")


@dataclasses.dataclass(frozen=True)
class TasksConfig:
    names: list[str] = field(["arithmetic", "logic", "program", "format"],
                             "tasks, in sequential order (offline: arithmetic, logic, program, format; "
                             "paper: gsm8k, codealpaca, logiqa, alpaca, ultrachat)")
    sources: dict[str, str] = field({}, "paper task -> 'hub' (default) or a local file/folder in the upstream "
                                        "format; relative paths are relative to the config file")
    train_size: int = field(200, "training rows per task", minimum=1)
    test_size: int = field(50, "held-out rows per task", minimum=1)
    val_size: int = field(-1, "validation rows per task, drawn from the training pool beyond the train_size rows "
                              "trained on (disjoint from train and test by prompt); read only by a run with "
                              f"eval.split = 'validation'; -1 = a tenth of train_size, at least {MIN_VAL_ROWS}",
                          minimum=-1)
    data_seed: int = field(0, "seed of the task generators (same seed = byte-identical files)", minimum=0)
    mix: str = field("proportional", "mixture within a stage of several tasks", choices=("proportional", "balanced"))
    groups: list[list[str]] = field([], "multistage regime: the tasks of each stage, e.g. [[\"gsm8k\", \"logiqa\"], "
                                        "[\"codealpaca\"]]; every task of tasks.names exactly once; empty = a random split")
    num_groups: int = field(3, "multistage regime without tasks.groups: K groups of a random split drawn from the "
                               "run seed (recorded in result.json)", minimum=1)


def validation_rows(train_size: int, val_size: int) -> int:
    """``tasks.val_size`` resolved: -1 is a tenth of the training rows, at least ``MIN_VAL_ROWS``."""
    return val_size if val_size >= 0 else max(MIN_VAL_ROWS, train_size // 10)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps_per_stage: int = field(30, f"optimizer steps per regime stage (at most {MAX_STEPS:,})", minimum=1)
    batch_size: int = field(8, "rows per optimizer step", minimum=1)
    grad_accum: int = field(1, "micro-batches per optimizer step (must divide batch_size)", minimum=1)
    lr: float = field(1e-3, "peak learning rate", minimum=0, search=log_uniform(1e-6, 1e-2))
    weight_decay: float = field(0.1, "AdamW decoupled weight decay", minimum=0)
    betas: list[float] = field([0.9, 0.999], "AdamW betas")
    warmup_steps: int = field(3, "linear LR warm-up steps (per stage)", minimum=0)
    schedule: str = field("linear", "transformers LR schedule (per stage)",
                          choices=("linear", "cosine", "constant_with_warmup"))
    max_grad_norm: float = field(1.0, "gradient clipping norm; 0 disables", minimum=0)
    max_length: int = field(128, "tokens per training row (prompt + answer), truncated", minimum=8)
    log_every: int = field(1, "steps between metrics.jsonl lines", minimum=1)
    precision: str = field("auto", "precision policy, one of bench/engine/precision.py's POLICIES (its docstring says "
                                   "what each does); auto = bf16-mixed on a GPU and on a CPU with bf16 matrix "
                                   "units, else fp32",
                           choices=("auto", *POLICIES))
    activation_checkpointing: bool = field(False, "recompute each decoder layer's activations in the backward pass "
                                                  "(transformers' non-reentrant gradient checkpointing)")
    checkpoint_every: int = field(-1, "optimizer steps between in-run checkpoints (plus one after every stage); "
                                      "0 = off; -1 = auto: 100 on GPU; on CPU 100 for a stage of more than "
                                      f"{LONG_CPU_STAGE} steps, else off", minimum=-1)
    keep_final_weights: bool = field(False, "a successful run saves its final model (HF format) in <run_dir>/final/ "
                                            "instead of deleting its checkpoint")
    workers: int = field(1, "processes (one GPU each, or CPU processes) that one run is sharded over with FSDP2, "
                            "started by Ray Train; the step's train.grad_accum micro-batches are dealt out to them, "
                            "so train.grad_accum must be a multiple of it", minimum=1)
    rendezvous_timeout_s: int = field(120, "seconds the train.workers processes may take to join one process group "
                                           "before the run fails, naming the address rank 0 waited on", minimum=1)

    def checkpoint_interval(self, on_gpu: bool) -> int:
        """``checkpoint_every`` with auto resolved: a long stage keeps checkpoints on a CPU too."""
        if self.checkpoint_every != -1:
            return self.checkpoint_every
        return 100 if on_gpu or self.steps_per_stage > LONG_CPU_STAGE else 0

    def __post_init__(self) -> None:
        if self.steps_per_stage > MAX_STEPS:
            raise ConfigError(f"bad value {self.steps_per_stage} for key 'train.steps_per_stage'; allowed: 1 to "
                              f"{MAX_STEPS:,}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.grad_accum = {self.grad_accum} must divide train.batch_size = {self.batch_size}")
        if self.grad_accum % self.workers:
            raise ConfigError(f"bad value {self.grad_accum} for key 'train.grad_accum' with train.workers = "
                              f"{self.workers}; allowed: a multiple of train.workers (each worker takes "
                              f"train.grad_accum / train.workers of the step's micro-batches)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas = {self.betas!r}: allowed: two numbers in [0, 1)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    limit: int = field(50, "items per task evaluated (<= tasks.test_size)", minimum=1)
    batch_size: int = field(16, "lm-eval batch size", minimum=1)
    split: str = field("test", "the held-out rows every evaluation scores: 'test', or 'validation' (tuning trials: "
                               "no choice is ever made on the test split)", choices=("test", "validation"))
    max_gen_toks: int = field(16, "generation budget for exact-match tasks", minimum=1)
    nll: bool = field(True, "also measure the mean NLL of the gold answers")
    judge: dict[str, Any] = field({}, "LLM judge for open-ended tasks (1-10): {kind = 'hf', model = ...} or "
                                      "{kind = 'openai', base_url = ..., model = ..., api_key_env = ...}; "
                                      "empty = ROUGE-L against the reference")
    retention: dict[str, Any] = field({"source": "python-docs", "rows": 32, "tokens": 128},
                                      "general-ability retention, the mean per-token NLL on held-out general text "
                                      "before training and after every stage: {source = 'python-docs' | "
                                      "'hub:<dataset>[:<config>]:<split>:<column>' | a .txt/.jsonl file, rows = N, "
                                      "tokens = N} (bench/suite/retention.py); empty = off")


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Read-only analyses of training (bench/analysis/), off unless a table is given; they never
    change what is trained, only what is recorded."""

    importance_drift: dict[str, Any] = field({}, "{every = N, rho = 0.01, beta = 0.99}: fp32 EMA of g^2 over the "
                                                 "trainable parameters; every N steps the top-rho set's Jaccard with "
                                                 "the previous and the first set, and the Spearman correlation of "
                                                 "per-tensor mean importance; empty = off")
    gradient_conflict: dict[str, Any] = field({}, "{every = N, batches = B}: every N steps one gradient per task on B "
                                                  "fixed batches of its training rows, nothing updated; pairwise "
                                                  "cosines and the fraction of negative pairs; empty = off")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str = field("full_sft", "a registered method (isobench methods)")
    options: dict[str, Any] = field({}, "the method's options")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    study: str = field("default", "results go to <results_dir>/<study>/<run_id>/ (a plain folder name)")
    regime: str = field("multitask", "training regime (bench/run/regimes.py)", choices=REGIMES)
    seed: int = field(0, "seed of the model init, data order and dropout", minimum=0)
    results_dir: str = field("results", "root of all result folders")
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    tasks: TasksConfig = dataclasses.field(default_factory=TasksConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    method: MethodSpec = dataclasses.field(default_factory=MethodSpec)
    analysis: AnalysisConfig = dataclasses.field(default_factory=AnalysisConfig)

    @property
    def spelled_hash(self) -> str:
        """``config_digest`` of the config as written (every option as spelled): the hash that run
        ids had before ids were taken from resolved options (``bench.run.cell.Cell.config_hash``);
        a study's folders under such an id are found by it."""
        return config_digest(to_dict(self))


def config_digest(canon: dict[str, Any]) -> str:
    """sha1 of a config table without the keys that cannot change a result (``OPERATIONAL``) and
    the keys ``ADDED_LATER`` at the value they had before they existed."""
    canon = copy.deepcopy(canon)
    for dotted in [*OPERATIONAL, *(k for k, v in ADDED_LATER.items() if lookup(canon, k) == v)]:
        *path, last = dotted.split(".")
        table = canon
        for part in path:
            table = table[part]
        table.pop(last)
    canon = {k: v for k, v in canon.items() if v != {}}  # a table emptied by the above
    return hashlib.sha1(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def run_folder(results_dir: str, study: str, run_id: str) -> Path:
    """``<results_dir>/<study>/<run_id>``, resolved (symbolic links followed) and checked to lie
    inside ``results_dir``: nothing taken from a config ever writes outside it."""
    root = Path(results_dir).expanduser().resolve()
    run_dir = (root / study / run_id).resolve()
    if not run_dir.is_relative_to(root):
        raise ConfigError(f"results folder {root / study / run_id} resolves to {run_dir}, "
                          f"outside results_dir {root} (a symbolic link?): refusing to write there")
    return run_dir


def lookup(table: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        table = table[part]
    return table


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


