"""The tiny DAG end to end on CUDA, as a user with one GPU runs it: `snakemake --resources gpu=1`."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import CPU_THREADS

pytestmark = pytest.mark.gpu


def test_tiny_dag_trains_and_samples_on_cuda(shards_dir, tmp_path):
    if importlib.util.find_spec("snakemake") is None:
        pytest.skip("snakemake is not importable (.ci/gpu-check.sh brings its wheels)")
    import torch
    import yaml
    from conftest import run_snakemake, write_tiny_config

    # train.device cuda, not auto: training then fails (one line) rather than fall back to the CPU.
    config = write_tiny_config(shards_dir, tmp_path, train={"device": "cuda", "dtype": "bfloat16"})
    workdir = tmp_path / "run"
    workdir.mkdir()
    run_snakemake(
        workdir, "--cores", str(CPU_THREADS), "--resources", "gpu=1", configfiles=(config,), timeout=540
    )

    for path in ("results/train/ckpt.pt", "results/samples.txt", "results/export/model.bin"):
        assert (workdir / path).is_file(), f"{path} missing after the run"
    checkpoint = torch.load(workdir / "results/train/ckpt.pt", map_location="cpu", weights_only=True)
    max_iters = yaml.safe_load(config.read_text())["train"]["max_iters"]
    assert checkpoint["config"]["train"]["device"] == "cuda" and checkpoint["iter_num"] == max_iters
    train_log = (workdir / "logs/train/train.log").read_text()
    assert "cuda" in train_log, f"the train log does not name the CUDA device:\n{train_log[:3000]}"
    samples = (workdir / "results/samples.txt").read_text()
    assert samples.count("## prompt") == 4, samples[:2000]  # 2 prompts x 2 samples in tests/configs/tiny.yaml
