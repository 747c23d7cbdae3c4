"""What a grid needs at start-up, checked without a GPU and before any trial: the backbones'
configs and the tasks' hub datasets (in ``HF_HOME``, or reachable, with what a download would
cost) and a Ray cluster with the GPUs of one trial's placement group. One line per check,
``ok:`` or ``missing:``; printed by ``isobench grid --dry-run``."""

from __future__ import annotations

import os
from pathlib import Path

from bench.backbones.registry import resolve
from bench.launch.dispatch import resources
from bench.run.cell import Cell
from bench.run.cells import Grid
from bench.run.cost_plan import parameters
from bench.suite.tasks.paper import HUB_IDS

OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline() -> bool:
    return any(os.environ.get(v, "").strip() in ("1", "true", "TRUE", "yes") for v in OFFLINE)


def cached(repo_id: str, repo_type: str) -> bool:
    """Whether ``HF_HOME``'s hub cache holds ``repo_id`` (a model's cell, or any of a dataset)."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    try:
        return any(r.repo_id == repo_id and r.repo_type == "dataset" for r in scan_cache_dir().repos)
    except Exception:  # noqa: BLE001 - no cache folder yet
        return False


def reachable(repo_id: str, repo_type: str) -> str | None:
    """None when the hub knows ``repo_id``; else why not (offline, unknown, gated...)."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import HfApi

    try:
        (HfApi().model_info if repo_type == "model" else HfApi().dataset_info)(repo_id, timeout=10)
    except Exception as e:  # noqa: BLE001 - every failure is reported as one line
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return None


def backbone_line(cell: Cell) -> str:
    name = cell.backbone.name
    backbone = resolve(name)
    if backbone.model_id is None:
        return f"ok: backbone {name} is built in"
    if Path(name).expanduser().is_dir():
        return f"ok: backbone {name} is a local folder"
    counted = parameters(cell)
    size = f"about {counted[0] * 2 / 1e9:.0f} GB of bf16 weights" if counted else "its weights"
    if cached(backbone.model_id, "model"):
        return f"ok: backbone {name} is in HF_HOME"
    why = reachable(backbone.model_id, "model")
    if why:
        return f"missing: backbone {name}: not in HF_HOME ({hf_home()}) and not reachable ({why}); a run downloads {size}"
    return f"ok: backbone {name} resolves on the hub; not in HF_HOME: a run downloads {size}"


def dataset_line(task: str) -> str:
    repo = HUB_IDS[task]
    if cached(repo, "dataset"):
        return f"ok: task {task} ({repo}) is in HF_HOME"
    why = reachable(repo, "dataset")
    if why:
        return (f"missing: task {task}: {repo} is not in HF_HOME ({hf_home()}) and not reachable ({why}); give a "
                f"local copy with tasks.sources.{task}, or download it first")
    return f"ok: task {task} ({repo}) resolves on the hub; not in HF_HOME: a run downloads it"


def hf_home() -> str:
    return os.environ.get("HF_HOME", str(Path("~/.cache/huggingface").expanduser()))


def cluster_line(grid: Grid, address: str | None) -> str:
    """The largest trial's GPUs against what the cluster (or this machine) has."""
    want = max((resources(c, grid.spec.resources).get("gpu", 0.0) for c in grid.cells), default=0.0)
    if want == 0:
        return "ok: no trial asks for a GPU"
    if address:
        import ray

        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            have = float(ray.cluster_resources().get("GPU", 0.0))
        except Exception as e:  # noqa: BLE001
            return f"missing: the Ray cluster at {address}: {type(e).__name__}: {e}"
        finally:
            ray.shutdown()
        where = f"the Ray cluster at {address}"
    else:
        import torch

        have, where = float(torch.cuda.device_count()), "this machine (no --address or RAY_ADDRESS)"
    if have < want:
        return f"missing: a trial's placement group needs {want:g} GPUs, {where} has {have:g}"
    return f"ok: a trial's {want:g} GPUs, {where} has {have:g}"


def startup_checks(grid: Grid, address: str | None) -> list[str]:
    """One line per check of what the grid needs before its first trial."""
    lines = []
    for name in sorted({c.backbone.name for c in grid.cells}):
        lines.append(backbone_line(next(c for c in grid.cells if c.backbone.name == name)))
    hub_tasks = sorted({t for c in grid.cells for t in c.tasks.names
                        if t in HUB_IDS and c.tasks.sources.get(t, "hub") == "hub"})
    lines += [dataset_line(t) for t in hub_tasks]
    lines.append(cluster_line(grid, address))
    return lines
