"""Precision policies: isolation stays bit-exact under each; the memory plan equals the exact
bytes of a tiny model; the lost-update sentinel tells bf16-pure from fp32; activation
checkpointing changes no loss; old precision keys are refused naming the new one."""

from __future__ import annotations

import re

import pytest
import torch

import methods
from bench.config import ConfigError, RunConfig, TrainConfig, from_dict
from bench.engine.precision import POLICIES
from bench.run.memory_plan import plan_cell
from tests.harness import FAST, Harness, cell_of, contract_run, contract_violations

BF16 = [p for p in POLICIES if p != "fp32"]


@pytest.mark.parametrize("precision", BF16)
@pytest.mark.parametrize("name", methods.names())
def test_isolation_stays_bit_exact_under_every_precision(name, precision):
    assert contract_violations(name, precision=precision) == []


@pytest.mark.parametrize("precision", POLICIES)
def test_adam_v_reads_the_second_moment_of_every_optimizer(precision):
    h = Harness("epi", {"importance": "adam_v", "refresh_every": 2, "rho": 0.05}, precision=precision)
    h.steps(2)
    assert h.method.isolated.count() > 0


@pytest.mark.parametrize("precision", POLICIES)
@pytest.mark.parametrize("name", methods.names())
def test_memory_plan_equals_the_exact_bytes_of_a_tiny_model(name, precision):
    """The plan against the run: parameters, gradients and moments exactly; the method's state
    against its peak over three stages (every tensor the method holds at any hook, transient
    copies included), which the plan must cover and, but for a planned upper bound, equal."""
    options = FAST.get(name, {})
    h = contract_run(name, options, precision=precision)
    config = cell_of({"backbone": {"name": "tiny-llama"}, "method": {"name": name, "options": options},
                      "regime": "multistage" if methods.get(name).plans_stages else "sequential",
                      "train": {"precision": precision, "batch_size": 4}})
    plan = plan_cell(config, None)
    params = list(h.model.parameters())
    trainable = [p for p in params if p.requires_grad]
    assert plan.parameters == sum(p.numel() * p.element_size() for p in params)
    assert plan.gradients == sum(p.numel() * p.element_size() for p in trainable)
    moments = sum(t.numel() * t.element_size() for s in h.trainer.optimizer.state.values() for t in s.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    stepped = sum(1 for p in trainable if h.trainer.optimizer.state.get(p))
    # a tensor that never trained (HFT froze it in every stage) has no moments yet: planned all the same
    assert plan.optimizer == moments if stepped == len(trainable) else moments < plan.optimizer
    assert h.check is not None and h.check.peak > 0 or plan.method == 0
    if methods.get(name).plans_stages:  # its state depends on the task count and a transient probe copy
        assert h.check.peak <= plan.method
    else:
        assert plan.method == h.check.peak


def sentinel_fraction(precision: str, method: str = "full_sft", declared: bool = True, **train) -> float:
    from bench.engine.sentinel import LostUpdateSentinel

    h = Harness(method, precision=precision, lr=2e-5, weight_decay=0.0, **train)
    sentinel = LostUpdateSentinel(seed=0, held_fixed=h.method.held_fixed if declared else dict)
    h.trainer.observers.append(sentinel)
    sentinel.on_stage_start(h.trainer.context())
    h.steps(5)
    h.trainer.end_stage()
    (record,) = sentinel.summary()
    # full SFT: nearly every entry has a gradient; MoFO: the top 10% of each step's, 5 steps
    assert record["with_gradient"] > (0.9 if method == "full_sft" else 0.1) * record["sampled"]
    return record["fraction"]


def test_lost_update_sentinel_is_high_under_bf16_pure_and_low_under_fp32():
    assert sentinel_fraction("fp32") < 0.001
    assert sentinel_fraction("bf16-mixed") < 0.001
    assert sentinel_fraction("bf16-pure") > 0.3


def test_the_sentinel_does_not_count_entries_a_method_holds_on_purpose():
    """MoFO keeps the gradients of the entries it holds: told what it holds (``held_fixed``), the
    sentinel sees an fp32 run lose nothing and still sees bf16-pure's loss; not told, it would
    count MoFO's held entries as lost updates."""
    assert sentinel_fraction("fp32", "mofo") < 0.001
    # a warm-up's first step has lr 0: MoFO's entries chosen then, and never again, did not move,
    # and were not due to (the sentinel counts no step at lr 0)
    assert sentinel_fraction("fp32", "mofo", warmup_steps=1) < 0.001
    assert sentinel_fraction("bf16-pure", "mofo") > 0.3
    assert sentinel_fraction("fp32", "mofo", declared=False) > 0.3


def test_activation_checkpointing_gives_the_same_losses():
    from bench.backbones.registry import enable_activation_checkpointing

    plain = Harness("full_sft").steps(4)
    h = Harness("full_sft")
    enable_activation_checkpointing(h.model)
    assert h.steps(4) == plain


@pytest.mark.parametrize("key,value", [("train", {"bf16": "on"}), ("backbone", {"dtype": "bfloat16"})])
def test_old_precision_keys_name_the_new_one(key, value):
    with pytest.raises(ConfigError, match="was replaced by 'train.precision'"):
        from_dict(RunConfig, {key: value}, "<test>")


def test_auto_is_bf16_mixed_on_gpu_and_on_a_cpu_with_bf16_units(monkeypatch):
    from bench.engine import precision
    from bench.engine.precision import Precision

    assert Precision.from_config("auto", torch.device("cuda")).name == "bf16-mixed"
    assert TrainConfig().precision == "auto"
    monkeypatch.setenv("ISOBENCH_CPU_BF16", "0")  # what the tests pin
    precision.cpu_bf16.cache_clear()
    assert Precision.from_config("auto", torch.device("cpu")).name == "fp32"
    monkeypatch.setenv("ISOBENCH_CPU_BF16", "1")
    precision.cpu_bf16.cache_clear()
    assert Precision.from_config("auto", torch.device("cpu")).name == "bf16-mixed"
    monkeypatch.delenv("ISOBENCH_CPU_BF16")  # detected: no bf16 flag, no bf16 (the probe is not even run)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(precision, "_matmul_seconds", lambda dtype, repeats=5: 1 / 0)
    precision.cpu_bf16.cache_clear()
    assert Precision.from_config("auto", torch.device("cpu")).name == "fp32"
    # a flag alone is not enough: the probe must find bf16 much faster
    speeds = {torch.bfloat16: 0.9, torch.float32: 1.0}
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(precision, "_matmul_seconds", lambda dtype, repeats=5: speeds[dtype])
    precision.cpu_bf16.cache_clear()
    assert precision.resolve("auto", torch.device("cpu")) == "fp32"
    speeds[torch.bfloat16] = 0.25
    precision.cpu_bf16.cache_clear()
    assert precision.resolve("auto", torch.device("cpu")) == "bf16-mixed"
    precision.cpu_bf16.cache_clear()


def test_memory_plan_per_gpu_of_a_sharded_cell_and_the_workers_that_would_fit():
    from bench.run.memory_plan import DoesNotFit, GiB, check_fits

    def cell(workers: int) -> object:
        return cell_of({"backbone": {"name": "meta-llama/Meta-Llama-3-8B"}, "method": {"name": "epi"},
                        "train": {"precision": "bf16-mixed", "activation_checkpointing": True,
                                  "batch_size": 16, "grad_accum": 8, "max_length": 1024, "workers": workers}})

    one, eight = plan_cell(cell(1), 80 * GiB), plan_cell(cell(8), 80 * GiB)
    assert one.fits is False and eight.fits is True and eight.workers == 8
    for term in ("parameters", "gradients", "optimizer", "method"):
        assert getattr(eight, term) == -(-getattr(one, term) // 8)
    assert eight.activations == one.activations  # each worker runs whole micro-batches
    # gathered: the root group (embeddings and output layer: 1.05B params at 2 + 4 B) and two layers
    assert eight.evaluation == one.parameters and 6 * 1.05e9 < eight.gathered < one.parameters / 3
    assert "per GPU of 8 workers" in eight.line()
    with pytest.raises(DoesNotFit, match=r"train.workers = \d+ \(FSDP2 over") as refused:
        check_fits(cell(1), 80 * GiB)
    needed = int(re.search(r"train.workers = (\d+)", str(refused.value)).group(1))
    assert plan_cell(cell(needed), 80 * GiB).fits and not plan_cell(cell(needed // 2), 80 * GiB).fits


def test_the_memory_plan_resolves_auto_for_the_device_it_runs_on(monkeypatch):
    """``auto`` is fp32 on a CPU without bf16 units (the tests pin it) and bf16-mixed on a GPU, in the plan as in the run."""
    import bench.run.cell as cells

    auto = {"backbone": {"name": "random-llama-135m"}, "train": {"precision": "auto"}}
    fixed = {name: plan_cell(cell_of({"backbone": {"name": "random-llama-135m"}, "train": {"precision": name}}), None)
             for name in ("fp32", "bf16-mixed")}
    assert fixed["fp32"].activations != fixed["bf16-mixed"].activations  # the two plans can be told apart
    monkeypatch.setattr(cells, "device", lambda: torch.device("cpu"))
    assert cell_of(auto).precision == "fp32" and plan_cell(cell_of(auto), None) == fixed["fp32"]
    monkeypatch.setattr(cells, "device", lambda: torch.device("cuda"))
    assert cell_of(auto).precision == "bf16-mixed" and plan_cell(cell_of(auto), None) == fixed["bf16-mixed"]


def test_evaluation_casts_a_frozen_weight_once_not_at_every_forward():
    from bench.backbones.registry import load_backbone
    from bench.engine.precision import Precision

    precision = Precision.from_config("bf16-mixed", torch.device("cpu"))
    model, _ = load_backbone("tiny-llama", torch.float32, 0, torch.device("cpu"))
    for p in model.parameters():
        p.requires_grad_(False)  # as LoRA's merged export: every base weight frozen
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))

    def casts(context, forwards: int) -> int:
        with torch.profiler.profile() as prof, context:
            for _ in range(forwards):
                model(input_ids=ids)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    per_forward = casts(precision.autocast(), 2) - casts(precision.autocast(), 1)
    evaluated = casts(precision.evaluation(model), 2) - casts(precision.evaluation(model), 1)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert per_forward - evaluated >= linears  # the second forward casts no weight again
    assert not any(p.requires_grad for p in model.parameters())  # the flags are put back
