"""A Ray session for a grid or a sharded run: join the cluster at ``address`` (or
``RAY_ADDRESS``), or start a local Ray in a study-specific temp dir and reap the Ray processes
a killed driver left there; ``ray_session`` is both as a context manager."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def ray_temp_dir(study_dir: Path) -> Path:
    digest = hashlib.sha1(str(study_dir.resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"isobench-ray-{digest}"


def reap(temp_dir: Path) -> int:
    """Kill Ray processes left running under ``temp_dir`` (by a driver that was killed)."""
    import psutil

    killed = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            # Ray's agents rename themselves (ray::DashboardAgent): their log files still say whose they are.
            mine = str(temp_dir) in " ".join(proc.info["cmdline"] or []) or any(
                f.path.startswith(str(temp_dir)) for f in proc.open_files())
            if proc.pid != os.getpid() and mine:
                proc.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return killed


def start_ray(study_dir: Path, address: str | None, verbose: bool) -> Path:
    """Join the cluster at ``address``, or start a local Ray in a study-specific temp dir
    (reaping Ray processes a killed driver left there); returns that temp dir."""
    import ray

    temp_dir = ray_temp_dir(study_dir)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if not verbose:  # Ray's banner, trial table and hints; the status blocks say what matters
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        reap(temp_dir)
        ray.init(include_dashboard=False, _temp_dir=str(temp_dir), **quiet,
                 runtime_env={"env_vars": {"TQDM_DISABLE": "1", "RAY_AUTH_MODE": "disabled"}})
    return temp_dir


def stop_ray(address: str | None, temp_dir: Path) -> None:
    import ray

    ray.shutdown()
    if not address:
        reap(temp_dir)
        remove_session_files(temp_dir)


def remove_session_files(temp_dir: Path) -> None:
    """A local Ray's temp folder: its session logs hold the environments of its actors (e.g.
    tracker keys), so nothing of it outlives the grid."""
    shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_session(study_dir: Path, address: str | None, verbose: bool = False) -> Iterator[None]:
    """Ray started (or joined) for the body, stopped (and its local processes reaped) after."""
    temp_dir = start_ray(study_dir, address, verbose)
    try:
        yield
    finally:
        stop_ray(address, temp_dir)
