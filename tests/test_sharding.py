"""A run sharded over 2 CPU processes (FSDP2, gloo) against the same run in one process.

- Every registered method trains 20 steps over two sequential stages (lr 1e-3, clipping on):
  the losses agree to 1e-5, every mask the method selects equals the one-process mask entry for
  entry, no isolated entry changes on any rank, and the final weights agree (``assert_weights_agree``:
  to 1e-5, but for the rare entry whose near-zero gradient Adam amplifies). The one-process run
  uses the same micro-batches (``train.grad_accum = 2``: one per worker in the sharded run). The
  runs are not bit-identical: the global gradient norm sums the ranks' parts in another order,
  and a vectorized kernel splits a shard where it would not split the whole tensor (measured:
  losses within 5e-7 over 20 steps).
- A sharded checkpoint (one file per rank, ``latest`` written once all are) resumes bit for bit.
- The global top-rho selection on sharded scores (uneven blocks, an empty block, many ties, the
  histogram search forced through several passes) is exactly the one-process selection.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import methods
from tests.harness import FAST, cell_of
from tests.sharded import spawn, trace, whole

STEPS = 20
SHAPES = {"a.0.w": (7, 5), "b.1.w": (3, 4), "c.w": (1, 6)}  # 2 ranks: blocks of 4+3, 2+1, 1+0 rows


def scores() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: torch.randint(0, 6, s, generator=g).float() * (i + 1) for i, (n, s) in enumerate(SHAPES.items())}


def selections() -> list[dict[str, Any]]:
    """Whole masks of the top-rho selection (and its per-layer counts) for several settings."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from methods.parts.collectives import world
    from methods.parts.masks import indices_to_mask
    from methods.parts.selection import per_layer_counts, select_top_fraction

    full = scores()
    if world() > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world(),))
        sharded = {n: distribute_tensor(t, mesh, [Shard(0)]) for n, t in full.items()}
    else:
        sharded = full
    out = []
    for rho in (0.05, 0.3, 0.5):
        for normalize in (True, False):
            index = select_top_fraction(sharded, rho, normalize=normalize, bins=8, exact_below=4)
            out.append({"masks": {n: whole(indices_to_mask(i, sharded[n]), sharded[n]) for n, i in index.items()},
                        "per_layer": per_layer_counts(index)})
    # larger scores, so the sampled range is proposed (every rank's sample gathered) and verified
    g = torch.Generator().manual_seed(1)
    large = {"a.0.w": torch.rand(70, 30, generator=g) ** 6, "b.1.w": (torch.rand(33, 10, generator=g) * 4).round()}
    if world() > 1:
        large = {n: distribute_tensor(t, mesh, [Shard(0)]) for n, t in large.items()}
    for rho in (0.01, 0.2):
        index = select_top_fraction(large, rho, normalize=True, bins=8, exact_below=16, sample=256)
        out.append({"masks": {n: whole(indices_to_mask(i, large[n]), large[n]) for n, i in index.items()},
                    "per_layer": per_layer_counts(index)})
    return out


def resume(folder: str) -> dict[str, Any]:
    """10 EPI steps with a checkpoint every 3, then a new trainer resumed from the last one."""
    from pathlib import Path

    from bench.engine.checkpoint import Checkpointer
    from tests.harness import Harness

    def harness() -> tuple[Harness, Checkpointer]:
        h = Harness("epi", FAST["epi"], grad_accum=2, lr=1e-3)
        return h, Checkpointer(Path(folder), "hash", 3, dict, h.trainer.sharding)

    h, checkpointer = harness()
    losses = []
    for _ in range(10):
        losses.append(h.step())
        if h.trainer.step <= 8:  # the run "dies" after step 8: its last checkpoint is step 6
            checkpointer.after_step(h.trainer)
    again, checkpointer = harness()
    saved = checkpointer.load()
    assert saved is not None
    again.trainer.load_state_dict(saved["trainer"])
    again.start(again.trainer.stage)
    return {"from": saved["step"], "uninterrupted": losses[6:], "resumed": again.steps(4),
            "files": sorted(str(p.relative_to(folder)) for p in Path(folder, "checkpoint").rglob("*"))}


def rank0_error() -> str:
    """What each rank raises when rank 0's part of ``on_writer`` fails."""
    from bench.engine.sharding import Sharding

    try:
        Sharding(torch.device("cpu")).writer_first(lambda: 1 / 0)
    except Exception as e:  # noqa: BLE001 - the test compares the messages
        return f"{type(e).__name__}: {e}"
    return "nothing raised"


def work(names: list[str], folder: str) -> dict[str, Any]:
    torch.set_num_threads(1)  # as every worker runs (tests.sharded), whatever an earlier test set here
    return {"selections": selections(), "resume": resume(folder), "error": rank0_error(),
            "traces": {n: trace(n, FAST.get(n, {}), STEPS, grad_accum=2, lr=1e-3, max_grad_norm=1.0) for n in names}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    names = methods.names()
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    return work(names, str(one)), spawn(work, 2, names, str(two))


def test_an_error_in_rank_0s_part_is_raised_on_every_rank(runs: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    one, ranks = runs
    assert one["error"] == ranks[0]["error"] == "ZeroDivisionError: division by zero"
    assert ranks[1]["error"] == "RuntimeError: rank 0 failed: ZeroDivisionError: division by zero"


def test_a_sharded_checkpoint_resumes_bit_for_bit(runs: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    one, ranks = runs
    assert one["resume"]["files"] == ["checkpoint/state.pt"]
    for sharded in [one, *ranks]:
        r = sharded["resume"]
        assert r["from"] == 6 and r["resumed"] == r["uninterrupted"]
    assert ranks[0]["resume"]["files"] == ["checkpoint/latest", "checkpoint/step-6", "checkpoint/step-6/rank0.pt",
                                           "checkpoint/step-6/rank1.pt"]


def test_sharded_selection_is_the_one_process_selection(runs: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    one, ranks = runs
    for rank, sharded in enumerate(ranks):
        for a, b in zip(one["selections"], sharded["selections"], strict=True):
            assert a["per_layer"] == b["per_layer"]
            assert all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"]), f"rank {rank}"
    counts = [sum(int(m.sum()) for m in s["masks"].values()) for s in one["selections"]]
    assert set(counts[:6]) == {3, 16, 26} and counts[6:] == [24, 486]  # round(rho * 53), round(rho * 2430)


def assert_weights_agree(sharded: torch.Tensor, one: torch.Tensor, where: str) -> None:
    """Every entry within 1e-5 + 1e-4 |w| of the one-process weight, but for Adam's amplification
    of rounding noise: an entry whose gradient is near zero has its update divided by a near-zero
    sqrt(v), so a last-bit difference in that gradient moves it by up to a fraction of the learning
    rate (measured: HFT, 1 entry of 8192 of one tensor off by 2.3e-5 over 20 steps at lr 1e-3, the
    others within 2e-8). Such entries may be at most 0.1% of a tensor and at most 1e-4 (a tenth of
    the learning rate) away; a sharding error (a wrong scale, a lost shard) moves many entries."""
    diff = (sharded - one).abs()
    beyond = diff > 1e-5 + 1e-4 * one.abs()
    assert int(beyond.sum()) <= max(1, one.numel() // 1000), f"{where}: {int(beyond.sum())} of {one.numel()} entries differ"
    assert float(diff.max()) <= 1e-4, f"{where}: an entry differs by {float(diff.max()):.3g}"


@pytest.mark.parametrize("name", methods.names())
def test_two_workers_match_one_process(name: str, runs: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    one, ranks = runs
    a = one["traces"][name]
    for rank, sharded in enumerate(ranks):
        b = sharded["traces"][name]
        assert b["losses"] == pytest.approx(a["losses"], abs=1e-5), f"rank {rank}"
        # a method's loss term (Method.loss): the ranks' parts add up to the one-process term
        assert b["method_losses"] == pytest.approx(a["method_losses"], rel=1e-4, abs=1e-7), f"rank {rank}"
        assert b["changed"] == [], f"rank {rank}: isolated entries changed: {b['changed'][:3]}"
        assert len(b["masks"]) == len(a["masks"])
        for i, (ma, mb) in enumerate(zip(a["masks"], b["masks"])):
            for n in ma:
                assert torch.equal(ma[n], mb[n]), f"rank {rank}: mask {i} of {n} differs"
        for n, w in a["weights"].items():
            assert_weights_agree(b["weights"][n], w, f"rank {rank}: {n}")
    if methods.get(name).isolates:
        assert any(m.any() for mask in a["masks"] for m in mask.values()), f"{name} isolated nothing: vacuous"
    if methods.get(name).loss is not methods.Method.loss:
        assert a["method_losses"] and a["method_losses"][-1] > 0, f"{name}: its loss term never counted: vacuous"


def test_a_worker_refuses_a_process_group_of_another_size() -> None:
    from bench.engine.sharding import Sharding

    assert Sharding(torch.device("cpu"), workers=1).workers == 1
    with pytest.raises(RuntimeError, match="train.workers = 2, but this process is one of 1"):
        Sharding(torch.device("cpu"), workers=2)


def test_one_resource_policy_for_grid_trials_and_single_runs(monkeypatch) -> None:
    import os

    from bench.launch.dispatch import resources

    cell = cell_of({"train": {"workers": 2, "grad_accum": 2}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resources(cell) == {"cpu": 2.0}  # a grid packs trials: one CPU per worker
    assert resources(cell, alone=True) == {"cpu": float(os.cpu_count())}  # isobench run: the whole machine
    assert resources(cell, {"cpu": 3}) == {"cpu": 3.0}  # [grid] resources
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resources(cell) == {"gpu": 2.0, "cpu": 2.0}



def evaluation_of(suite: Any, batch_size: int) -> Any:
    """The tiny model's evaluation of ``suite``, item by item (in a process group: every rank
    takes part, rank 0 returns the scores)."""
    from bench.backbones.registry import tiny_llama
    from bench.config import EvalConfig
    from bench.suite.evaluate import evaluate

    model, tokenizer = tiny_llama(0)
    return evaluate(model, tokenizer, suite, EvalConfig(limit=7, batch_size=batch_size, max_gen_toks=6),
                    per_item=True)


def test_evaluation_split_over_two_workers_equals_one_process_item_by_item(tmp_path) -> None:
    """lm-eval's data-parallel split on 2 gloo workers: rank 0 gathers every task's items in
    order (7 items: an uneven split, 4 and 3). One item per batch: every item, score and gold
    NLL is bit-identical to one process. Batches of 4: each rank batches other neighbours
    together (other padded shapes, other kernel sums), so an NLL may differ in float32's last
    bits, as it does in one process between two batch sizes; items and scores are identical."""
    from bench.suite.tasks import build_suite

    suite = build_suite(["arithmetic", "logic", "format"], 0, 8, 7, tmp_path, 6)
    one = evaluation_of(suite, 1)
    two = spawn(evaluation_of, 2, suite, 1)
    assert two[1] is None and two[0] == one
    assert [i["id"] for i in one["logic"]["items"]] == list(range(7))
    assert all(i["nll"] is not None for t in one.values() for i in t["items"])
    one, (two, _) = evaluation_of(suite, 4), spawn(evaluation_of, 2, suite, 4)
    for task in one:
        assert one[task]["score"] == two[task]["score"]
        for a, b in zip(one[task]["items"], two[task]["items"], strict=True):
            assert {k: v for k, v in a.items() if k != "nll"} == {k: v for k, v in b.items() if k != "nll"}
            assert abs(a["nll"] - b["nll"]) <= 1e-6 * abs(a["nll"])


def test_interleave_restores_the_item_order_of_a_strided_split() -> None:
    from bench.suite.evaluate import interleave

    ranks = [{"t": {"acc": [0, 2, 4, 6]}, "s": ["a0", "a2"]}, {"t": {"acc": [1, 3, 5]}, "s": ["a1"]}]
    assert interleave(ranks) == {"t": {"acc": [0, 1, 2, 3, 4, 5, 6]}, "s": ["a0", "a1", "a2"]}
