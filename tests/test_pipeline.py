"""End to end: the tiny config through the whole DAG, run as a user runs it, then what a change reruns.

One complete run per test session (the `tiny_run` fixture); every other test reads its results or asks
Snakemake, with dry runs in the same working directory, which jobs a change would schedule. Those answers
come from `snakemake --dry-run --summary`, Snakemake's tab-separated table of every output file of the DAG
with its rule, log, status and plan ("update pending" where its job would run), not from its console
messages. The fault suite (tests/faults) reads the same run and damages copies of it: a killed run, signals,
outputs in the way.
"""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    CONFIG_RECORD,
    TINY_MODEL,
    TRAIN_ONWARD,
    copy_workflow,
    describe,
    dry_run,
    dry_run_summary,
    override,
    run_snakemake,
)
from tinyllm.corpus import iter_shard

pytestmark = pytest.mark.slow


def config_args(changes: dict) -> tuple[str, ...]:
    """The same changes as `--config section={key: value}`: Snakemake takes no dotted keys (train.lr=...)."""
    entries = [
        f"{section}={yaml.safe_dump(keys, default_flow_style=True).strip()}"
        for section, keys in changes.items()
    ]
    return ("--config", *entries)


# --- the complete run ----------------------------------------------------------------


def test_run_writes_every_output(tiny_run):
    wd = tiny_run.workdir
    expected = [
        "results/train/ckpt.pt",
        "results/train/best.pt",
        "results/train/metrics.csv",
        "results/train/loss.png",
        "results/samples.txt",
        "results/export/model.bin",
        "results/export/hf/config.json",
        "results/export/hf/model.safetensors",
        "results/export/hf/tokenizer.model",
        "results/report/summary.html",
        "results/report/config.yaml",
        "results/tok512/tok512.model",
        "results/tok512/tok512.bin",
    ]
    missing = [p for p in expected if not (wd / p).is_file() or (wd / p).stat().st_size == 0]
    assert not missing, f"missing or empty after a complete run: {missing}"
    print(f"tiny pipeline: {tiny_run.seconds:.0f} s")


def test_samples_are_what_the_trained_model_writes(tiny_run, tmp_path, monkeypatch):
    """samples.txt holds the continuations that the trained ckpt.pt gives with the run's sample settings
    (seeded, so a recomputation here draws the same tokens), under a header naming those settings."""
    import torch
    from tinyllm.sample import write_samples

    wd = tiny_run.workdir
    settings = yaml.safe_load((wd / "results/report/config.yaml").read_text())["sample"]  # defaults filled
    samples = (wd / "results/samples.txt").read_text()
    header = "".join(line + "\n" for line in samples.splitlines() if line.startswith("# "))
    for knob in ("temperature", "top_k", "top_p", "seed", "max_new_tokens", "num_samples"):
        shown = re.search(rf"\b{knob}: (\S+)", header)
        assert shown and shown.group(1) == str(settings[knob]), f"{knob}: {settings[knob]}; header:\n{header}"
    sections = re.findall(r"(?m)^## prompt (\d+), sample (\d+)$", samples)
    assert len(sections) == len(settings["prompts"]) * settings["num_samples"], samples[:2000]

    # As the sample rule runs: in the working directory (the header names the checkpoint by its relative
    # path), on the CPU, with the rule's 2 threads.
    monkeypatch.chdir(wd)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        checkpoint, tokenizer = "results/train/ckpt.pt", "results/tok512/tok512.model"
        write_samples(checkpoint, tokenizer, tmp_path / "samples.txt", settings, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert samples == (tmp_path / "samples.txt").read_text(), (
        f"samples.txt:\n{samples[:1500]}\nfrom ckpt.pt now:\n{(tmp_path / 'samples.txt').read_text()[:1500]}"
    )


def test_every_job_wrote_its_log_and_benchmark(tiny_run):
    wd = tiny_run.workdir
    for kind in ("logs", "benchmarks"):
        rules = {
            p.parts[0] for p in (f.relative_to(wd / kind) for f in (wd / kind).rglob("*") if f.is_file())
        }
        # Folders are named by stage: export holds export_runc and export_hf, report both report rules.
        expected = {"download", "prepare", "tiny_txt", "tokenizer", "pretokenize", "train", "sample"}
        expected |= {"export", "report"}
        assert expected <= rules, f"{kind}/ lacks {sorted(expected - rules)}"
    train_log = (wd / "logs/train/train.log").read_text()
    assert train_log.strip(), "the train rule's log is empty: its script must send stderr there"


def test_second_run_has_nothing_to_do(tiny_run):
    jobs, rows = dry_run(tiny_run, tiny_run.config)
    assert jobs == Counter(), f"a repeated run would redo {dict(jobs)}:\n{describe(rows)}"


def test_validation_stories_round_trip(tiny_run):
    from tinyllm.tokenizer import Tokenizer

    wd = tiny_run.workdir
    tok = Tokenizer(wd / "results/tok512/tok512.model")
    with tarfile.open(tiny_run.root / "TinyStories_test.tar.gz") as tar:
        stories = [s["story"].strip() for s in json.load(tar.extractfile("data00.json"))]
    assert stories
    assert list(iter_shard(wd / "results/corpus/val_0000.jsonl")) == stories  # data00 is the validation split
    bad = [s for s in stories if tok.decode(tok.encode(s, bos=False, eos=False)) != s]
    assert not bad, (
        f"{len(bad)} of {len(stories)} validation stories do not survive encode/decode: {bad[0]!r}"
    )


def test_shard_bins_hold_the_tokenizers_ids(tiny_run):
    from tinyllm.tokenizer import Tokenizer

    wd = tiny_run.workdir
    tok = Tokenizer(wd / "results/tok512/tok512.model")
    bins = sorted((wd / "results/tok512").glob("*_*.bin"))
    assert [b.name for b in bins] == ["train_0000.bin", "val_0000.bin"]  # TinyStories: one shard a file
    for bin_path in bins:
        stories = list(iter_shard(wd / "results/corpus" / f"{bin_path.stem}.jsonl"))
        expected = [i for s in stories for i in tok.encode(s.strip(), bos=True, eos=False)]
        got = np.fromfile(bin_path, dtype="<u2")
        assert len(got) == len(expected), (
            f"{bin_path.name}: {len(got)} tokens, the tokenizer gives {len(expected)}"
        )
        assert np.array_equal(got, np.asarray(expected, dtype=np.uint16)), f"{bin_path.name}: ids differ"


def test_summary_holds_the_final_losses(tiny_run):
    from tinyllm.report import final_losses, read_metrics

    wd = tiny_run.workdir
    summary = final_losses(read_metrics(wd / "results/train/metrics.csv"))
    assert summary["evaluated"], "metrics.csv has no evaluated row (val_loss) after training"
    page = (wd / "results/report/summary.html").read_text()
    for split in ("train", "val"):
        loss = summary[split]["nats_per_token"]
        assert loss is not None and 0 < loss < 10, f"{split} loss {loss}"
        assert f"{loss:.4f}" in page
        assert summary[split]["bits_per_byte"] is not None, f"metrics.csv has no {split} bits-per-byte column"
    config = yaml.safe_load((wd / "results/report/config.yaml").read_text())
    assert config["model"]["dim"] == TINY_MODEL["dim"] and config["train"]["beta2"] == 0.95  # tiny; a default


# --- what a change reruns ------------------------------------------------------------


# case -> (changed config keys, the jobs that must rerun besides CONFIG_RECORD, how the change is given)
RERUN_CASES = {
    "sample.temperature": ({"sample": {"temperature": 0.5}}, Counter(sample=1), "--config"),
    "train.learning_rate": ({"train": {"learning_rate": 2.0e-3}}, TRAIN_ONWARD, "--config"),
    "model.n_layers": ({"model": {"n_layers": 3}}, TRAIN_ONWARD, "--configfile"),
    "tokenizer.vocab_size": (
        {"tokenizer": {"vocab_size": 520}},
        Counter(tokenizer=1, pretokenize=2, report_corpus=1) + TRAIN_ONWARD,
        "--configfile",
    ),
    # A new corpus: prepare reruns and everything after it; the dry run sees the checkpoint's first shards.
    "data.shards": (
        {"data": {"shards": 3}},
        Counter(prepare=1, tiny_txt=1, tokenizer=1, pretokenize=2, report_corpus=1) + TRAIN_ONWARD,
        "--configfile",
    ),
}


@pytest.mark.parametrize("case", list(RERUN_CASES))
def test_config_change_reruns_exactly_what_it_touches(tiny_run, case):
    changes, expected, how = RERUN_CASES[case]
    if how == "--config":
        jobs, rows = dry_run(tiny_run, tiny_run.config, extra=config_args(changes))
    else:
        jobs, rows = dry_run(tiny_run, tiny_run.config, override(tiny_run, case, changes))
    assert jobs == expected + CONFIG_RECORD, f"{case} ({how}): scheduled {dict(jobs)}\n{describe(rows)}"


def test_library_edit_reruns_training_onward(tiny_run, tmp_path):
    snakefile = copy_workflow(tmp_path / "workflow-copy")
    jobs, rows = dry_run(tiny_run, tiny_run.config, snakefile=snakefile)
    assert jobs == Counter(), f"an unchanged copy of the workflow must have nothing to do:\n{describe(rows)}"

    model_py = tmp_path / "workflow-copy/workflow/lib/tinyllm/model.py"
    model_py.write_text(model_py.read_text() + "\n# edited by test_library_edit_reruns_training_onward\n")
    jobs, rows = dry_run(tiny_run, tiny_run.config, snakefile=snakefile)
    assert jobs == TRAIN_ONWARD, f"after editing model.py: {dict(jobs)}\n{describe(rows)}"


# --- the report ----------------------------------------------------------------------


def test_report_has_losses_samples_dag_and_config(tiny_run, tmp_path):
    """`--report report.html` gives one self-contained page; `--report report.zip` the same report with the
    result files beside it, which are compared here with the run's."""
    wd = tiny_run.workdir
    page = tmp_path / "report.html"
    run_snakemake(wd, "--report", str(page), configfiles=(tiny_run.config,))
    assert page.is_file() and not zipfile.is_zipfile(page), "--report report.html must give one HTML page"
    archive = tmp_path / "report.zip"
    run_snakemake(wd, "--report", str(archive), configfiles=(tiny_run.config,))
    with zipfile.ZipFile(archive) as zf:
        files = {Path(name).name: zf.read(name) for name in zf.namelist() if "/data/raw/" in name}
    for name in ("loss.png", "samples.txt", "summary.html", "config.yaml"):
        assert name in files, f"{name} is not in the report (found {sorted(files)})"
    assert files["summary.html"] == (wd / "results/report/summary.html").read_bytes()
    assert files["samples.txt"] == (wd / "results/samples.txt").read_bytes()
    assert files["loss.png"] == (wd / "results/train/loss.png").read_bytes()
    assert yaml.safe_load(files["config.yaml"])["tokenizer"]["vocab_size"] == 512

    # The page describes this run (workflow/report/workflow.rst filled from the config) and every rule.
    text = " ".join(page.read_text().replace("\\n", " ").split())
    layers, dim, context = (TINY_MODEL[key] for key in ("n_layers", "dim", "max_seq_len"))
    shape = f"({layers} layers, width {dim}, context {context})"
    for fact in (f"tokenizer with {TINY_MODEL['vocab_size']} tokens", f"{shape} is trained for 40 steps"):
        assert fact in text, f"the report's description lacks {fact!r}"
    rules = {r["rule"] for r in dry_run_summary(wd, tiny_run.config)}
    absent = sorted(rule for rule in rules if f'"{rule}"' not in text)
    assert not absent, f"the report does not name the rules {absent}"
