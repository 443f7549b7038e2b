"""Data-parallel training: 2 gloo ranks on CPU against one process that sees the same data.

Each rank accumulates 2 micro-batches (syncing gradients on the second only) from its own stream (seed,
rank, batch). The reference is a single process accumulating 4 micro-batches per step: rank 0's two, then
rank 1's two. Its gradient, (g00 + g01 + g10 + g11) / 4, is the one DDP averages across ranks, and the
global batch is the same (2 ranks x 2 x 2 sequences); only the float summation order differs: DDP adds
((g00 + g01) + (g10 + g11)), accumulation (((g00 + g01) + g10) + g11). Measured over 12 float32 steps of
the tiny model, the logged losses differ by at most 5e-7 (one float32 ulp at a loss of 6) and the final
weights by 1.2e-7. The tolerance, 1e-5 on every logged loss and on every weight, is twenty times that and
far below what a rank reading the wrong data or a missed gradient sync would change (the loss falls by
~0.8 here).
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, both_rank_streams, read_csv_rows, run_settings, tiny_config
from tinyllm import train as training
from tinyllm.ddp import launch_distributed

pytestmark = pytest.mark.slow  # torchrun starts two ranks: about 5 s

LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5


def ddp_config(**train_overrides) -> dict:
    config = tiny_config(**{"dtype": "float32", "max_iters": 12, "eval_interval": 6, "log_interval": 1,
                            **train_overrides})  # fmt: skip
    config["model"]["dropout"] = 0.0  # per-rank dropout streams cannot match one process's
    return config


def test_two_gloo_ranks_match_one_process_on_the_same_data(tiny_data, tmp_path, monkeypatch):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp = ddp_config(gradient_accumulation_steps=2, gpus=2)
    settings = run_settings(ddp, tiny_data, ddp_out)
    settings["threads"] = 2
    launch_distributed(settings, 2, ddp_out / "launch.json")

    monkeypatch.setattr(training, "iter_batches", both_rank_streams)
    training.train(**run_settings(ddp_config(gradient_accumulation_steps=4), tiny_data, single_out))

    ddp_rows, single_rows = read_csv_rows(ddp_out / "metrics.csv"), read_csv_rows(single_out / "metrics.csv")
    assert [(r["event"], r["iter"], r["tokens"]) for r in ddp_rows] == [
        (r["event"], r["iter"], r["tokens"]) for r in single_rows
    ]
    for ddp_row, single_row in zip(ddp_rows, single_rows, strict=True):
        for column in ("train_loss", "val_loss"):
            if single_row[column]:
                assert float(ddp_row[column]) == pytest.approx(float(single_row[column]), abs=LOSS_TOLERANCE)
    losses = [float(r["train_loss"]) for r in single_rows if r["event"] == "train"]
    assert losses[0] - losses[-1] > 100 * LOSS_TOLERANCE  # the curve moves far more than the tolerance

    ddp_weights = torch.load(ddp_out / "ckpt.pt", weights_only=True)
    single_weights = torch.load(single_out / "ckpt.pt", weights_only=True)
    ddp_state = torch.load(ddp_out / "state" / "state.pt", weights_only=True)
    assert ddp_state["world_size"] == 2 and len(ddp_state["rng"]) == 2  # one RNG state per rank
    per_step = 2 * TINY_MODEL["max_seq_len"] * 2 * 2  # batch, seq, accumulation, ranks
    assert int(ddp_rows[-1]["tokens"]) == ddp_weights["iter_num"] * per_step
    for name, tensor in single_weights["model"].items():
        torch.testing.assert_close(ddp_weights["model"][name], tensor, atol=WEIGHT_TOLERANCE, rtol=0)
    assert not (ddp_out / "state" / "stale").exists()
