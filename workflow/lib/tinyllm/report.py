"""Pieces of the Snakemake report: the final losses from metrics.csv, and the config a run used.

The training loop writes one metrics row per log interval; rows that also evaluated carry val_loss and the
bits-per-byte columns. The summary takes the last evaluated row, so it shows the losses of the final weights.
Column names are read from the header, so a column added to or dropped from metrics.csv does not break it.
"""

from __future__ import annotations

import csv
import html
import math
import os
from pathlib import Path

import yaml

SPLITS = ("train", "val")


def read_metrics(path: str | os.PathLike) -> list[dict[str, str]]:
    """metrics.csv as a list of rows (column -> raw string); empty cells stay ""."""
    with open(path, newline="") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def _number(value: str | None) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def bpb_column(columns: list[str], split: str) -> str | None:
    """The bits-per-byte column of a split: `val_bpb`, `val_bits_per_byte` and the like."""
    for name in columns:
        low = name.lower()
        if low.startswith(split) and ("bpb" in low or "bits_per_byte" in low or "bits/byte" in low):
            return name
    return None


def final_losses(rows: list[dict[str, str]]) -> dict:
    """Losses of the last evaluated row (the last with a val_loss), or of the last row where none has one.

    Returns iter, tokens, and per split the loss in nats/token and bits/byte (None where metrics.csv has
    no such value).
    """
    if not rows:
        raise ValueError("metrics.csv has no rows")
    evaluated = [row for row in rows if _number(row.get("val_loss")) is not None]
    row = evaluated[-1] if evaluated else rows[-1]
    columns = list(row)
    summary = {"iter": row.get("iter", ""), "tokens": row.get("tokens", ""), "evaluated": bool(evaluated)}
    for split in SPLITS:
        bpb = bpb_column(columns, split)
        summary[split] = {
            "nats_per_token": _number(row.get(f"{split}_loss")),
            "bits_per_byte": _number(row.get(bpb)) if bpb else None,
        }
    return summary


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def summary_html(summary: dict) -> str:
    """A small standalone HTML page with the final losses (the report shows .html results inline)."""
    rows = "\n".join(
        f"<tr><th>{split}</th><td>{_fmt(summary[split]['nats_per_token'])}</td>"
        f"<td>{_fmt(summary[split]['bits_per_byte'])}</td></tr>"
        for split in SPLITS
    )
    where = "last evaluation" if summary["evaluated"] else "last logged step (no evaluation ran)"
    step = html.escape(f"iteration {summary['iter']}, {summary['tokens']} tokens seen")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Final loss</title>
<style>body{{font-family:sans-serif}} td,th{{padding:4px 12px;text-align:right}}</style></head>
<body>
<h3>Final loss ({where})</h3>
<p>{step}</p>
<table id="final-loss">
<tr><th>split</th><th>loss (nats/token)</th><th>bits/byte</th></tr>
{rows}
</table>
</body></html>
"""


def write_summary(metrics_csv: str | os.PathLike, out_html: str | os.PathLike) -> dict:
    """Read metrics.csv, write the summary page atomically, return the summary."""
    summary = final_losses(read_metrics(metrics_csv))
    _write_text_atomic(Path(out_html), summary_html(summary))
    return summary


def write_config(config: dict, out_yaml: str | os.PathLike) -> None:
    """The validated config (defaults filled in) as YAML, in the order of config.yaml's sections."""
    text = "# The configuration this run used, with every default filled in.\n"
    text += yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
    _write_text_atomic(Path(out_yaml), text)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
