"""A run's metrics and the Snakemake report's pieces: metrics.csv, loss.png, the final losses, the config.

Training writes metrics.csv: one row per log interval ("train") and one per evaluation ("eval"); evaluation
rows carry val_loss and the bits-per-byte columns (train_bpb, val_bpb); elapsed_s is the training time so far
(evaluations, saves and start-up left out). The summary takes the last evaluated row, so it shows the losses
of the final weights. Columns are read by name from the header, so a column added to metrics.csv does not
break a reader.
"""

from __future__ import annotations

import csv
import html
import math
import os
from pathlib import Path

from tinyllm.errors import DataError
from tinyllm.files import atomic_output

SPLITS = ("train", "val")
METRIC_COLUMNS = (
    "event", "iter", "tokens", "train_loss", "val_loss", "train_bpb", "val_bpb", "lr", "tokens_per_s", "mfu",
    "elapsed_s",
)  # fmt: skip


def write_metrics(rows: list[dict], path: str | os.PathLike) -> None:
    """metrics.csv: METRIC_COLUMNS, one line per row; a value a row lacks (or None) is an empty cell."""
    with atomic_output(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in METRIC_COLUMNS})


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


def plot_losses(rows: list[dict], path: str | os.PathLike, tokens_per_iter: int) -> None:
    """loss.png: train loss at every logged step and the evaluated train/val losses, against tokens seen."""
    plt = pyplot()
    steps = [r for r in rows if r["event"] == "train"]
    evals = [r for r in rows if r["event"] == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if steps:
        ax.plot([r["tokens"] for r in steps], [r["train_loss"] for r in steps],
                color="tab:blue", alpha=0.35, lw=0.8, label="train (logged steps)")  # fmt: skip
    if evals:
        tokens = [r["tokens"] for r in evals]
        estimates = [r["train_loss"] for r in evals]
        ax.plot(tokens, estimates, "o-", color="tab:blue", ms=3, label="train (estimate)")
        ax.plot(tokens, [r["val_loss"] for r in evals], "o-", color="tab:orange", ms=3, label="val")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    top = ax.secondary_xaxis("top", functions=(lambda t: t / tokens_per_iter, lambda i: i * tokens_per_iter))
    top.set_xlabel("optimizer steps")
    fig.tight_layout()
    save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed, none opened)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure atomically, in the format of path's suffix, and close it."""
    try:
        with atomic_output(path) as f:
            fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        pyplot().close(fig)


def format_duration(seconds: float | None) -> str:
    """ "42 s", "7 min 05 s", "2 h 03 min"; "n/a" for None."""
    if seconds is None:
        return "n/a"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


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
    import yaml

    text = "# The configuration this run used, with every default filled in.\n"
    text += yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
    write_text(out_yaml, text)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path, "w", encoding="utf-8") as f:
        f.write(text)
