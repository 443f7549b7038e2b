"""End to end: the tiny config through the whole DAG, run as a user runs it, then what a change reruns.

One complete run per test session (the `tiny_run` fixture); every other test reads its results or asks
Snakemake, with dry runs in the same working directory, which jobs a change would schedule. Those answers
come from `snakemake --dry-run --summary`, Snakemake's tab-separated table of every output file of the DAG
with its rule, log, status and plan ("update pending" where its job would run), not from its console
messages. Tests that must write (the killed run) work on a copy of that directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    SNAKEFILE,
    SNAKEMAKE,
    dry_run_summary,
    run_snakemake,
    tail,
    write_tiny_config,
    write_yaml,
)
from tinyllm.corpus import iter_shard

pytestmark = pytest.mark.slow

# What a change of the trained model reruns: training and everything that reads its outputs.
TRAIN_ONWARD = Counter(train=1, sample=1, export_runc=1, export_hf=1, export_gguf=1, report_summary=1)
# Every config edit also rewrites the report's record of the config.
CONFIG_RECORD = Counter(report_config=1)


@dataclass
class Run:
    workdir: Path
    config: Path  # the tiny config, data.url pointing at the test archive
    root: Path  # the temporary folder holding workdir, config and the archive
    seconds: float
    outputs_per_job: dict[str, int]  # rule -> output files each of its jobs writes


def pending(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["plan"] == "update pending"]


def describe(rows: list[dict]) -> str:
    return "\n".join(f"{r['rule']}: {r['output_file']} ({r['status']})" for r in pending(rows)) or "nothing"


def dry_run(
    run: Run, *configfiles: Path, workdir: Path | None = None, snakefile: Path = SNAKEFILE, extra=()
) -> tuple[Counter, list[dict]]:
    """Jobs per rule that `snakemake` would run now (the summary's pending outputs, counted in jobs), and
    the summary's rows. The run's target rule `all` writes no file and is left out."""
    rows = dry_run_summary(workdir or run.workdir, *configfiles, snakefile=snakefile, extra=extra)
    outputs = Counter(row["rule"] for row in pending(rows))
    jobs = Counter()
    for rule, count in outputs.items():
        jobs[rule], partial = divmod(count, run.outputs_per_job[rule])
        assert not partial, f"{count} pending outputs of {rule}, whose jobs write {run.outputs_per_job[rule]}"
    return jobs, rows


def outputs_per_job(rows: list[dict]) -> dict[str, int]:
    """rule -> output files per job, from a summary after a complete run: every job has its own log."""
    files, logs = Counter(), {}
    for row in rows:
        files[row["rule"]] += 1
        logs.setdefault(row["rule"], set()).add(row["log-file(s)"])
    assert all("-" not in rule_logs for rule_logs in logs.values()), logs
    per_job = {rule: files[rule] // len(logs[rule]) for rule in files}
    assert all(per_job[rule] * len(logs[rule]) == files[rule] for rule in files), (files, logs)
    return per_job


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shards_dir) -> Run:
    """The tiny config run once through the whole DAG: `snakemake --cores 2 --resources gpu=1`."""
    root = tmp_path_factory.mktemp("pipeline")
    config_path = write_tiny_config(shards_dir, root)
    workdir = root / "run"
    workdir.mkdir()
    start = time.monotonic()
    run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", configfiles=(config_path,), timeout=900)
    seconds = time.monotonic() - start
    per_job = outputs_per_job(dry_run_summary(workdir, config_path))
    return Run(workdir=workdir, config=config_path, root=root, seconds=seconds, outputs_per_job=per_job)


def override(run: Run, name: str, changes: dict) -> Path:
    """A second --configfile holding only the changed keys (Snakemake merges it over the tiny config)."""
    return write_yaml(run.root / f"override-{name}.yaml", changes)


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
    assert config["model"]["dim"] == 64 and config["train"]["beta2"] == 0.95  # a tiny value and a default


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


def copy_workflow(dest: Path) -> Path:
    """The workflow (Snakefile, config, rules, scripts, library, envs, profiles) copied with its mtimes."""
    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "workflow", "envs", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest / "Snakefile"


def test_library_edit_reruns_training_onward(tiny_run, tmp_path):
    snakefile = copy_workflow(tmp_path / "workflow-copy")
    jobs, rows = dry_run(tiny_run, tiny_run.config, snakefile=snakefile)
    assert jobs == Counter(), f"an unchanged copy of the workflow must have nothing to do:\n{describe(rows)}"

    model_py = tmp_path / "workflow-copy/workflow/lib/tinyllm/model.py"
    model_py.write_text(model_py.read_text() + "\n# edited by test_library_edit_reruns_training_onward\n")
    jobs, rows = dry_run(tiny_run, tiny_run.config, snakefile=snakefile)
    assert jobs == TRAIN_ONWARD, f"after editing model.py: {dict(jobs)}\n{describe(rows)}"


def processes_in(folder: Path, cmdline_part: str = "") -> list[int]:
    """Pids of processes working in folder (or below it) whose command line contains cmdline_part."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd == folder or folder in cwd.parents) and cmdline_part in cmdline:
            pids.append(int(proc.name))
    return pids


def test_killed_training_is_redone(tiny_run, tmp_path):
    """SIGKILL the run while the train script runs: the next run must redo train, not take its outputs."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run.workdir, workdir, symlinks=True)
    # Far more steps than the kill waits for, so the job is surely midway.
    longer = override(tiny_run, "killed", {"train": {"max_iters": 100000}})
    log = workdir / "logs/train/train.log"
    started = time.time()
    cmd = [*SNAKEMAKE, "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2"]
    cmd += ["--resources", "gpu=1", "--configfile", str(tiny_run.config), str(longer)]
    console = tmp_path / "killed-run.log"
    with open(console, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Midway: the rule's script process is alive and has written to the log Snakemake cleared for it.
        def train_running() -> bool:
            fresh_log = log.is_file() and log.stat().st_mtime > started and log.stat().st_size > 0
            return fresh_log and bool(processes_in(workdir, ".train.py"))

        deadline = time.monotonic() + 180
        while not train_running():
            assert proc.poll() is None, f"the run ended before train started:\n{tail(console.read_text())}"
            assert time.monotonic() < deadline, f"train did not start:\n{tail(console.read_text())}"
            time.sleep(0.2)
        time.sleep(1)
        assert processes_in(workdir, ".train.py"), "train ended before it could be killed"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for pid in processes_in(workdir):  # anything the run started outside its process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # A hard kill leaves Snakemake's lock behind; its message tells the user to unlock, as the test does.
    run_snakemake(workdir, "--unlock", configfiles=(tiny_run.config, longer))
    # The same command again redoes train and what follows, because its outputs are gone ...
    jobs, rows = dry_run(tiny_run, tiny_run.config, longer, workdir=workdir)
    assert jobs == TRAIN_ONWARD + CONFIG_RECORD, f"rerun after the kill: {dict(jobs)}\n{describe(rows)}"
    train_status = {r["output_file"]: r["status"] for r in rows if r["rule"] == "train"}
    assert set(train_status.values()) == {"missing"}, f"train's outputs after the kill: {train_status}"
    # ... and so does asking for its checkpoint under the first config: its params are the ones Snakemake
    # recorded, so only a missing ckpt.pt can schedule train. (Without a target Snakemake keeps that run's
    # samples and exports, which are complete, and does not rebuild what they came from.)
    jobs, rows = dry_run(tiny_run, tiny_run.config, workdir=workdir, extra=("results/train/ckpt.pt",))
    assert jobs == Counter(train=1), f"asking for ckpt.pt after the kill: {dict(jobs)}\n{describe(rows)}"


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
    for fact in ("tokenizer with 512 tokens", "(2 layers, width 64, context 64) is trained for 40 steps"):
        assert fact in text, f"the report's description lacks {fact!r}"
    rules = {r["rule"] for r in dry_run_summary(wd, tiny_run.config)}
    absent = sorted(rule for rule in rules if f'"{rule}"' not in text)
    assert not absent, f"the report does not name the rules {absent}"
