"""Read a study folder: every ``<run_id>/result.json``, the grid manifest (``grid.json``, the
cells that should exist) and each run's mask history. Nothing here imports torch or ray."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell of the study: its identity, and its result if any (None = missing)."""

    run_id: str
    method: str
    backbone: str
    regime: str
    seed: int
    status: str  # success | failed | missing | running
    result: dict[str, Any] | None
    masks: list[dict[str, Any]]

    @property
    def data(self) -> dict[str, Any]:
        """The result dict (only for runs that have one)."""
        if self.result is None:
            raise ValueError(f"run {self.run_id} has no result")
        return self.result

    @property
    def ok(self) -> bool:
        return self.status == "success"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_study(study_dir: str | Path) -> list[Run]:
    """All runs of the study, sorted by (regime, backbone, method, seed, run_id)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"{study_dir}: no such study folder")
    runs: dict[str, Run] = {}
    for path in sorted(study_dir.glob("*/result.json")):
        try:
            r = json.loads(path.read_text())
        except ValueError:
            continue
        runs[r["run_id"]] = Run(r["run_id"], r["method"], r["backbone"], r["regime"], int(r["seed"]),
                                r.get("status", "failed"), r, _read_jsonl(path.parent / "masks.jsonl"))
    manifest = study_dir / "grid.json"
    if manifest.is_file():
        for cell in json.loads(manifest.read_text())["cells"]:
            if cell["run_id"] not in runs:
                runs[cell["run_id"]] = Run(cell["run_id"], cell["method"], cell["backbone"], cell["regime"],
                                           int(cell["seed"]), "missing", None, [])
    return sorted(runs.values(), key=lambda r: (r.regime, r.backbone, r.method, r.seed, r.run_id))
