"""A Ray session for a grid or a sharded run: join the cluster at ``address`` (or
``RAY_ADDRESS``), or start a local Ray in a study-specific temp dir and reap the Ray processes
a killed driver left there; ``ray_session`` is both as a context manager.

Who may use the cluster:

- A local session keeps Ray's token authentication on. It generates a token for the session,
  writes it owner-only (0600) into a folder of the session's temp folder (0700, owned by this
  user; Ray opens the temp folder itself to every user),
  points ``RAY_AUTH_TOKEN_PATH`` at it so that the raylet, the workers and this driver present
  it, and removes it with the folder when the session ends. The user's ``~/.ray`` is not touched.
  Ray 2.60's GCS server, raylets and workers still listen on every interface (``ray.init``'s
  node address does not change that), so the token is what keeps others out.
- A local session is Ray's single-machine cluster: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the
  mode Ray uses on macOS and Windows, under which its node address is ``127.0.0.1`` and the GCS
  server, raylet, workers, driver and runtime-env agent listen on loopback only (on Linux Ray
  otherwise replaces a loopback ``_node_ip_address`` by the machine's external address and listens
  on every interface). Trials, and a sharded trial's process-group rendezvous (whose master address
  is rank 0's node address), then never depend on the external address being reachable from itself.
- Joining a cluster (``--address`` / ``RAY_ADDRESS``) respects its setting: the token comes from
  ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token`` as Ray reads it; with
  authentication switched off there (``NO_AUTH``), one warning line says that
  the cluster is open.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

TOKEN_FILE = "auth/token"  # in a 0700 folder of its own: Ray makes its temp folder 0777 for other users
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch for a cluster of one machine
SESSION_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", SINGLE_MACHINE_ENV)
NO_AUTH = "disabled"  # the value of Ray's auth-mode variable that switches authentication off
OPEN_CLUSTER_WARNING = ("[ray] warning: authentication is switched off for this Ray cluster (auth mode "
                        f"{NO_AUTH!r}): anyone who can reach its ports can run code on it as its user")


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


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can enter: created 0700, or an existing one that is a
    real folder (not a link) owned by this user, tightened to 0700. Anything else is refused,
    because the session's token will be written inside it."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a folder of this user's (a link, or owned by uid {info.st_uid}); "
                           f"remove it, or set TMPDIR to a private folder")
    os.chmod(path, 0o700)
    return path


def write_token(temp_dir: Path) -> Path:
    """A fresh random token for this session, owner-only, in the session's private temp folder."""
    private_dir(temp_dir)
    path = private_dir(temp_dir / Path(TOKEN_FILE).parent) / Path(TOKEN_FILE).name
    path.unlink(missing_ok=True)  # a killed session's token: never reused
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _use_token(token_path: Path) -> None:
    """This process, and every Ray process it starts, authenticates with the token at ``token_path``."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # Ray caches its config and the token: a second session must see its own
    AuthenticationTokenLoader.instance().reset_cache()


def _single_machine() -> None:
    """Ray as a cluster of this machine alone, on loopback: its own switch, read by this process
    (already imported) and by every Ray process it starts (from the environment)."""
    import ray._private.ray_constants as ray_constants

    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def start_ray(study_dir: Path, address: str | None, verbose: bool) -> Path:
    """Join the cluster at ``address``, or start a local Ray in a study-specific temp dir
    (reaping Ray processes a killed driver left there), authenticated by a session token and on
    loopback; returns that temp dir."""
    import ray

    temp_dir = ray_temp_dir(study_dir)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if not verbose:  # Ray's banner, trial table and hints; the status blocks say what matters
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == NO_AUTH:
            print(OPEN_CLUSTER_WARNING, file=sys.stderr)
        ray.init(address=address, **quiet)
        return temp_dir
    reap(temp_dir)
    _use_token(write_token(temp_dir))
    _single_machine()
    ray.init(include_dashboard=False, _temp_dir=str(temp_dir), **quiet,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
    return temp_dir


def stop_ray(address: str | None, temp_dir: Path) -> None:
    import ray

    ray.shutdown()
    if not address:
        reap(temp_dir)
        remove_session_files(temp_dir)


def remove_session_files(temp_dir: Path) -> None:
    """A local Ray's temp folder: its session logs hold the environments of its actors (e.g.
    tracker keys) and its token, so nothing of it outlives the grid. ``rmtree`` removes a link
    itself, never what it points to."""
    (temp_dir / TOKEN_FILE).unlink(missing_ok=True)
    shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_session(study_dir: Path, address: str | None, verbose: bool = False) -> Iterator[None]:
    """Ray started (or joined) for the body, stopped (and its local processes reaped) after;
    the authentication and cluster settings of this process are restored after it."""
    import ray._private.ray_constants as ray_constants

    saved, multi = {k: os.environ.get(k) for k in SESSION_ENV}, ray_constants.ENABLE_RAY_CLUSTER
    try:
        temp_dir = start_ray(study_dir, address, verbose)
        try:
            yield
        finally:
            stop_ray(address, temp_dir)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
