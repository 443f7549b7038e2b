"""Experiments side by side: the DAG they add (one train job per experiment, nothing without them), the
comparison (tinyllm.compare) from synthetic metrics, and end to end: trained, compared, in the report, and
one override's edit rerunning that experiment alone.

What Snakemake would run comes from `snakemake --dry-run --summary`, its tab-separated table of the DAG's
output files with rule and plan, not from its console messages.
"""

from __future__ import annotations

import csv
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY_CONFIG,
    TINY_MODEL,
    dry_run_summary,
    make_random_model,
    run_snakemake,
    write_yaml,
)
from tinyllm.checkpoint import save_checkpoint, weights_checkpoint
from tinyllm.compare import comparison_figure, read_run, write_comparison

EXPERIMENT_RULES = {"train_experiment", "sample_experiment", "compare_experiments"}
TRAIN_OUTPUTS = ("ckpt.pt", "best.pt", "metrics.csv", "loss.png")
# wsd also gets a time budget of its own (0.1 s), far short of the main run's 40 steps.
EXPERIMENTS = {
    "muon": {"train": {"optimizer": "muon"}},
    "wsd": {"train": {"lr_schedule": "wsd", "max_minutes": 0.002}},
}


def pending(rows: list[dict]) -> Counter:
    """Output files per rule that a run would (re)make."""
    return Counter(row["rule"] for row in rows if row["plan"] == "update pending")


# --- the DAG ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # two Snakemake dry runs: about 3 s
def test_no_experiments_is_the_main_dag_and_each_experiment_is_one_more_train_job(tmp_path):
    plain = dry_run_summary(tmp_path, TINY_CONFIG)
    with_experiments = dry_run_summary(
        tmp_path, TINY_CONFIG, write_yaml(tmp_path / "experiments.yaml", {"experiments": EXPERIMENTS})
    )
    assert not {row["rule"] for row in plain} & EXPERIMENT_RULES
    main_part = [row for row in with_experiments if row["rule"] not in EXPERIMENT_RULES]
    assert {(r["output_file"], r["rule"]) for r in main_part} == {
        (r["output_file"], r["rule"]) for r in plain
    }

    by_rule = {}
    for row in with_experiments:
        by_rule.setdefault(row["rule"], set()).add(row["output_file"])
    assert by_rule["train_experiment"] == {
        f"results/experiments/{name}/{output}" for name in EXPERIMENTS for output in TRAIN_OUTPUTS
    }  # four outputs per job: one train job per experiment, each in its own folder
    assert by_rule["sample_experiment"] == {f"results/experiments/{name}/samples.txt" for name in EXPERIMENTS}
    assert by_rule["compare_experiments"] == {
        "results/experiments/compare.png",
        "results/experiments/compare.md",
    }
    assert len(by_rule["train"]) == 4  # the main run trains once, as before


# --- the comparison -----------------------------------------------------------------------------------------

COLUMNS = ("event", "iter", "tokens", "train_loss", "val_loss", "train_bpb", "val_bpb", "lr", "tokens_per_s",
           "mfu", "elapsed_s")  # fmt: skip


def write_run(folder: Path, evals: list[tuple], tokens_per_s: list[float], **model_overrides) -> dict:
    """A run's metrics.csv (the initial evaluation, then evals = (iter, val_loss, val_bpb, elapsed_s) with a
    train row before each) and a ckpt.pt of a model of TINY_MODEL with model_overrides."""
    folder.mkdir(parents=True)
    rows = [{"event": "eval", "iter": 0, "tokens": 0, "val_loss": 6.3, "val_bpb": 2.9, "elapsed_s": 0.0}]
    for (it, val_loss, val_bpb, elapsed), speed in zip(evals, tokens_per_s, strict=True):
        tokens = it * 2048
        rows.append({"event": "train", "iter": it, "tokens": tokens, "train_loss": val_loss - 0.1,
                     "tokens_per_s": speed, "elapsed_s": elapsed})  # fmt: skip
        rows.append({"event": "eval", "iter": it, "tokens": tokens, "train_loss": val_loss - 0.1,
                     "val_loss": val_loss, "val_bpb": val_bpb, "elapsed_s": elapsed + 5})  # fmt: skip
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    model = make_random_model(**model_overrides)
    save_checkpoint(weights_checkpoint(model, None, iter_num=evals[-1][0]), folder / "ckpt.pt")
    return {"metrics": folder / "metrics.csv", "checkpoint": folder / "ckpt.pt", "params": model.num_params()}


@pytest.fixture
def three_runs(tmp_path) -> list[dict]:
    main = write_run(tmp_path / "train", [(20, 4.0, 1.60, 55), (40, 3.5, 1.40, 115)], [1000, 1200])
    muon = write_run(tmp_path / "muon", [(20, 3.8, 1.50, 85), (40, 3.2, 1.30, 175)], [700, 720])
    wide = write_run(tmp_path / "wide", [(20, 3.6, 1.45, 95), (40, 3.7, 1.50, 195)], [600, 650], dim=128)
    return [
        {"name": "main", "overrides": {}, **main},
        {"name": "muon", "overrides": {"train": {"optimizer": "muon"}}, **muon},
        {"name": "wide", "overrides": {"model": {"dim": 128}, "train": {"learning_rate": 0.003}}, **wide},
    ]


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    header, *body = [[cell.strip() for cell in row] for row in rows]
    return {"header": header, **{row[0]: row for row in body}}


def test_compare_md_has_a_row_per_run_with_its_figures(three_runs, tmp_path):
    write_comparison(three_runs, tmp_path / "compare.png", tmp_path / "compare.md")
    table = table_rows((tmp_path / "compare.md").read_text())
    assert table["header"] == [
        "run", "overrides", "params", "tokens", "final val loss", "final val bpb", "vs main", "best val loss",
        "best val bpb", "val bpb by main's time (2 min 00 s)", "train time", "tokens/s",
    ]  # fmt: skip
    main_params, wide_params = three_runs[0]["params"], three_runs[2]["params"]
    assert wide_params > main_params  # the wide model's size comes from its own checkpoint
    assert table["main"] == ["main", "(main config)", f"{main_params / 1e6:.2f}M", "0.08M", "3.5000",
                             "1.4000", "", "3.5000", "1.4000", "1.4000", "2 min 00 s", "1,100"]  # fmt: skip
    # Muon: better at the end (-7.1%), but by the main run's 120 s it had evaluated only iteration 20.
    assert table["muon"][1] == "`train.optimizer: muon`"
    muon_figures = ["3.2000", "1.3000", "-7.1%", "3.2000", "1.3000", "1.5000", "3 min 00 s", "710"]
    assert table["muon"][4:] == muon_figures
    # Wide: its best evaluation (iteration 20, within the main run's time) is not its final one.
    assert table["wide"][1] == "`model.dim: 128`, `train.learning_rate: 0.003`"
    assert table["wide"][2] == f"{wide_params / 1e6:.2f}M"
    wide_figures = ["3.7000", "1.5000", "+7.1%", "3.6000", "1.4500", "1.4500", "3 min 20 s", "625"]
    assert table["wide"][4:] == wide_figures
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.glob(".*")) == []  # no temporary file left behind


def test_compare_png_plots_every_run_against_tokens_and_wall_clock(three_runs):
    import matplotlib.pyplot as plt

    runs = [read_run(r["name"], r["overrides"], r["metrics"], r["checkpoint"]) for r in three_runs]
    fig = comparison_figure(runs)
    try:
        by_tokens, by_time = fig.axes[:2]
        assert [line.get_label() for line in by_tokens.lines] == ["main", "muon", "wide"]
        assert [line.get_label() for line in by_time.lines] == ["main", "muon", "wide"]
        main_tokens, main_time = by_tokens.lines[0], by_time.lines[0]
        # The evaluation of the initial weights is left out; time is in minutes.
        assert list(main_tokens.get_xdata()) == [40960, 81920]
        assert list(main_tokens.get_ydata()) == [1.6, 1.4] == list(main_time.get_ydata())
        assert list(main_time.get_xdata()) == [1.0, 2.0]
        assert list(by_time.lines[2].get_xdata()) == [pytest.approx(100 / 60), pytest.approx(200 / 60)]
    finally:
        plt.close(fig)


def test_params_count_the_tied_embedding_once(three_runs):
    run = read_run("main", {}, three_runs[0]["metrics"], three_runs[0]["checkpoint"])
    state = torch.load(three_runs[0]["checkpoint"], weights_only=True)["model"]
    embedding = TINY_MODEL["vocab_size"] * TINY_MODEL["dim"]
    assert run.params == sum(t.numel() for t in state.values()) - embedding  # output.weight is the embedding


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_experiments_train_side_by_side_compare_and_rerun_alone(tiny_run, tmp_path):
    """The tiny config with two experiments, on a copy of the session's tiny run (its data, tokenizer and main
    run done): trained (two at once), compared, reported; then an edit of one experiment's override reruns
    that experiment (and the comparison) and nothing else."""
    config = tiny_run.config
    experiments = write_yaml(tmp_path / "experiments.yaml", {"experiments": EXPERIMENTS})
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run.workdir, workdir, symlinks=True)
    targets = (
        "results/experiments/compare.md",
        *(f"results/experiments/{n}/samples.txt" for n in EXPERIMENTS),
    )
    # Targets first: --resources takes every word after it.
    args = (*targets, "--cores", "2", "--resources", "gpu=2")
    run_snakemake(workdir, *args, configfiles=(config, experiments), timeout=900)

    for name, overrides in EXPERIMENTS.items():
        folder = workdir / "results/experiments" / name
        for output in (*TRAIN_OUTPUTS, "samples.txt", "state/state.pt"):
            assert (folder / output).is_file(), f"{name}: no {output}"
        assert (workdir / f"logs/experiments/{name}/train.log").read_text().strip()
        trained_with = torch.load(folder / "ckpt.pt", weights_only=True)["config"]["train"]
        assert overrides["train"].items() <= trained_with.items(), f"{name} trained with {trained_with}"
        assert trained_with["max_iters"] == 40  # the rest from the main config
    budgeted = torch.load(workdir / "results/experiments/wsd/ckpt.pt", weights_only=True)["iter_num"]
    assert budgeted < 40
    assert "minute budget)" in (workdir / "logs/experiments/wsd/train.log").read_text()
    main_config = torch.load(workdir / "results/train/ckpt.pt", weights_only=True)["config"]["train"]
    assert (main_config["optimizer"], main_config["lr_schedule"]) == ("adamw", "cosine")
    table = table_rows((workdir / "results/experiments/compare.md").read_text())
    assert table["muon"][1] == "`train.optimizer: muon`"
    assert table["wsd"][1] == "`train.lr_schedule: wsd`, `train.max_minutes: 0.002`"
    assert table["main"][3] == table["muon"][3] == "0.02M"  # 40 steps of 8 x 64 tokens

    archive = tmp_path / "report.zip"
    run_snakemake(workdir, "--report", str(archive), *targets, configfiles=(config, experiments))
    with zipfile.ZipFile(archive) as zf:
        files = {Path(n).name: zf.read(n) for n in zf.namelist() if "/data/raw/" in n}
    for name in ("compare.png", "compare.md"):
        assert files[name] == (workdir / "results/experiments" / name).read_bytes(), (
            f"{name} not in the report"
        )

    assert pending(dry_run_summary(workdir, config, experiments, extra=targets)) == Counter()
    wsd_edited = {"train": {**EXPERIMENTS["wsd"]["train"], "decay_fraction": 0.5}}
    edited = {"experiments": {**EXPERIMENTS, "wsd": wsd_edited}}
    rows = dry_run_summary(workdir, config, write_yaml(tmp_path / "edited.yaml", edited), extra=targets)
    assert pending(rows) == Counter(train_experiment=4, sample_experiment=1, compare_experiments=2), rows
    redone = {row["output_file"] for row in rows if row["plan"] == "update pending"}
    assert all("/wsd/" in path or "compare" in path for path in redone), redone
