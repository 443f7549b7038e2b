"""The training loop: checkpoints, metrics and plot, resume after a config change, logging, init_from and
the time budget. Its faults (a kill, a signal, divergence, bad shards, a full disk, init_from of another
shape) are in tests/faults/test_training.py."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_STEP_TOKENS, read_csv_rows, run_settings, stop_at_step, tiny_config
from tinyllm import train as training
from tinyllm.checkpoint import save_checkpoint
from tinyllm.errors import TrainingStopped
from tinyllm.model import load_model
from tinyllm.optim import get_lr
from tinyllm.report import METRIC_COLUMNS
from tinyllm.resume import rng_state, set_rng_state

# --- checkpoints -------------------------------------------------------------------------------------------


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
    assert [p.name for p in tmp_path.iterdir()] == ["rng.pt"]  # no temporary file left behind


def test_checkpoints_round_trip(finished_run):
    out, summary = finished_run
    for name in ("ckpt.pt", "best.pt"):
        checkpoint = torch.load(out / name, weights_only=True)
        assert {"model", "model_args", "iter_num", "config", "val_loss"} <= set(checkpoint)
        assert all(t.dtype == torch.float32 for t in checkpoint["model"].values())
        assert not any(k.startswith(("_orig_mod.", "module.")) for k in checkpoint["model"])
        assert checkpoint["config"] == tiny_config()
        model = load_model(out / name)
        assert model.args.to_dict() == checkpoint["model_args"]
        assert all(torch.equal(model.state_dict()[k], v) for k, v in checkpoint["model"].items())
    final = torch.load(out / "ckpt.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert final["iter_num"] == 24 and final["val_loss"] == pytest.approx(summary["val_loss"])
    assert best["val_loss"] == pytest.approx(summary["best_val_loss"])
    assert best["val_loss"] <= final["val_loss"]
    state = torch.load(out / "state" / "state.pt", weights_only=True)
    assert state["iter_num"] == 24 and state["config"] == tiny_config() and state["world_size"] == 1
    assert set(state) == {
        "model", "model_args", "config", "iter_num", "val_loss",  # the weights checkpoint's layout
        "format", "world_size", "inputs", "optimizer", "scaler", "rng", "best_val_loss", "elapsed_s",
        "metrics",
    }  # fmt: skip
    assert set(state["inputs"]) == {"data00.bin", "data01.bin", "tok.model"}


def test_metrics_and_plot_are_written(finished_run):
    out, summary = finished_run
    rows = read_csv_rows(out / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS)
    evals = [r for r in rows if r["event"] == "eval"]
    steps = [r for r in rows if r["event"] == "train"]
    assert [int(r["iter"]) for r in evals] == [0, 8, 16, 24]
    assert [int(r["iter"]) for r in steps] == list(range(2, 25, 2))
    assert all(int(r["tokens"]) == int(r["iter"]) * TINY_STEP_TOKENS for r in rows)
    ratio = summary["tokens_per_byte"] / math.log(2)
    for row in evals:
        assert float(row["val_bpb"]) == pytest.approx(float(row["val_loss"]) * ratio)
    assert float(evals[-1]["val_loss"]) < float(evals[0]["val_loss"]) - 0.3  # it learned something
    assert all(float(r["tokens_per_s"]) > 0 and 0 < float(r["mfu"]) < 1 for r in steps)
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed[0] == 0 and elapsed == sorted(elapsed) and elapsed[-1] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- resume ------------------------------------------------------------------------------------------------


def test_config_change_starts_fresh_and_keeps_the_old_state(tiny_data, finished_run, tmp_path, capsys):
    reference_out, _ = finished_run
    shutil.copytree(reference_out / "state", tmp_path / "state")
    config = tiny_config(learning_rate=1e-3, max_iters=8)
    summary = training.train(**run_settings(config, tiny_data, tmp_path))
    log = capsys.readouterr().err
    assert "train.learning_rate: 0.003 -> 0.001" in log and "starting fresh" in log
    assert summary["iter_num"] == 8
    assert [int(r["iter"]) for r in read_csv_rows(tmp_path / "metrics.csv") if r["event"] == "eval"] == [0, 8]
    old = torch.load(tmp_path / "state" / "stale" / "state.pt", weights_only=True)
    assert old["iter_num"] == 24 and old["config"] == tiny_config()
    assert torch.load(tmp_path / "state" / "state.pt", weights_only=True)["config"] == config


# --- the loop reads losses at log steps only, and projects the run's length --------------------------------


def test_losses_are_read_once_per_log_interval(tiny_data, tmp_path, monkeypatch):
    reads = []
    real_log = training.log_metrics

    def counting_log(run, progress, pending, *args):
        reads.append([it for it, _ in pending])
        return real_log(run, progress, pending, *args)

    monkeypatch.setattr(training, "log_metrics", counting_log)
    training.train(**run_settings(tiny_config(log_interval=4, max_iters=16), tiny_data, tmp_path))
    batches = [r for r in reads if r]
    assert batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]


def test_the_projected_wall_time_is_logged_and_a_long_cpu_run_is_pointed_at_the_preset(
    tiny_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(training, "CPU_WARNING_SECONDS", 0)
    training.train(**run_settings(tiny_config(max_iters=training.PROJECTION_STEPS + 4), tiny_data, tmp_path))
    log = capsys.readouterr().err
    (line,) = [line for line in log.splitlines() if "projected wall time" in line]
    assert f"for {training.PROJECTION_STEPS + 4} iterations" in line and "tokens/s" in line
    assert "configs/cpu.yaml" in log


# --- train.init_from: start from existing weights ----------------------------------------------------------


def test_init_from_starts_at_the_checkpoints_weights(tiny_data, finished_run, tmp_path, capsys):
    reference_out, reference = finished_run
    config = tiny_config(init_from=str(reference_out / "ckpt.pt"), max_iters=8, learning_rate=1e-4)
    training.train(**run_settings(config, tiny_data, tmp_path))
    first_eval = next(r for r in read_csv_rows(tmp_path / "metrics.csv") if r["event"] == "eval")
    # The same fixed evaluation batches as the finished run's last evaluation, on its final weights.
    assert float(first_eval["val_loss"]) == pytest.approx(reference["val_loss"], abs=1e-6)
    assert f"starting from the weights of {reference_out / 'ckpt.pt'}" in capsys.readouterr().err


# --- train.max_minutes: a time budget -----------------------------------------------------------------------


class FakeClock:
    """training.now for a test: every reading is `tick` seconds after the one before, so every timed step
    takes exactly `tick` seconds of training time, whatever the machine."""

    def __init__(self, tick: float = 1.0):
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_a_time_budget_ends_training_and_evaluates_once_at_the_end(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "now", FakeClock())
    config = tiny_config(max_iters=1000, max_minutes=0.5)  # 30 s: one second per step after the first
    summary = training.train(**run_settings(config, tiny_data, tmp_path))
    assert summary["iter_num"] == 31 and summary["elapsed_s"] == 30.0
    rows = read_csv_rows(tmp_path / "metrics.csv")
    assert [int(r["iter"]) for r in rows if r["event"] == "eval"] == [0, 8, 16, 24, 31]
    assert float(rows[-1]["elapsed_s"]) == 30.0 and rows[-1]["event"] == "eval"
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 31
    log = capsys.readouterr().err
    assert "train: done at iteration 31 after 30 s of training (the 0.5-minute budget)" in log


def test_a_last_step_past_the_budget_ends_training_all_the_same(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "now", FakeClock(tick=7.0))  # the fifth timed step of 7 s ends at 35 s
    config = tiny_config(max_iters=1000, max_minutes=0.5)
    summary = training.train(**run_settings(config, tiny_data, tmp_path))
    assert summary["iter_num"] == 6 and summary["elapsed_s"] == 35.0
    log = capsys.readouterr().err
    assert "eval at iter 6:" in log
    assert "train: done at iteration 6 after 35 s of training (the 0.5-minute budget)" in log


def test_the_schedule_follows_the_time_budget(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "now", FakeClock())
    config = tiny_config(max_iters=1000, max_minutes=0.5, min_lr=0.0, warmup_iters=4)
    training.train(**run_settings(config, tiny_data, tmp_path))
    steps = [r for r in read_csv_rows(tmp_path / "metrics.csv") if r["event"] == "train"]
    for row in steps:  # step i (1-based) starts after i - 2 timed seconds (the first step is not timed)
        it = int(row["iter"])
        assert float(row["lr"]) == pytest.approx(get_lr(it - 1, config["train"], max(0, it - 2)))
    # By the budget's end the cosine is at its floor; by steps, 31 of 1000 would still be near the peak.
    assert float(steps[-1]["lr"]) < 0.01 * config["train"]["learning_rate"]
    assert get_lr(30, config["train"], 0.0) > 0.99 * config["train"]["learning_rate"]


def test_resume_carries_the_training_time_spent(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "now", FakeClock())
    settings = run_settings(tiny_config(max_iters=1000, max_minutes=0.5), tiny_data, tmp_path)
    with monkeypatch.context() as patch:
        stop_at_step(patch, 10)
        with pytest.raises(TrainingStopped):
            training.train(**settings)
    state = torch.load(tmp_path / "state" / "state.pt", weights_only=True)
    assert state["iter_num"] == 10 and state["elapsed_s"] == 9.0  # steps 2..10
    summary = training.train(**settings)
    # The resumed process's first step (11) is not timed either: 9 s + steps 12..32 = 30 s.
    assert summary["iter_num"] == 32 and summary["elapsed_s"] == 30.0
    evals = [r for r in read_csv_rows(tmp_path / "metrics.csv") if r["event"] == "eval"]
    assert [int(r["iter"]) for r in evals] == [0, 8, 16, 24, 32]
