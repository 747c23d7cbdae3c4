"""The rules between folders (DESIGN section 1 and 12), checked on the source itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
# Words that only an isolation method has a reason to say; bench/ and reports/ stay generic.
ISOLATION_WORDS = re.compile(r"isolat|\bmasks?\b|refresh|\bepi\b|static_isolation|random_isolation", re.IGNORECASE)


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_no_isolation_specific_name_in_bench_or_reports():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for folder in ("bench", "reports") for p in sources(folder)
            for i, line in enumerate(p.read_text().splitlines(), 1) if ISOLATION_WORDS.search(line)]
    assert hits == []


def test_import_rules_between_folders():
    imports = re.compile(r"^\s*(?:from|import)\s+(\w+)", re.MULTILINE)
    for folder, forbidden in (("methods", {"bench", "reports"}), ("reports", {"bench", "methods", "torch", "ray"})):
        for p in sources(folder):
            assert not set(imports.findall(p.read_text())) & forbidden, p
