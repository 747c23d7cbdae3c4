"""``tables/report.html``: one self-contained page of a study (no network, no CDN): the study's
configuration, every table, the comparisons against the baseline (with their forest plots among
the plots), every plot inline (base64 PNG), failed, corrupt and missing cells with their
errors, and each run's provenance."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from reports.load import Run
from reports.tables import Table

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 4px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f2f2f2}.note{color:#555;font-size:12px;max-width:1000px}img{max-width:100%;border:1px solid #eee}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
.bad{color:#a00}code{background:#f6f6f6;padding:0 3px}"""


def config_summary(runs: Sequence[Run]) -> list[list[str]]:
    """What the study varies and holds fixed, from the runs' resolved configs."""
    configs = [r.config for r in runs if r.config]
    values: dict[str, set[str]] = {}
    for key in ("backbone.name", "regime", "method.name", "seed", "tasks.names", "train.precision",
                "train.steps_per_stage", "train.batch_size", "train.lr", "eval.limit"):
        for c in configs:
            value = c
            for part in key.split("."):
                value = value.get(part, {}) if isinstance(value, dict) else {}
            values.setdefault(key, set()).add(json.dumps(value))
    return [[k, ", ".join(sorted(v))] for k, v in values.items()]


def provenance_rows(runs: Sequence[Run]) -> list[list[str]]:
    rows = []
    for r in runs:
        if r.result is None:
            continue
        p, t = r.result.provenance, r.result.train
        commit = (p.git_commit or "?")[:10] + (" (dirty " + (p.git_diff_sha1 or "")[:8] + ")" if p.git_dirty else "")
        versions = ", ".join(f"{k} {v}" for k, v in sorted(p.versions.items()) if v and k in ("torch", "transformers",
                                                                                              "peft", "lm_eval", "ray"))
        hardware = p.hardware.get("gpu") or f"CPU x{p.hardware.get('cpus')}"
        rows.append([r.run_id, r.status, commit, versions, hardware,
                     f"{t.wall_s:.0f} s" if t.wall_s is not None else "—"])
    return rows


def problems(runs: Sequence[Run]) -> list[list[str]]:
    out = []
    for r in runs:
        if r.status in ("success", "stale"):
            continue
        error = r.result.run.error if r.result is not None else None
        detail = f"{error.type}: {error.message}" if error is not None else (r.problem or "no result yet")
        out.append([r.run_id, r.method, str(r.seed), r.status, detail[:600]])
    return out


def page(study: str, runs: Sequence[Run], tables: Sequence[Table], comparisons_html: str, plots: Sequence[Path],
         summary: str) -> str:
    """The whole page as one string (images embedded)."""
    def grid(rows: list[list[str]], headers: list[str]) -> str:
        return tabulate([[html.escape(c) for c in row] for row in rows], headers=headers, tablefmt="unsafehtml",
                        disable_numparse=True) if rows else "<p>none</p>"

    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>isobench: {html.escape(study)}</title>"
             f"<style>{STYLE}</style></head><body><h1>isobench study <code>{html.escape(study)}</code></h1>",
             f"<pre>{html.escape(summary)}</pre>",
             "<h2>Configuration</h2>", grid(config_summary(runs), ["key", "values in this study"])]
    for table in tables:
        parts += [f"<h2>{html.escape(table.name)}</h2>", table.html()]
    parts += ["<h2>Comparisons</h2>", comparisons_html, "<h2>Plots</h2><div class=plots>"]
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")
    parts += ["</div><h2 class=bad>Failed, corrupt and missing cells</h2>",
              grid(problems(runs), ["run", "method", "seed", "status", "error"]),
              "<h2>Provenance</h2>", grid(provenance_rows(runs), ["run", "status", "git commit", "versions",
                                                                  "hardware", "wall time"]),
              "</body></html>\n"]
    return "\n".join(parts)
