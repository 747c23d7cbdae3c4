"""The package as a user gets it: the wheel holds every subpackage and every data file the code
reads, and a non-editable install runs a cell from another directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("pluggable", "methods", "bench", "reports")


def build_wheel(out: Path) -> Path:
    """The wheel of a copy of the sources (the checkout gets no build/ folder)."""
    src = out / "src"
    for name in (*PACKAGES, "pyproject.toml", "README.md"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    return wheel


def test_the_wheel_holds_every_subpackage_and_data_file(tmp_path):
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    wanted = {p.relative_to(ROOT).as_posix() for top in PACKAGES for p in (ROOT / top).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".toml")}
    assert any(w.endswith(".toml") for w in wanted)  # the data files are part of what is checked
    assert wanted - names == set()


@pytest.mark.slow
def test_a_non_editable_install_runs_the_smoke_cell_from_another_directory(tmp_path):
    """``pip install --no-deps .`` into a fresh venv (its dependencies seen through this
    environment's site-packages), then ``isobench run configs/smoke.toml`` from elsewhere."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(build_wheel(tmp_path / "wheel"))], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    where = subprocess.run([str(python), "-c", "import bench.analysis, bench.tools.perf as p; print(p.__file__); "
                            "print(p.VARIANTS_FILE.is_file())"], cwd=elsewhere, env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    assert where[0].startswith(site) and where[1] == "True"
    run = subprocess.run([str(venv / "bin" / "isobench"), "run", str(ROOT / "configs" / "smoke.toml"),
                          "--set", "train.steps_per_stage=2", "--set", "results_dir='r'"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ": success" in run.stdout and (elsewhere / "r" / "smoke").is_dir()
