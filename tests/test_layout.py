"""The rules between folders, checked on the source itself (the README's "Layout" section says them).

bench/ is built in wings, each a floor of one import direction::

    cli -> launch -> run -> suite -> {backbones, analysis} -> engine -> config -> files

A module may import its own wing and any wing below it, never one above or beside it; ``tools``
(``python -m`` entry points) may import any wing below ``launch`` and is imported by nobody.
Function-level imports count like module-level ones, so a cycle cannot be dodged by moving an
import into a function, and the module graphs of bench/, methods/ and reports/ must each be free
of cycles. ``bench/__init__.py`` imports nothing of bench. Of ``reports``, only ``run`` and
``launch`` import anything, and only ``reports.schema`` (the result files they write), plus the
command line's ``report`` and ``export`` commands. Of ``methods``, bench imports the package, its
``base`` and ``registry`` and the shared ``methods.parts``, never one method's module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# Words that only an isolation method has a reason to say; bench/ and reports/ stay generic.
ISOLATION_WORDS = re.compile(r"isolat|\bmasks?\b|refresh|\bepi\b|static_isolation|random_isolation", re.IGNORECASE)
# bench's wings, bottom (0) to top. Wings on one level may not import each other.
LEVELS = {"files": 0, "config": 1, "engine": 2, "backbones": 3, "analysis": 3, "suite": 4, "run": 5,
          "launch": 6, "cli": 7}
TOOLS_MAY_IMPORT_BELOW = LEVELS["launch"]
# Third-party packages a wing must not import, and the wings that own them.
ONLY_IN = {"ray": {"launch"}, "tomllib": {"config", "tools"}}
NO_TORCH = {"config", "files"}


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth (functions included); a
    ``from package import name`` counts as an import of ``package.name`` when that is a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((node.lineno, full if module_path(full) else base))
    return out


def module_path(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "bench" and len(parts) > 1 else None


def graph(package: str = "bench") -> dict[str, list[tuple[int, str]]]:
    """module of ``package`` -> (line, module of ``package``) it imports."""
    out = {}
    for p in sources(package):
        out[module_name(p)] = [(line, m) for line, m in imports(p)
                               if (m == package or m.startswith(package + ".")) and module_path(m)]
    return out


def imports_of(package: str, folder: str = "bench") -> list[tuple[str, int, str]]:
    """(module of ``folder``, line, module of ``package``) for every import of ``package`` there."""
    return [(module_name(p), line, m) for p in sources(folder) for line, m in imports(p)
            if m == package or m.startswith(package + ".")]


# The command line's commands that read a study (``isobench report``, ``isobench export``).
CLI_READS = {"reports.report", "reports.export", "reports.load"}


def reports_violations(edges: list[tuple[str, int, str]]) -> list[str]:
    """bench's imports of reports that the rules do not allow (module docstring)."""
    bad = []
    for src, line, dst in edges:
        allowed = {"reports.schema"} if wing(src) in ("run", "launch") else CLI_READS if wing(src) == "cli" else set()
        if dst not in allowed:
            bad.append(f"{src}:{line} imports {dst}")
    return bad


METHODS_SHARED = ("methods", "methods.base", "methods.registry")


def methods_violations(edges: list[tuple[str, int, str]]) -> list[str]:
    """bench's imports of one method's module (not the package, its base, registry or parts)."""
    return [f"{src}:{line} imports {dst}" for src, line, dst in edges
            if dst not in METHODS_SHARED and not dst.startswith("methods.parts")]


def init_violations(edges: dict[str, list[tuple[int, str]]]) -> list[str]:
    """``bench/__init__.py``'s imports of bench modules."""
    return [f"bench:{line} imports {dst}" for line, dst in edges.get("bench", [])]


def direction_violations(edges: dict[str, list[tuple[int, str]]]) -> list[str]:
    bad = []
    for src, targets in edges.items():
        a = wing(src)
        for line, dst in targets:
            b = wing(dst)
            if a is None or b is None or a == b:
                continue
            where = f"{src}:{line} imports {dst}"
            if b == "tools":
                bad.append(f"{where}: nothing imports bench.tools")
            elif a == "tools":
                if LEVELS[b] >= TOOLS_MAY_IMPORT_BELOW:
                    bad.append(f"{where}: tools import only wings below launch")
            elif LEVELS[b] >= LEVELS[a]:
                bad.append(f"{where}: {a} (level {LEVELS[a]}) may not import {b} (level {LEVELS[b]})")
    return bad


def cycles(edges: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (one per back edge). A package's ``__init__``
    re-exporting its own modules is not a cycle of the package with them."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for _, nxt in edges.get(node, []):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])
    return found


def test_every_bench_module_is_in_a_wing():
    loose = [m for m in graph() if m != "bench" and wing(m) not in (*LEVELS, "tools")]
    assert loose == []


def test_bench_imports_run_one_direction():
    assert direction_violations(graph()) == []


def test_bench_has_no_import_cycle():
    assert cycles(graph()) == []


def test_the_check_catches_an_upward_import_a_lateral_one_and_a_dodged_cycle():
    edges = graph()
    edges["bench.config.schema"] = [*edges["bench.config.schema"], (99, "bench.run.checks")]
    assert any("config (level 1) may not import run" in v for v in direction_violations(edges))
    edges = graph()
    edges["bench.analysis.drift"] = [*edges["bench.analysis.drift"], (5, "bench.backbones.registry")]
    assert any("analysis (level 3) may not import backbones" in v for v in direction_violations(edges))
    edges = graph()  # a function-level import inside one wing, closing a loop
    edges["bench.engine.precision"] = [*edges["bench.engine.precision"], (60, "bench.engine.train")]
    assert cycles(edges)


def test_function_level_imports_are_seen(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from bench.run import checks\n")
    assert (2, "bench.run.checks") in imports(tmp_path / "m.py")


@pytest.mark.parametrize("package, owners", ONLY_IN.items())
def test_third_party_packages_stay_in_their_wing(package, owners):
    hits = [f"{module_name(p)}:{line}" for p in sources("bench") for line, m in imports(p)
            if m.split(".")[0] == package and wing(module_name(p)) not in owners]
    assert hits == []


def test_config_needs_no_torch():
    hits = [f"{module_name(p)}:{line} {m}" for p in sources("bench") if wing(module_name(p)) in NO_TORCH
            for line, m in imports(p) if m.split(".")[0] in ("torch", "transformers", "methods")]
    assert hits == []


def test_no_isolation_specific_name_in_bench_or_reports():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for folder in ("bench", "reports") for p in sources(folder)
            for i, line in enumerate(p.read_text().splitlines(), 1) if ISOLATION_WORDS.search(line)]
    assert hits == []


def test_import_rules_between_folders():
    for folder, forbidden in (("pluggable", {"bench", "methods", "reports", "torch"}),
                              ("methods", {"bench", "reports"}),
                              ("reports", {"bench", "methods", "torch", "ray"})):
        for p in sources(folder):
            assert not {m.split(".")[0] for _, m in imports(p)} & forbidden, p


@pytest.mark.parametrize("package", ["methods", "reports"])
def test_methods_and_reports_have_no_import_cycle(package):
    assert cycles(graph(package)) == []


def test_bench_init_imports_nothing_of_bench():
    assert init_violations(graph()) == []


def test_only_run_and_launch_import_reports_and_only_its_schema():
    assert reports_violations(imports_of("reports")) == []


def test_bench_never_imports_a_method_module():
    assert methods_violations(imports_of("methods")) == []


def test_the_checks_catch_a_methods_cycle_a_bench_init_import_and_engine_importing_reports():
    edges = graph("methods")  # masks imports selection; selection importing masks closes a loop
    edges["methods.parts.selection"] = [*edges["methods.parts.selection"], (3, "methods.parts.masks")]
    assert cycles(edges)
    edges = graph()
    edges["bench"] = [(4, "bench.config")]
    assert init_violations(edges) == ["bench:4 imports bench.config"]
    assert reports_violations([("bench.engine.train", 9, "reports.schema")]) == [
        "bench.engine.train:9 imports reports.schema"]
    assert reports_violations([("bench.run.results", 9, "reports.tables")])
    assert reports_violations([("bench.run.results", 9, "reports.schema"), ("bench.cli", 9, "reports.report")]) == []
    assert methods_violations([("bench.engine.train", 5, "methods.epi")]) == ["bench.engine.train:5 imports methods.epi"]
