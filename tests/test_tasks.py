"""Offline task generators: determinism, disjoint splits, lm-eval task files."""

from __future__ import annotations

import pytest
import yaml

from bench.suite.tasks import build_suite
from bench.suite.tasks.offline import OFFLINE_TASKS

TASKS = {t.name: t for t in OFFLINE_TASKS}


@pytest.mark.parametrize("name", list(TASKS))
def test_generators_are_deterministic_and_splits_disjoint(name):
    train, test = TASKS[name].generate(7, 100, 30)
    again, _ = TASKS[name].generate(7, 100, 30)
    other, _ = TASKS[name].generate(8, 100, 30)
    assert train == again and train != other
    assert len(train) == 100 and len(test) == 30
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}


def test_suite_files_are_byte_identical_for_the_same_seed(tmp_path):
    a = build_suite(list(TASKS), 3, 50, 10, tmp_path / "a", 8)
    build_suite(list(TASKS), 3, 50, 10, tmp_path / "b", 8)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len([f for f in files_a if f.suffix == ".jsonl"]) == 2 * len(TASKS)
    assert len([f for f in files_a if f.suffix == ".yaml"]) == 2 * len(TASKS)
    for rel in files_a:
        a_bytes = (tmp_path / "a" / rel).read_bytes().replace(str(tmp_path / "a").encode(), b"ROOT")
        assert a_bytes == (tmp_path / "b" / rel).read_bytes().replace(str(tmp_path / "b").encode(), b"ROOT"), rel
    assert a.chance()["logic"] == pytest.approx(100 / 3) and a.chance()["arithmetic"] == 0.0
    config = yaml.safe_load((a.lm_eval_dir / "iso_logic.yaml").read_text())
    assert config["output_type"] == "multiple_choice"
