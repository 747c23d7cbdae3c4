"""Read a study folder: every ``<run_id>/result.json`` (through ``reports.schema``, the one
loader), the grid manifest (``grid.json``, the cells that should exist) and each run's events
(``events/<source>.jsonl``; reports pick events by their ``kind``) and its per-item records
(``evaluation/items.jsonl``). Nothing here imports torch or ray."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from reports.schema import ItemRecord, Result, ResultError, read_items, read_result_file


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell of the study: its identity, and its result if any (None = missing)."""

    run_id: str
    method: str
    backbone: str
    regime: str
    seed: int
    status: str  # success | failed | missing | running | corrupt | stale
    result: Result | None
    events: list[dict[str, Any]]
    problem: str | None = None  # why a result file could not be read or used
    config: dict[str, Any] | None = None  # the resolved config (from the result, else the manifest)
    variant: str = ""  # what sets this run's config apart from others of its method (set by load_study)
    variant_values: dict[str, Any] = dataclasses.field(default_factory=dict)  # the differing keys and their values
    items: list[ItemRecord] = dataclasses.field(default_factory=list)  # per-item records (evaluation/items.jsonl)

    @property
    def data(self) -> Result:
        """The result (only for runs that have one)."""
        if self.result is None:
            raise ValueError(f"run {self.run_id} has no result")
        return self.result

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


class DamagedLog(ValueError):
    """A line of a run's log that is not a JSON object; the message names the file and line."""


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file; ``DamagedLog`` names the file and line of one that is not."""
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DamagedLog(f"{path}: line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DamagedLog(f"{path}: line {number} is not a JSON object")
        out.append(record)
    return out


def _read_events(run_dir: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted((run_dir / "events").glob("*.jsonl")):
        events += [{"source": path.stem, **record} for record in read_json_lines(path)]
    return events


def read_manifest(study_dir: Path) -> dict[str, Any]:
    """``<study>/grid.json``, or {} when absent; ``DamagedLog`` naming it when it cannot be read."""
    manifest = study_dir / "grid.json"
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedLog(f"{manifest}: not valid JSON ({e}); the next 'isobench grid' of the study rewrites it, "
                         f"or delete it") from None
    return data if isinstance(data, dict) else {}


RESOLVED_PRECISION = "precision"  # the variant key of the policy a run's precision resolved to
DATA_VERSION = "data"  # the variant key of the content hashes of a run's local task sources


def data_version(result: Result) -> str:
    """Short hash of the content of every local task source a run read ("" for generated and hub
    data, which carry no file hash)."""
    digests = {t: rows.get("source_sha256") for t, rows in sorted(result.evaluation.data_rows.items())
               if rows.get("source_sha256")}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:8] if digests else ""

# Keys that differ between runs pooled as seeds of one row, or that never change a result.
NOT_A_VARIANT = {"seed", "results_dir", "study", "train.checkpoint_every", "train.keep_final_weights"}


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def name_problem(result: Result) -> str | None:
    """Why a result's regime cannot name the report's files (a '/', '..'), or None."""
    regime = result.run.regime
    if not isinstance(regime, str) or not PLAIN_NAME.match(regime) or ".." in regime:
        return f"its run.regime {regime!r} is not a plain name (it names files of the report)"
    return None


def inconsistency(result: Result) -> str | None:
    """Why a successful result's scores cannot be tabulated, or None: every stage must score
    every task of the run's (duplicate-free) task list, and the stage count fit the regime."""
    tasks, stages = result.run.tasks, result.evaluation.stages
    if len(set(tasks)) != len(tasks):
        return f"its task list {tasks} names a task twice"
    planned = result.evaluation.plan.get("groups")
    expected = len(planned) if planned else {"multitask": 1, "sequential": len(tasks)}.get(result.run.regime)
    if expected is not None and len(stages) != expected:
        return f"{len(stages)} stages for regime {result.run.regime!r} over {len(tasks)} tasks (expected {expected})"
    trained = [t for s in stages for t in s.trained_on]
    if result.run.regime in ("sequential", "multistage") and sorted(trained) != sorted(tasks):
        return f"its stages train {trained}, not each of the run's tasks {sorted(tasks)} exactly once"
    for stage in stages:
        if set(stage.scores) != set(tasks) or set(stage.nll) != set(tasks):
            return f"stage {stage.stage} scores {sorted(stage.scores)}, not the run's tasks {sorted(tasks)}"
    return None


def label_variants(runs: list[Run]) -> list[Run]:
    """Runs of one (regime, backbone, method) pool as seeds only when their configs differ in
    the seed alone; otherwise each config gets its own label naming the keys that differ."""
    out = []
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.regime, r.backbone, r.method), []).append(r)
    for group in groups.values():
        flat = {r.run_id: {k: v for k, v in flatten(r.config or {}).items() if k not in NOT_A_VARIANT} for r in group}
        # ``train.precision = "auto"`` resolves per machine: runs it resolved differently are never
        # pooled as seeds of one row (the resolved policy is in each result)
        resolved = {r.run_id: r.result.train.precision.get("policy") for r in group if r.result is not None}
        if len({v for v in resolved.values() if v}) > 1:
            for run_id, policy in resolved.items():
                flat[run_id][RESOLVED_PRECISION] = json.dumps(policy)
        # runs measured on different contents of one source (a rewritten file, a moved link) are
        # other test sets: never pooled as seeds, each labelled with its data's hash
        versions = {r.run_id: data_version(r.result) for r in group if r.result is not None}
        if len(set(versions.values())) > 1:
            for run_id, version in versions.items():
                flat[run_id][DATA_VERSION] = json.dumps(version or "generated")
        keys = sorted({k for f in flat.values() for k in f})
        differing = [k for k in keys if len({f.get(k) for f in flat.values() if f}) > 1]
        for r in group:
            label = ", ".join(f"{k.removeprefix('method.options.')}="
                              f"{json.loads(flat[r.run_id][k]) if k in flat[r.run_id] else '-'}"
                              for k in differing) if flat[r.run_id] else ("config unknown" if differing else "")
            values = {k: json.loads(flat[r.run_id][k]) if k in flat[r.run_id] else None for k in differing}
            out.append(dataclasses.replace(r, variant=label, variant_values=values if flat[r.run_id] else {}))
    return out


def load_study(study_dir: str | Path) -> list[Run]:
    """All runs of the study, sorted by (regime, backbone, method, variant, seed, run_id)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"{study_dir}: no such study folder")
    runs: dict[str, Run] = {}
    corrupt: dict[str, str] = {}
    data = read_manifest(study_dir)
    twins = data.get("twins", {})  # folder under a spelled-out id -> the id of the cell it holds
    configs = {c["run_id"]: c.get("config") for c in data.get("cells", [])}
    for path in sorted(study_dir.glob("*/result.json")):
        try:
            r = read_result_file(path)
        except ResultError as e:
            corrupt[path.parent.name] = str(e)
            continue
        if r is None:
            continue
        info = r.run
        why = name_problem(r) or (inconsistency(r) if r.ok else None)
        problem = f"{path}: {why}" if why else None
        try:
            events = _read_events(path.parent)
        except DamagedLog as e:
            problem, events = str(e), []
        try:
            items = read_items(path.parent)
        except ResultError as e:
            problem, items = str(e), []
        run_id = twins.get(path.parent.name, info.run_id)
        config = configs.get(run_id) or info.config if run_id != info.run_id else info.config
        regime = "?" if name_problem(r) else info.regime
        run = Run(run_id, info.method, info.backbone, regime, info.seed, "corrupt" if problem else info.status,
                  None if problem else r, events, problem, config, items=items)
        if run_id not in runs or _preferred(run, path.parent.name, runs[run_id]):
            runs[run_id] = run  # one cell held in two folders is one run: its success, in its own folder first
    grids = data.get("grids")
    expected = {i for ids in grids.values() for i in ids} if grids else None
    for cell in data.get("cells", []):
        if cell["run_id"] not in runs:
            status = "corrupt" if cell["run_id"] in corrupt else (
                "stale" if expected is not None and cell["run_id"] not in expected else "missing")
            runs[cell["run_id"]] = Run(cell["run_id"], cell["method"], cell["backbone"], cell["regime"],
                                       int(cell["seed"]), status, None, [], corrupt.get(cell["run_id"]),
                                       cell.get("config"))
    for run_id, problem in corrupt.items():
        if run_id not in runs:
            runs[run_id] = Run(run_id, run_id.rsplit("-", 1)[0], "?", "?", -1, "corrupt", None, [], problem)
    labelled = label_variants([r for r in runs.values() if r.status != "stale"])
    stale = [r for r in runs.values() if r.status == "stale"]
    return sorted(labelled + stale, key=lambda r: (r.regime, r.backbone, r.method, r.variant, r.seed, r.run_id))


def _preferred(run: Run, folder: str, held: Run) -> bool:
    """Whether ``run`` (read from ``folder``) replaces ``held`` as its cell's run: a success
    over anything else, then the cell's own folder over a twin's."""
    return (run.ok, folder == run.run_id) > (held.ok, False)


def method_order(study_dir: str | Path) -> list[str]:
    """The order of methods in the study's grid files (``grid.json``), for table rows."""
    return list(read_manifest(Path(study_dir)).get("methods", []))
