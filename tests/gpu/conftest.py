"""What the CUDA tests share: the skip where torch sees no GPU, the reference data, configs and training runs.

Every test under tests/gpu is marked `gpu` (`pytest -m gpu` selects them) and skipped with the reason
"no CUDA device" where torch sees none, so CI on CPU machines collects them and stays green. They must run
on a bare GPU machine that has torch, numpy, sentencepiece, tqdm, matplotlib and pytest: at collection
time nothing else is imported (this file and tests/conftest.py import only the standard library and pytest;
torch and tinyllm are imported inside fixtures and tests). .ci/gpu-check.sh runs them on a GPU machine.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
REFERENCE_VOCAB = 4096  # the recipe's tokenizer.vocab_size
CPU_THREADS = min(
    8, os.cpu_count() or 1
)  # for tokenizer training, pretokenizing and the CPU side of training


@pytest.fixture(scope="session", autouse=True)
def cuda_device():
    """The GPU every test here runs on. Session-scoped and autouse, so it skips before any other fixture
    (the reference data, a training run) is built on a machine without one."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.fixture
def exact_float32_matmuls():
    """float32 matmuls without TF32 for one test (training turns TF32 on for the whole process)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- configs, without jsonschema (not on a bare GPU machine) ------------------------------------------------


def schema_defaults(section: str) -> dict:
    """Every key of a config section with its default, read from the schema (yaml only, at run time)."""
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    return {key: spec["default"] for key, spec in schema["properties"][section]["properties"].items()}


def full_config(model: dict | None = None, train: dict | None = None) -> dict:
    """{"model": ..., "train": ...} as validation fills it: the schema's defaults with these overrides."""
    config = {}
    for section, overrides in (("model", model or {}), ("train", train or {})):
        defaults = schema_defaults(section)
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise KeyError(f"{section}.{unknown[0]} is not a config key (see {SCHEMA.name})")
        config[section] = {**defaults, **overrides}
    return config


# --- the reference data: the TinyStories sample, a vocab-4096 tokenizer trained on it, pretokenized -------


@dataclass
class ReferenceData:
    bin_dir: Path  # data00.bin (validation) and data01.bin (training)
    tokenizer_model: Path


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory) -> ReferenceData:
    from conftest import test_data_dir
    from tinyllm.shards import pretokenize_shard, write_tiny_txt
    from tinyllm.tokenizer import train_tokenizer

    shards_dir = test_data_dir()
    if shards_dir is None:  # the synthetic fallback corpus is too small for a 4096-token vocabulary
        pytest.skip(
            "the TinyStories sample is missing: point TINYLLM_TEST_DATA at data00.json and data01.json"
        )
    folder = tmp_path_factory.mktemp("reference_data")
    shards = [shards_dir / "data00.json", shards_dir / "data01.json"]
    write_tiny_txt(shards, folder / "tiny.txt")
    tokenizer = train_tokenizer(
        folder / "tiny.txt",
        folder / f"tok{REFERENCE_VOCAB}",
        REFERENCE_VOCAB,
        num_threads=CPU_THREADS,
        quiet=True,
    )
    for shard in shards:
        pretokenize_shard(shard, tokenizer, folder / f"{shard.stem}.bin", num_threads=CPU_THREADS)
    return ReferenceData(bin_dir=folder, tokenizer_model=tokenizer)


# --- training runs ------------------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    out: Path
    summary: dict  # what tinyllm.train.train returned

    @property
    def ckpt(self) -> Path:
        return self.out / "ckpt.pt"

    @property
    def state_dir(self) -> Path:
        return self.out / "state"

    def metrics(self) -> list[dict]:
        return read_metrics(self.out / "metrics.csv")


def run_settings(config: dict, data: ReferenceData, out: Path, state_dir: Path | None = None) -> dict:
    """tinyllm.train.train's arguments for a run on the reference data, outputs in out (state: out/state)."""
    return {
        "config": config,
        "shards": str(data.bin_dir),
        "tokenizer_model": str(data.tokenizer_model),
        "state_dir": str(state_dir or out / "state"),
        "ckpt_path": str(out / "ckpt.pt"),
        "best_path": str(out / "best.pt"),
        "metrics_path": str(out / "metrics.csv"),
        "plot_path": str(out / "loss.png"),
        "threads": CPU_THREADS,
    }


def run_training(config: dict, data: ReferenceData, out: Path, state_dir: Path | None = None) -> TrainingRun:
    """tinyllm.train.train on the reference data in this process; see run_settings."""
    from tinyllm.train import train

    out.mkdir(parents=True, exist_ok=True)
    return TrainingRun(out=out, summary=train(**run_settings(config, data, out, state_dir)))


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv's rows, numbers as floats (an empty cell is None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key != "event":
                row[key] = float(value) if value != "" else None
    return rows


def reference_train_settings(**overrides) -> dict:
    """The recipe's train section (batch 8 x 256, accumulation 4) for a CUDA run of a few hundred steps."""
    short = {"max_iters": 300, "warmup_iters": 30, "eval_interval": 150, "eval_iters": 20, "log_interval": 10}
    return {**short, "device": "cuda", **overrides}


@pytest.fixture(scope="session")
def bf16_compiled_run(reference_data, tmp_path_factory) -> TrainingRun:
    """300 steps of the reference model (schema defaults: dim 288, 8 layers, 8/4 heads, seq 256) in bfloat16
    with train.compile true. The generation test samples from its checkpoint."""
    config = full_config(train=reference_train_settings(dtype="bfloat16", compile=True))
    return run_training(config, reference_data, tmp_path_factory.mktemp("bf16_compiled_run"))


def assert_learned(run: TrainingRun) -> None:
    """The loss fell and stayed finite: every logged loss, the evaluations at the start and at the end.

    A fresh model predicts about uniformly, ln 4096 = 8.3 nats; 300 steps of 8,192 tokens bring a model
    of this size to about 3-4 nats on TinyStories, so a fall of 2.5 leaves room for noise and still fails a
    run that does not learn.
    """
    rows = run.metrics()
    losses = [
        (r["event"], int(r["iter"]), r[k])
        for r in rows
        for k in ("train_loss", "val_loss")
        if r[k] is not None
    ]
    not_finite = [entry for entry in losses if not math.isfinite(entry[2])]
    assert not not_finite, f"non-finite losses in {run.out / 'metrics.csv'}: {not_finite[:5]}"
    evals = [r for r in rows if r["event"] == "eval"]
    assert [int(r["iter"]) for r in evals][0] == 0 and int(evals[-1]["iter"]) == 300, evals
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    assert first > math.log(REFERENCE_VOCAB) - 1.0, f"initial val loss {first:.3f}: not a fresh model"
    assert last < first - 2.5, f"val loss fell only from {first:.3f} to {last:.3f} in 300 steps"
    logged = [r["train_loss"] for r in rows if r["event"] == "train"]
    assert len(logged) >= 20 and logged[-1] < logged[0] - 2.0, f"logged train losses: {logged}"
