"""Pieces of the Snakemake report: the final losses from metrics.csv, and the config a run used.

The training loop writes one metrics row per log interval and one per evaluation; evaluation rows carry
val_loss and the bits-per-byte columns (train_bpb, val_bpb). The summary takes the last evaluated row, so it
shows the losses of the final weights. Columns are read by name from the header, so a column added to
metrics.csv does not break it.
"""

from __future__ import annotations

import csv
import html
import math
import os

import yaml

from tinyllm.errors import DataError
from tinyllm.files import atomic_output

SPLITS = ("train", "val")


def read_metrics(path: str | os.PathLike) -> list[dict[str, str]]:
    """metrics.csv as a list of rows (column -> raw string); empty cells stay ""."""
    with open(path, newline="") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def parse_number(value: str | None) -> float | None:
    """A metrics.csv cell as a finite float; None for an empty cell, text, NaN or infinity."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def final_losses(rows: list[dict[str, str]]) -> dict:
    """Losses of the last evaluated row (the last with a val_loss), or of the last row where none has one.

    Returns iter, tokens, and per split the loss in nats/token and bits/byte (None where metrics.csv has
    no such value).
    """
    if not rows:
        raise DataError("metrics.csv has no rows")
    evaluated = [row for row in rows if parse_number(row.get("val_loss")) is not None]
    row = evaluated[-1] if evaluated else rows[-1]
    summary = {"iter": row.get("iter", ""), "tokens": row.get("tokens", ""), "evaluated": bool(evaluated)}
    for split in SPLITS:
        summary[split] = {
            "nats_per_token": parse_number(row.get(f"{split}_loss")),
            "bits_per_byte": parse_number(row.get(f"{split}_bpb")),
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
    write_text(out_html, summary_html(summary))
    return summary


def write_config(config: dict, out_yaml: str | os.PathLike) -> None:
    """The validated config (defaults filled in) as YAML, in the order of config.yaml's sections."""
    text = "# The configuration this run used, with every default filled in.\n"
    text += yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
    write_text(out_yaml, text)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path, "w", encoding="utf-8") as f:
        f.write(text)
