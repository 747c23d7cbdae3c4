"""The GPU acceptance command's CPU dry run: the same code on tiny shapes, every figure present."""

from __future__ import annotations

import json

from bench.tools.gpu_check import main


def test_gpu_check_cpu_dry_run_measures_every_figure(tmp_path, capsys):
    assert main(["--cpu-dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check_cpu_dry_run.json").read_text())
    names = [f["name"] for f in report["figures"]]
    assert report["dry_run"] and len(names) == 12
    for part in ("full_sft tiny-llama 2x32 bf16-mixed", "epi (ema) / full_sft", "epi (adam_v) / full_sft",
                 "static_isolation / full_sft", "random_isolation / full_sft", "FSDP2 step (gloo, 1 process)",
                 "evaluation generation", "bf16-mixed + checkpointing, epi (ema)"):
        assert any(part in n for n in names), part
    assert all(f["status"] == "measured (dry run)" or f["status"].startswith("skipped") for f in report["figures"])
    assert "| figure" in capsys.readouterr().out


def test_gpu_check_without_a_gpu_says_how_to_dry_run(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 2 and "--cpu-dry-run" in capsys.readouterr().out
