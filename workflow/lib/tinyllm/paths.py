"""Where the pipeline writes: the one place that the Snakefile (workflow/rules/common.smk) and the CLI read.

Paths are relative to the working directory Snakemake runs in (the repository, or --directory).
"""

from __future__ import annotations

RESULTS = "results"
DATA_DIR = f"{RESULTS}/data"  # downloads: the TinyStories archive, downloads/ of data.sources' urls
ARCHIVE = f"{DATA_DIR}/TinyStories_all_data.tar.gz"
CORPUS_DIR = f"{RESULTS}/corpus"  # prepare's shards, {split}_NNNN.jsonl, and their manifest corpus.json
TINY_TXT = f"{DATA_DIR}/tiny.txt"
CORPUS_REPORT = f"{RESULTS}/report/corpus.md"  # per split: sources, documents, bytes, tokens, lengths
CORPUS_REPORT_HTML = f"{RESULTS}/report/corpus.html"

TRAIN_DIR = f"{RESULTS}/train"
EXPERIMENTS_DIR = f"{RESULTS}/experiments"
COMPARE_PLOT = f"{EXPERIMENTS_DIR}/compare.png"  # every run's val bits/byte, main run included
COMPARE_TABLE = f"{EXPERIMENTS_DIR}/compare.md"
SAMPLES = f"{RESULTS}/samples.txt"
EXPORT_DIR = f"{RESULTS}/export"
EXPORT_RUNC = f"{EXPORT_DIR}/model.bin"
EXPORT_HF = f"{EXPORT_DIR}/hf"
HF_EXPORT_FILES = (  # what tinyllm.export_hf writes into EXPORT_HF
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
)
EXPORT_GGUF = f"{EXPORT_DIR}/model.gguf"
REPORT_DIR = f"{RESULTS}/report"


def tokenizer_dir(vocab_size: int) -> str:
    return f"{RESULTS}/tok{vocab_size}"


def tokenizer_model(vocab_size: int) -> str:
    """The SentencePiece model; .vocab and run.c's .bin sit beside it under the same stem."""
    return f"{tokenizer_dir(vocab_size)}/tok{vocab_size}.model"


def shard_bin(vocab_size: int) -> str:
    """A pretokenized shard, with the {shard} wildcard (val_0000, train_0000, ...) left in."""
    return f"{tokenizer_dir(vocab_size)}/{{shard}}.bin"


REPORT_SUMMARY = f"{REPORT_DIR}/summary.html"  # the final losses, for snakemake --report
REPORT_CONFIG = f"{REPORT_DIR}/config.yaml"  # the validated config the run used
RUN_FILES = {  # what a training run writes into its folder (run_file)
    "ckpt": "ckpt.pt",  # the final weights
    "best": "best.pt",  # the best validation loss's weights
    "metrics": "metrics.csv",  # one row per log step and per evaluation (tinyllm.report)
    "plot": "loss.png",
    "state": "state",  # the resumable training state (not a Snakemake output: it survives a failed job)
}


def run_dir(experiment: str | None = None) -> str:
    """A training run's folder: results/train for the main run, results/experiments/NAME for an experiment."""
    return TRAIN_DIR if experiment is None else f"{EXPERIMENTS_DIR}/{experiment}"


def run_file(name: str, experiment: str | None = None) -> str:
    """One of RUN_FILES in a run's folder (experiment may be the "{experiment}" wildcard)."""
    return f"{run_dir(experiment)}/{RUN_FILES[name]}"


def samples_file(experiment: str | None = None) -> str:
    """A run's samples: results/samples.txt for the main run, samples.txt in an experiment's folder."""
    return SAMPLES if experiment is None else f"{run_dir(experiment)}/samples.txt"


CKPT = run_file("ckpt")
