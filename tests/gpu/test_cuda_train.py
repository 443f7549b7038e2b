"""Training on CUDA at the reference model config: bf16 + compile, float16 + GradScaler, kill and resume."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from .conftest import assert_learned, full_config, reference_train_settings, run_training

pytestmark = pytest.mark.gpu


def test_bf16_compiled_reference_run_learns(bf16_compiled_run):
    assert_learned(bf16_compiled_run)
    import torch

    checkpoint = torch.load(bf16_compiled_run.ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["iter_num"] == 300
    assert checkpoint["model_args"]["dim"] == 288 and checkpoint["model_args"]["vocab_size"] == 4096
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())


def test_float16_with_grad_scaler_learns(reference_data, tmp_path):
    """float16 autocast trains through the GradScaler: without it small gradients underflow to zero and
    large ones overflow, and the loss would not fall like this."""
    config = full_config(train=reference_train_settings(dtype="float16", compile=False))
    assert_learned(run_training(config, reference_data, tmp_path / "fp16"))


def copy_state_when_written(state_dir: Path, iteration: int, dest: Path, monkeypatch) -> None:
    """Copy state_dir to dest right after training writes its state checkpoint of `iteration`.

    Every output is written atomically (a temporary file renamed into place with os.replace), so wrapping
    os.replace sees each checkpoint the moment it lands. The state checkpoint is the one that holds the
    optimizer (tinyllm.checkpoint documents the layout); best.pt beside it holds weights only.
    """
    import torch

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        dst = Path(dst)
        if dest.exists() or dst.parent != state_dir or dst.suffix != ".pt":
            return
        checkpoint = torch.load(dst, map_location="cpu", weights_only=True, mmap=True)
        if "optimizer" in checkpoint and checkpoint.get("iter_num") == iteration:
            shutil.copytree(state_dir, dest)

    monkeypatch.setattr(os, "replace", replace)


def test_killed_run_resumes_from_its_state(reference_data, tmp_path, monkeypatch, capfd):
    """Run to 100 steps with a state checkpoint at 50; resume a fresh run from a copy of that state (as a
    run killed after step 50 would be) and finish: its weights end close to the uninterrupted run's.

    On CUDA the two runs are not bitwise equal (atomic adds in some backward kernels make the float sums'
    order vary), so closeness is measured against how far the weights moved over the 50 resumed steps: a
    resume that lost the optimizer moments, the data position or the learning-rate schedule lands a large
    fraction of that distance away, the kernels' noise a small one.
    """
    import torch

    def weights(path):
        return torch.load(path, map_location="cpu", weights_only=True)["model"]

    config = full_config(
        train=reference_train_settings(max_iters=100, eval_interval=50, warmup_iters=10, log_interval=5)
    )
    uninterrupted_dir, state_at_50 = tmp_path / "uninterrupted", tmp_path / "state-at-50"
    with monkeypatch.context() as patch:
        copy_state_when_written(uninterrupted_dir / "state", 50, state_at_50, patch)
        uninterrupted = run_training(config, reference_data, uninterrupted_dir)
    assert state_at_50.is_dir(), "no state checkpoint of iteration 50 was written"
    at_50 = weights(next(p for p in state_at_50.glob("*.pt") if p.name != "best.pt"))

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(state_at_50, resumed_dir / "state")
    capfd.readouterr()
    resumed = run_training(config, reference_data, resumed_dir)
    log = capfd.readouterr().err
    assert re.search(r"resuming from \S+ at iteration 50\b", log), f"no resume at 50 in:\n{log[-3000:]}"
    # The rows up to 50 come from the state, the rest the resumed run logged itself.
    rows = {"uninterrupted": uninterrupted.metrics(), "resumed": resumed.metrics()}
    assert [(r["event"], r["iter"]) for r in rows["resumed"]] == [
        (r["event"], r["iter"]) for r in rows["uninterrupted"]
    ]
    val_losses = {name: [r["val_loss"] for r in run if r["event"] == "eval"] for name, run in rows.items()}
    assert val_losses["resumed"][-1] == pytest.approx(val_losses["uninterrupted"][-1], abs=0.02), val_losses

    final, resumed_final = weights(uninterrupted.ckpt), weights(resumed.ckpt)
    assert resumed_final.keys() == final.keys() == at_50.keys()
    moved = sum(float((final[k] - at_50[k]).double().square().sum()) for k in final) ** 0.5
    apart = sum(float((final[k] - resumed_final[k]).double().square().sum()) for k in final) ** 0.5
    assert moved > 0, "the weights did not move between iterations 50 and 100"
    assert apart < 0.1 * moved, (
        f"resumed weights are {apart:.4g} from the uninterrupted run's ({moved:.4g} moved since iteration 50)"
    )
