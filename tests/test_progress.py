"""The grid's status block, from trial reports alone (no Ray needed to check its content)."""

from __future__ import annotations

import re

from bench.launch.progress import GridProgress, clock


def test_status_block_names_cells_stages_steps_and_eta(capsys):
    p = GridProgress(total=3, steps_per_cell={"a": 10, "b": 10, "c": 10}, every=30)
    p.report("a", {"run_id": "a", "method": "epi", "seed": 1, "stage": 0, "stages": 2, "step": 0, "loss": 2.5,
                   "train_s": 0.0})
    p.report("a", {"run_id": "a", "method": "epi", "seed": 1, "stage": 1, "stages": 2, "step": 5, "loss": 1.25,
                   "train_s": 1.0})
    err = capsys.readouterr().err
    assert len(re.findall(r"^\[grid ", err, re.MULTILINE)) == 2  # one block per stage change, not per step
    assert re.search(r"0/3 done, 1 running, 0 failed, 2 queued; ETA \d+m\d\ds", err)
    assert re.search(r"epi +seed 1  stage 2/2  step 6/10  loss 1\.250  \dm\d\ds  a", err)
    p.report("a", {"run_id": "a", "method": "epi", "seed": 1, "stage": 1, "stages": 2, "step": 6, "loss": 1.0})
    assert capsys.readouterr().err == ""  # same stage, within 30 s: nothing scrolls
    p.finished("a", failed=True)
    assert "0/3 done, 0 running, 1 failed, 2 queued" in capsys.readouterr().err


def test_clock():
    assert clock(75) == "1m15s" and clock(3725) == "1:02:05"
