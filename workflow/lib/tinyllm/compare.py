"""Experiments side by side: each run's metrics.csv and checkpoint -> compare.png and compare.md.

compare.png plots validation bits per byte against tokens seen and against wall-clock training time, one
line per run. compare.md is a table of the runs: what each overrides, its size, how far it trained, its
final and best validation loss, and how long it took. Bits per byte compare across vocabularies and model
sizes; the wall-clock panel and the "by main's time" column compare variants at equal cost.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

from tinyllm.errors import DataError
from tinyllm.files import atomic_output
from tinyllm.report import format_duration, parse_number, pyplot, read_metrics, save_figure

MAIN_RUN = "main"  # the name the main run (results/train) goes by


@dataclass
class RunResult:
    """One run's figures, read from its metrics.csv and checkpoint. Values metrics.csv lacks are None."""

    name: str
    overrides: dict  # the experiment's overrides ({} for the main run)
    params: int
    tokens: int
    final_val_loss: float | None
    final_val_bpb: float | None
    best_val_loss: float | None
    best_val_bpb: float | None
    train_seconds: float | None  # elapsed_s of the last row: the optimizer steps' time, over resumes
    tokens_per_s: float | None  # median of the logged intervals' throughput
    curve: list[tuple[int, float | None, float]] = field(default_factory=list)  # (tokens, elapsed_s, val_bpb)

    def val_bpb_by(self, seconds: float | None) -> float | None:
        """The last val bits/byte evaluated within `seconds` of training (None when none was, or no times)."""
        if seconds is None:
            return None
        reached = [bpb for _, elapsed, bpb in self.curve if elapsed is not None and elapsed <= seconds]
        return reached[-1] if reached else None


def count_params(model_args: dict) -> int:
    """Parameters of the model these ModelArgs describe, the tied embedding/output matrix counted once.

    Built on the meta device, so nothing is allocated; a checkpoint's state_dict could hold the tied matrix
    twice (a GPU run's weights are copied to the CPU one name at a time).
    """
    import torch

    from tinyllm.model import ModelArgs, Transformer

    with torch.device("meta"):
        return Transformer(ModelArgs.from_dict(model_args)).num_params()


def read_run(name: str, overrides: dict, metrics_csv: str | os.PathLike, checkpoint: str | os.PathLike):
    """A run's RunResult from its metrics.csv and its ckpt.pt (which gives the model's size)."""
    from tinyllm.checkpoint import read_checkpoint

    rows = read_metrics(metrics_csv)
    if not rows:
        raise DataError(f"{metrics_csv} has no rows: run {name} logged nothing")
    model_args = read_checkpoint(checkpoint, mmap=True)["model_args"]
    # The evaluation of the initial weights (iteration 0) is no result of training.
    evals = [r for r in rows if r.get("event") == "eval" and parse_number(r.get("val_loss")) is not None]
    trained = [r for r in evals if parse_number(r.get("tokens"))] or evals
    throughputs = [parse_number(r.get("tokens_per_s")) for r in rows if r.get("event") == "train"]
    throughputs = [x for x in throughputs if x is not None]
    last_eval = trained[-1] if trained else {}
    best = min(trained, key=lambda r: parse_number(r["val_loss"])) if trained else {}
    return RunResult(
        name=name,
        overrides=overrides,
        params=count_params(model_args),
        tokens=int(parse_number(rows[-1].get("tokens")) or 0),
        final_val_loss=parse_number(last_eval.get("val_loss")),
        final_val_bpb=parse_number(last_eval.get("val_bpb")),
        best_val_loss=parse_number(best.get("val_loss")),
        best_val_bpb=parse_number(best.get("val_bpb")),
        train_seconds=parse_number(rows[-1].get("elapsed_s")),
        tokens_per_s=statistics.median(throughputs) if throughputs else None,
        curve=[
            (int(parse_number(r["tokens"])), parse_number(r.get("elapsed_s")), parse_number(r["val_bpb"]))
            for r in trained
            if parse_number(r.get("val_bpb")) is not None
        ],
    )


# --- the table ----------------------------------------------------------------------------------------------


def describe_overrides(overrides: dict) -> str:
    """`train.optimizer: muon`, ... in the config's own notation; the main run's is "(main config)"."""
    pairs = [f"`{part}.{key}: {value}`" for part, keys in overrides.items() for key, value in keys.items()]
    return ", ".join(pairs).replace("|", "\\|") or "(main config)"


def _millions(n: float) -> str:
    return f"{n / 1e6:.2f}M"


def _figure(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _change(x: float | None, reference: float | None) -> str:
    if x is None or not reference:
        return "n/a"
    return f"{(x / reference - 1) * 100:+.1f}%"


def comparison_markdown(runs: list[RunResult]) -> str:
    """compare.md: one row per run, the main run (the first) as the reference of the relative columns."""
    main = runs[0]
    header = (
        "| run | overrides | params | tokens | final val loss | final val bpb | vs main | best val loss "
        f"| best val bpb | val bpb by main's time ({format_duration(main.train_seconds)}) | train time "
        "| tokens/s |"
    )
    lines = [
        "# Experiments",
        "",
        "Validation loss in nats/token and bits/byte (bpb: lower is better, comparable across vocabularies)",
        'at the last evaluation ("final") and the lowest ("best"). "vs main" is the final bpb relative to',
        "the main run's; \"by main's time\" the last bpb each run evaluated within the main run's training",
        "time. Train time is the wall-clock time of the optimizer steps (evaluations, saves and start-up",
        "left out), over resumes, as train.max_minutes counts it; tokens/s the median logged rate.",
        "",
        header,
        "|" + "---|" * 2 + "---:|" * 10,
    ]
    for run in runs:
        cells = [
            run.name,
            describe_overrides(run.overrides),
            _millions(run.params),
            _millions(run.tokens),
            _figure(run.final_val_loss),
            _figure(run.final_val_bpb),
            "" if run is main else _change(run.final_val_bpb, main.final_val_bpb),
            _figure(run.best_val_loss),
            _figure(run.best_val_bpb),
            _figure(run.val_bpb_by(main.train_seconds)),
            format_duration(run.train_seconds),
            "n/a" if run.tokens_per_s is None else f"{run.tokens_per_s:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- the plot -----------------------------------------------------------------------------------------------


def comparison_figure(runs: list[RunResult]):
    """Two panels of val bits/byte: against tokens seen, and against minutes of training; a line per run."""
    fig, (by_tokens, by_time) = pyplot().subplots(1, 2, figsize=(12, 4.5), dpi=120, sharey=True)
    for run in runs:
        style = {"color": "black", "lw": 2} if run.name == MAIN_RUN else {"lw": 1.5}
        tokens = [t for t, _, _ in run.curve]
        by_tokens.plot(tokens, [bpb for _, _, bpb in run.curve], "o-", ms=3, label=run.name, **style)
        timed = [(elapsed / 60, bpb) for _, elapsed, bpb in run.curve if elapsed is not None]
        by_time.plot([m for m, _ in timed], [bpb for _, bpb in timed], "o-", ms=3, label=run.name, **style)
    by_tokens.set_xlabel("tokens seen")
    by_tokens.set_ylabel("validation bits per byte")
    by_time.set_xlabel("training time (minutes, wall clock)")
    for ax in (by_tokens, by_time):
        ax.grid(alpha=0.3)
    by_time.legend()
    fig.suptitle("Experiments: validation bits per byte (lower is better)")
    fig.tight_layout()
    return fig


def plot_comparison(runs: list[RunResult], path: str | os.PathLike) -> None:
    save_figure(comparison_figure(runs), path)


def write_comparison(runs: list[dict], plot_path: str | os.PathLike, table_path: str | os.PathLike) -> list:
    """Read the runs (dicts: name, overrides, metrics, checkpoint; the main run first), write both files."""
    results = [read_run(r["name"], r["overrides"], r["metrics"], r["checkpoint"]) for r in runs]
    plot_comparison(results, plot_path)
    with atomic_output(table_path, "w", encoding="utf-8") as f:
        f.write(comparison_markdown(results))
    return results
