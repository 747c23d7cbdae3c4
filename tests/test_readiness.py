"""What the paper grid needs at start-up, checked by the dry run: one line per backbone, hub
task and the cluster's GPUs, each ``ok:`` or ``missing:``."""

from __future__ import annotations

from pathlib import Path

import bench.launch.readiness as readiness
from bench.cli import main
from bench.run.cells import load_grid

PAPER = Path(__file__).parents[1] / "configs" / "paper.toml"


def test_offline_without_a_cache_every_missing_piece_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(readiness, "cached", lambda repo, kind: repo == "openai/gsm8k")
    lines = readiness.startup_checks(load_grid(PAPER), None)
    assert "ok: task gsm8k (openai/gsm8k) is in HF_HOME" in lines
    assert any(line.startswith("missing: task logiqa: lucasmccabe/logiqa is not in HF_HOME") for line in lines)
    assert any(line.startswith("missing: backbone meta-llama/Meta-Llama-3-8B") and "16 GB" in line for line in lines)
    assert lines[-1].startswith("missing: a trial's placement group needs 8 GPUs")
    assert len(lines) == 4 + 5 + 1


def test_a_cluster_with_enough_gpus_and_a_cached_hub_pass(monkeypatch):
    import torch

    monkeypatch.setattr(readiness, "cached", lambda repo, kind: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    lines = readiness.startup_checks(load_grid(PAPER), None)
    assert all(line.startswith("ok:") for line in lines) and "has 8" in lines[-1]


def test_the_dry_run_prints_the_checks(capsys):
    assert main(["grid", "--dry-run", str(Path(__file__).parents[1] / "configs" / "smoke.toml")]) == 0
    assert "ok: backbone tiny-llama is built in" in capsys.readouterr().out
