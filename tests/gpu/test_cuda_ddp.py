"""Data-parallel training over NCCL: 2 CUDA ranks against one process that sees the same data.

As tests/test_ddp.py does with gloo ranks on the CPU: each rank accumulates 2 micro-batches from its own
stream, the reference process accumulates rank 0's two and then rank 1's two, so both average the same
gradient and only the order of the float sums differs. On CUDA the kernels add their own noise (atomic
adds), so the tolerances are looser than the CPU test's, and still far below what a rank reading the wrong
data or a missed gradient sync would change.
"""

from __future__ import annotations

import pytest
from conftest import TINY_MODEL_SECTION, both_rank_streams

from .conftest import full_config, read_metrics, run_settings

pytestmark = pytest.mark.gpu

LOSS_TOLERANCE = 2e-3
WEIGHT_TOLERANCE = 2e-3
SMALL_MODEL = TINY_MODEL_SECTION  # the tests' tiny shape, on the reference data's 4096-token vocabulary


def ddp_config(**train_overrides) -> dict:
    train = {"batch_size": 4, "learning_rate": 3e-3, "max_iters": 12, "warmup_iters": 2, "eval_interval": 6,
             "eval_iters": 2, "log_interval": 1, "device": "cuda", "dtype": "float32"}  # fmt: skip
    train.update(train_overrides)
    return full_config(model=SMALL_MODEL, train=train)


def test_two_nccl_ranks_match_one_process(reference_data, tmp_path, monkeypatch):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(
            f"NCCL data parallelism needs 2+ CUDA devices; this machine has {torch.cuda.device_count()}"
        )
    from tinyllm import train as training
    from tinyllm.ddp import launch_distributed

    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    settings = run_settings(ddp_config(gradient_accumulation_steps=2, gpus=2), reference_data, ddp_out)
    launch_distributed(settings, 2, ddp_out / "launch.json")

    monkeypatch.setattr(training, "iter_batches", both_rank_streams)
    training.train(**run_settings(ddp_config(gradient_accumulation_steps=4), reference_data, single_out))

    ddp_rows, single_rows = read_metrics(ddp_out / "metrics.csv"), read_metrics(single_out / "metrics.csv")
    assert [(r["event"], r["iter"], r["tokens"]) for r in ddp_rows] == [
        (r["event"], r["iter"], r["tokens"]) for r in single_rows
    ]
    for ddp_row, single_row in zip(ddp_rows, single_rows, strict=True):
        for column in ("train_loss", "val_loss"):
            if single_row[column] is not None:
                assert ddp_row[column] == pytest.approx(single_row[column], abs=LOSS_TOLERANCE), (
                    column,
                    ddp_row,
                )
    losses = [r["train_loss"] for r in single_rows if r["event"] == "train"]
    assert losses[0] - losses[-1] > 50 * LOSS_TOLERANCE  # the curve moves far more than the tolerance

    ddp_weights = torch.load(ddp_out / "ckpt.pt", weights_only=True)["model"]
    single_weights = torch.load(single_out / "ckpt.pt", weights_only=True)["model"]
    for name, tensor in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, atol=WEIGHT_TOLERANCE, rtol=0)
