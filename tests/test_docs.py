"""The docs name only what exists: every repo path and every ``python -m`` module that README.md
and docs/ mention is in the checkout (a renamed or moved file fails this test, not a reader)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path inside the repo: starts at one of its top-level folders (not results/, a run's output).
PATH = re.compile(r"(?<![\w./<>~$-])((?:bench|methods|reports|core|configs|docs|tests|\.ci)/[\w./*-]*[\w*/])")
MODULE = re.compile(r"python3? -m ([\w.]+)")
# Modules of other packages a doc may show (`python -m pytest`, `python -m venv`...).
OTHERS = {"pytest", "venv", "pip", "http.server"}
# Files a doc asks the reader to create.
TO_CREATE = {"methods/my_method.py"}


def mentions(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(doc, match) pairs; a path that goes on with a ``<placeholder>`` names a pattern, not a file."""
    texts = {doc.name: doc.read_text() for doc in DOCS}
    return sorted({(name, m.group(1)) for name, text in texts.items() for m in pattern.finditer(text)
                   if text[m.end():m.end() + 1] != "<"})


@pytest.mark.parametrize("doc, path", mentions(PATH))
def test_every_path_in_the_docs_exists(doc, path):
    path = path.rstrip(".")
    if path in TO_CREATE:
        return
    assert any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists(), f"{doc} names {path}, which does not exist"


@pytest.mark.parametrize("doc, module", mentions(MODULE))
def test_every_python_m_module_in_the_docs_exists(doc, module):
    if module in OTHERS:
        return
    assert importlib.util.find_spec(module) is not None, f"{doc} runs python -m {module}, which does not exist"


def test_the_check_sees_a_moved_file():
    assert PATH.findall("see `bench/perf.py` and bench/engine/train.py.") == ["bench/perf.py", "bench/engine/train.py"]
    assert not (ROOT / "bench/perf.py").exists()


def test_the_paper_grid_figures_in_the_docs_match_its_config():
    """The paper grid's cell count is stated in the README and docs/perf.md (the config's comments
    point there): both say what ``load_grid`` expands it to."""
    from bench.run.cells import load_grid

    count = len(load_grid(ROOT / "configs" / "paper.toml").cells)
    readme = re.findall(r"lists the (\d+) cells", (ROOT / "README.md").read_text())
    perf = re.findall(r"Every one of the (\d+) cells", (ROOT / "docs" / "perf.md").read_text())
    assert readme and perf and {int(n) for n in readme + perf} == {count}
    comments = [line for line in (ROOT / "configs" / "paper.toml").read_text().splitlines() if line.startswith("#")]
    assert not [line for line in comments if re.search(r"\d+ cells|GiB", line)]
