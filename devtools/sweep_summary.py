"""The files a sweep leaves in its folder: per_image.jsonl/.csv, summary.csv, summary.md and
summary.png (saved latency against each quality metric), with what was left out and why."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from shapefirst import sweep_table as table_

LOG = logging.getLogger("shapefirst.sweep")
FILES = ("summary.md", "summary.csv", "summary.png", "per_image.csv", "per_image.jsonl", "results.jsonl")


def write_summary(rows: list[dict], windows, out_dir: Path, active=(), per_window: dict | None = None,
                  left_out=(), notes=(), heading: str = "") -> tuple[list[dict], list[str]]:
    """Write every summary file; returns the table and every note (timing notes first).
    ``active``: [(metric, scorer)] that ran; ``left_out``: [(metric, reason)] that did not."""
    out_dir = Path(out_dir)
    with open(out_dir / "per_image.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out_dir / "per_image.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    columns = [m.column for m, _ in active]
    per_image = [m.column for m, _ in active if not m.per_window]
    table, timing = table_.aggregate(rows, windows, per_image, per_window)
    notes = list(timing) + list(notes)
    (out_dir / "summary.csv").write_text(table_.table_csv(table, columns), encoding="utf-8")
    md = ["# Truncated guidance sweep", ""] + ([heading, ""] if heading else []) + [table_.table_markdown(table, columns)]
    try:
        table_.render_tradeoff(table, columns).save(out_dir / "summary.png")
        md += ["![saved latency against each quality metric, one point per window](summary.png)", ""]
    except ValueError as exc:
        (out_dir / "summary.png").unlink(missing_ok=True)
        LOG.warning("sweep: no chart (%s)", exc)
    if left_out:
        md += ["## Metrics left out", ""] + [f"- {m.column.header}: {why}" for m, why in left_out] + [""]
    if notes:
        md += ["## Timings", ""] + [f"- {n}" for n in notes] + [""]
    md += ["Data: [per_image.csv](per_image.csv), [per_image.jsonl](per_image.jsonl), [summary.csv](summary.csv), "
           "[results.jsonl](results.jsonl), [images/](images/)", ""]
    (out_dir / "summary.md").write_text("\n".join(md), encoding="utf-8")
    return table, notes
