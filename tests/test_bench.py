"""tinyllm.bench's CUDA training bench, run on the CPU with a tiny model: its figures and its gradient check.

The real run needs a GPU (.ci/gpu-check.sh); the bookkeeping around it (paths one after another, the
gradient cosine that keeps a wrong path from being named the fastest, the projection of the recipe, the
attention kernels) is the same on the CPU, so CI covers it here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL
from tinyllm import bench
from tinyllm.model import ModelArgs, Transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The tests' tiny shape with 8 query heads (4 key/value heads): a head_dim of 8, the smallest the attention
# kernels take, so that the bench's kernel timings at the model's head_dim (attention_ms_*_d8) are checked;
# and a context of 32: each path trains rounds of steps of 32 whole sequences, and 64 tokens would take the
# test from about 5 s to 14 s on two busy cores with nothing more checked.
TINY = ModelArgs(**{**TINY_MODEL, "n_heads": 8, "n_kv_heads": 4, "max_seq_len": 32})


@pytest.mark.slow  # times several training paths: about 5 s
def test_cuda_bench_figures_on_the_cpu():
    paths = (
        bench.CudaPath("fp32_eager", 8, 4, torch.float32),
        bench.CudaPath("gpu_preset_fp32_foreach_adamw", 32, 1, torch.float32, fused_adamw=False),
        bench.CudaPath("mismatched_batch", 8, 2, torch.float32),  # 16 of the 32 sequences: refused
    )
    figures = bench.bench_train_cuda(torch.device("cpu"), paths, args=TINY)
    measured = ("fp32_eager", "gpu_preset_fp32_foreach_adamw")
    for name in measured:
        assert figures[f"train_tokens_per_s_{name}"] > 0
        # The same weights and the same 32 sequences: one step of 4 x 8 or of 1 x 32 has the same gradient.
        assert figures[f"train_grad_cosine_{name}"] == pytest.approx(1.0, abs=1e-6)
    assert "train_tokens_per_s_mismatched_batch" not in figures
    fastest = figures["train_fastest_path"]
    assert fastest in measured and figures["train_tokens_per_s"] == figures[f"train_tokens_per_s_{fastest}"]
    assert figures["train_recipe_minutes"] == pytest.approx(
        bench.recipe_tokens() / figures["train_tokens_per_s"] / 60
    )
    # Every kernel that runs on the CPU is timed at the model's head_dim (8) and padded to a multiple of 8.
    assert {"attention_ms_default_d8", "attention_ms_math_d8"} <= set(figures), sorted(figures)


def test_gradient_cosine_catches_a_path_that_loses_micro_batches():
    torch.manual_seed(0)
    model = Transformer(TINY)
    x, y = (torch.randint(0, TINY.vocab_size, (32, TINY.max_seq_len)) for _ in "xy")
    micro_batches = list(zip(x.split(8), y.split(8), strict=True))

    def accumulate(batches):
        def run():
            for xb, yb in batches:
                (model(xb, yb)[1] / len(micro_batches)).backward()

        return run

    whole = bench._gradient_cosine(model, accumulate(micro_batches), TINY, micro_batches, torch.device("cpu"))
    last_only = bench._gradient_cosine(
        model, accumulate(micro_batches[-1:]), TINY, micro_batches, torch.device("cpu")
    )
    assert whole == pytest.approx(1.0, abs=1e-6)
    assert last_only < bench.GRAD_COSINE_MIN, last_only
