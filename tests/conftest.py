"""Shared fixtures: the TinyStories shards the tests run on.

Tests use the real TinyStories sample at $TINYLLM_TEST_DATA (default: ../shared/data/tinystories beside the
repository). Where that folder is absent (a fresh clone elsewhere), they build a small story corpus of their
own in the same shard format, so the suite still runs.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEST_DATA = REPO.parent / "shared" / "data" / "tinystories"


def test_data_dir() -> Path | None:
    path = Path(os.environ.get("TINYLLM_TEST_DATA", DEFAULT_TEST_DATA))
    return path if (path / "data00.json").is_file() and (path / "data01.json").is_file() else None


test_data_dir.__test__ = False  # a helper, not a test


_NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim"]
_ANIMALS = ["cat", "dog", "bird", "frog", "bunny", "duck", "bear", "fish"]
_THINGS = ["ball", "kite", "red hat", "big box", "toy car", "blue cup", "shiny rock", "little boat"]
_PLACES = ["park", "garden", "forest", "beach", "house", "school", "farm", "lake"]
_FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "angry", "curious"]


def synthetic_story(rng: random.Random) -> str:
    """A short story in TinyStories' style, from templates (fallback corpus only)."""
    name, friend = rng.sample(_NAMES, 2)
    animal, thing, place = rng.choice(_ANIMALS), rng.choice(_THINGS), rng.choice(_PLACES)
    feel, feel2 = rng.sample(_FEELINGS, 2)
    sentences = [
        f"Once upon a time, there was a little {animal} named {name}.",
        f"{name} liked to play in the {place} with {friend}.",
        f"One day, {name} found a {thing} under a tree.",
        f'{name} felt very {feel}. "Look what I found!" {name} said.',
        f'{friend} smiled and said, "Can we play with it together?"',
        f"They played with the {thing} all day long, and they were {feel2}.",
        f"At the end of the day, {name} and {friend} went home. The end.",
    ]
    keep = sorted(rng.sample(range(len(sentences)), rng.randint(4, len(sentences))))
    return " ".join(sentences[i] for i in keep)


def write_synthetic_shards(folder: Path, sizes=(300, 2000), seed: int = 1337) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index, count in enumerate(sizes):
        stories = [{"story": synthetic_story(rng)} for _ in range(count)]
        (folder / f"data{index:02d}.json").write_text(json.dumps(stories, ensure_ascii=False))
    return folder


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory) -> Path:
    """Folder holding data00.json (validation) and data01.json (training), real where available."""
    real = test_data_dir()
    if real is not None:
        return real
    return write_synthetic_shards(tmp_path_factory.mktemp("synthetic_tinystories"))


# --- TinyStories archive and a small tokenizer, for the data and tokenizer tests and any other -------------


def make_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    """Write a gzip-compressed tar holding regular files {member name: content}, in the given order."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (restored after): tiny models gain nothing from a second."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tinystories_archive(shards_dir, tmp_path_factory) -> Path:
    """TinyStories_all_data.tar.gz from shards_dir: data00.json and data01.json at its root, as upstream."""
    members = {name: (shards_dir / name).read_bytes() for name in ("data00.json", "data01.json")}
    return make_tar_gz(tmp_path_factory.mktemp("archive") / "TinyStories_all_data.tar.gz", members)


@pytest.fixture
def archive_bytes(tinystories_archive) -> bytes:
    return tinystories_archive.read_bytes()


@pytest.fixture
def server(archive_bytes):
    """A FileServer (tests/http_server.py) on 127.0.0.1 serving the archive at http_server.PATH."""
    from http_server import PATH, FileServer

    with FileServer({PATH: archive_bytes}) as running:
        yield running


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    """The error's message is one line holding each of parts (a file, a URL, a key, a position...)."""
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


@pytest.fixture(scope="session")
def small_tokenizer(shards_dir, tmp_path_factory) -> Path:
    """Path to a vocab-512 SentencePiece BPE model (llama2.c options) trained on shards_dir's data00.json."""
    from tinyllm.shards import write_tiny_txt
    from tinyllm.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tok512")
    write_tiny_txt([shards_dir / "data00.json"], folder / "tiny.txt")
    return train_tokenizer(folder / "tiny.txt", folder / "tok512", 512, quiet=True)


def write_json(path: Path, value) -> Path:
    """value as JSON at path (a str is written as it is: JSON or not)."""
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)
    return path


def write_stories_text(shards_dir: Path, path: Path, count: int = 300) -> Path:
    """A tokenizer's training text: the first count validation stories, one a line."""
    from tinyllm.shards import load_stories

    path.write_text("\n".join(load_stories(shards_dir / "data00.json")[:count]) + "\n")
    return path


@pytest.fixture
def numbered_shards(tmp_path):
    """A folder of pretokenized shards whose tokens tell where they came from: shard k (data0k.bin) holds
    k * 10000 + 0, 1, 2, ... (300, 2000 and 800 tokens); data00 is the validation split."""
    import numpy as np

    for shard, length in enumerate([300, 2000, 800]):
        (shard * 10_000 + np.arange(length)).astype("<u2").tofile(tmp_path / f"data{shard:02d}.bin")
    return tmp_path


# --- the one tiny model shape of the tests ------------------------------------------------------------------

# ModelArgs of every tiny model in the tests: random models, the story model, training runs (tiny_config) and
# the end-to-end DAG (tests/configs/tiny.yaml, whose model section test_config checks against TINY_MODEL).
# A test that needs another shape says why where it overrides a field.
TINY_MODEL = dict(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, vocab_size=512, max_seq_len=64
)
# The same shape as the config's model section (the vocabulary is the tokenizer's: tokenizer.vocab_size).
TINY_MODEL_SECTION = {key: value for key, value in TINY_MODEL.items() if key != "vocab_size"}


def make_random_model(seed: int = 0, scale: float = 1.0, tied: bool = True, **overrides):
    """A Transformer of TINY_MODEL (with overrides) in eval mode, random weights.

    scale > 1 spreads the logits so greedy decoding does not collapse to one token; norm gains are drawn
    off 1 so that where they are folded or exported is tested; tied=False gives the output layer its own
    weights.
    """
    import torch
    from tinyllm.model import ModelArgs, Transformer

    torch.manual_seed(seed)
    model = Transformer(ModelArgs(**{**TINY_MODEL, **overrides}))
    if not tied:
        model.output.weight = torch.nn.Parameter(torch.randn_like(model.output.weight) * 0.02)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.mul_(scale)
    return model.eval()


# --- running Snakemake as a user does, for the end-to-end tests (pipeline, SLURM, GPU) ---------------------

SNAKEFILE = REPO / "Snakefile"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"
EXTRA_SHARD_STORIES = 300  # data02.json of the test archive (data01's first stories): shards can grow


def snakemake_command() -> list[str]:
    """The snakemake of the interpreter running the tests (the venv's, as a user's shell finds it), or
    `python -m snakemake` where that interpreter has no console script (packages installed with --target)."""
    import sys

    script = Path(sys.executable).with_name("snakemake")
    return [str(script)] if script.exists() else [sys.executable, "-m", "snakemake"]


SNAKEMAKE = snakemake_command()


def tail(text: str, chars: int = 6000) -> str:
    return text[-chars:]


def stop_group(proc, grace: float = 15) -> None:
    """SIGINT to the process group started for proc (start_new_session), SIGKILL if it lingers."""
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_snakemake(
    workdir: Path,
    *args: str,
    configfiles: tuple[Path, ...] = (),
    snakefile: Path = SNAKEFILE,
    timeout: float = 300,
    check: bool = True,
):
    """snakemake --snakefile ... --directory workdir [--configfile ...] args, run from workdir (run_process:
    stdout and stderr kept apart, as --dag writes the graph to stdout)."""
    cmd = [*SNAKEMAKE, "--snakefile", str(snakefile), "--directory", str(workdir), *args]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    return run_process(cmd, workdir, timeout, check=check)


def run_process(cmd: list[str], cwd: Path, timeout: float, check: bool = True, merge_stderr: bool = False):
    """cmd in its own process group, its output captured (stderr apart unless merge_stderr).

    Returns the subprocess.CompletedProcess; with check, a non-zero exit fails the test with the output's
    tail. On a timeout the whole group gets SIGINT (what Snakemake cleans up on), then SIGKILL.
    """
    import subprocess

    stderr = subprocess.STDOUT if merge_stderr else subprocess.PIPE
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
    )
    try:
        stdout, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        stdout, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{tail(stdout + (err or ''))}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, err)
    if check and result.returncode != 0:
        pytest.fail(f"exit {result.returncode}: {' '.join(cmd)}\n{tail(stdout + (err or ''))}")
    return result


SUMMARY_COLUMNS = ("output_file", "date", "rule", "log-file(s)", "status", "plan")


def dry_run_summary(
    workdir: Path, *configfiles: Path, snakefile: Path = SNAKEFILE, extra: tuple[str, ...] = ()
) -> list[dict]:
    """The rows of `snakemake --dry-run --summary`: one per output file of the DAG, as SUMMARY_COLUMNS
    (rule, status, plan: "update pending" for what a run would make)."""
    args = ("--dry-run", "--summary", *extra)
    out = run_snakemake(workdir, *args, configfiles=configfiles, snakefile=snakefile)
    lines = out.stdout.splitlines()
    header = "\t".join(SUMMARY_COLUMNS)
    assert header in lines, f"no summary table in the output of {' '.join(out.args)}:\n{tail(out.stdout)}"
    rows = [line.split("\t") for line in lines[lines.index(header) + 1 :] if line.strip()]
    assert all(len(row) == len(SUMMARY_COLUMNS) for row in rows), tail(out.stdout)
    return [dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in rows]


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build_archive(shards_dir: Path, dest: Path) -> Path:
    """A TinyStories-style tar.gz: data00.json, data01.json at its root, and a small data02.json."""
    stories = json.loads((shards_dir / "data01.json").read_text())[:EXTRA_SHARD_STORIES]
    members = {name: (shards_dir / name).read_bytes() for name in ("data00.json", "data01.json")}
    members["data02.json"] = json.dumps(stories, ensure_ascii=False).encode()
    return make_tar_gz(dest, members)


def write_tiny_config(shards_dir: Path, folder: Path, **section_overrides: dict) -> Path:
    """tests/configs/tiny.yaml with data.url pointing at an archive built from shards_dir, in folder.

    section_overrides update whole sections key by key, e.g. train={"device": "cuda"}.
    """
    import yaml

    archive = build_archive(shards_dir, folder / "TinyStories_test.tar.gz")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"]["url"] = str(archive)
    for section, keys in section_overrides.items():
        config.setdefault(section, {}).update(keys)
    return write_yaml(folder / "tiny.yaml", config)


def copy_workflow(dest: Path) -> Path:
    """The workflow (Snakefile, config.yaml, rules, scripts, library, envs, profiles) copied with its mtimes,
    to edit without touching the checkout: the copy's Snakefile."""
    import shutil

    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "workflow", "envs", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest / "Snakefile"


# --- the tiny config through the whole DAG, once a session: the end-to-end tests and the fault suite read it


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
    """The tiny config run once through the whole DAG: `snakemake --cores 2 --resources gpu=1`. Never
    written to: a test that changes anything works on a copy of its workdir."""
    import time

    root = tmp_path_factory.mktemp("pipeline")
    config_path = write_tiny_config(shards_dir, root)
    workdir = root / "run"
    workdir.mkdir()
    start = time.monotonic()
    run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", configfiles=(config_path,), timeout=900)
    seconds = time.monotonic() - start
    per_job = outputs_per_job(dry_run_summary(workdir, config_path))
    return Run(workdir=workdir, config=config_path, root=root, seconds=seconds, outputs_per_job=per_job)


def pending(rows: list[dict]) -> list[dict]:
    """The rows of a dry-run summary whose jobs a run would start."""
    return [row for row in rows if row["plan"] == "update pending"]


def describe(rows: list[dict]) -> str:
    return "\n".join(f"{r['rule']}: {r['output_file']} ({r['status']})" for r in pending(rows)) or "nothing"


def dry_run(run: Run, *configfiles: Path, workdir: Path | None = None, snakefile: Path = SNAKEFILE, extra=()):
    """(Counter of jobs per rule that `snakemake` would run now, the summary's rows): the summary's pending
    outputs counted in jobs, in run's workdir or another. The target rule `all` writes no file: left out."""
    rows = dry_run_summary(workdir or run.workdir, *configfiles, snakefile=snakefile, extra=extra)
    outputs = Counter(row["rule"] for row in pending(rows))
    jobs = Counter()
    for rule, count in outputs.items():
        jobs[rule], partial = divmod(count, run.outputs_per_job[rule])
        assert not partial, f"{count} pending outputs of {rule}, whose jobs write {run.outputs_per_job[rule]}"
    return jobs, rows


def override(run: Run, name: str, changes: dict) -> Path:
    """A second --configfile holding only the changed keys (Snakemake merges it over the tiny config)."""
    return write_yaml(run.root / f"override-{name}.yaml", changes)


# --- a tiny model that ends its stories, for the tests that compare generation across runtimes -------------


def short_story(rng: random.Random) -> str:
    name, friend = rng.sample(_NAMES, 2)
    animal, place = rng.choice(_ANIMALS), rng.choice(_PLACES)
    return (
        f"Once upon a time, there was a little {animal} named {name}. "
        f"{name} liked to play in the {place} with {friend}."
    )


@pytest.fixture(scope="session")
def story_model(small_tokenizer, tmp_path_factory) -> Path:
    """ckpt.pt of a TINY_MODEL trained for 100 steps on 400 two-sentence stories laid out as the pipeline
    lays out shards (BOS before each story, no EOS), so that greedy decoding of "Once upon a time" writes
    one such story and then predicts BOS, the end of the story. 5 to 20 s on one core."""
    import torch
    from tinyllm.checkpoint import save_checkpoint, weights_checkpoint
    from tinyllm.tokenizer import Tokenizer

    tokenizer = Tokenizer(small_tokenizer)
    rng = random.Random(0)
    ids = [t for _ in range(400) for t in tokenizer.encode(short_story(rng), bos=True, eos=False)]
    ids = torch.tensor(ids)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_random_model(seed=0).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        seq = TINY_MODEL["max_seq_len"]
        for _ in range(100):
            starts = torch.randint(0, len(ids) - seq - 1, (16,), generator=generator).tolist()
            x = torch.stack([ids[s : s + seq] for s in starts])
            y = torch.stack([ids[s + 1 : s + seq + 1] for s in starts])
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 1.0, f"the story model did not learn its stories (loss {loss.item():.2f})"
    path = tmp_path_factory.mktemp("story_model") / "ckpt.pt"
    save_checkpoint(weights_checkpoint(model.eval(), config=None, iter_num=100), path)
    return path


# --- training on tiny data, for the training and data-parallel tests ---------------------------------------


def build_tiny_data(shards_dir: Path, folder: Path, vocab_size: int = 512) -> tuple[Path, Path]:
    """A small tokenizer and pretokenized val/train shards (data00.bin, data01.bin) from the test stories."""
    from tinyllm.shards import load_stories
    from tinyllm.tokenizer import Tokenizer, train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    stories = {split: load_stories(shards_dir / f"data{split:02d}.json")[:limit]
               for split, limit in ((0, 150), (1, 600))}  # fmt: skip
    text = folder / "tiny.txt"
    text.write_text("".join(story + "\n" for story in stories[0] + stories[1]), encoding="utf-8")
    model = train_tokenizer(text, folder / "tok", vocab_size, input_sentence_size=0, quiet=True)
    tokenizer = Tokenizer(model)
    for split, texts in stories.items():
        ids = tokenizer.encode_concat(texts, bos=True, eos=False)
        ids.astype("<u2").tofile(folder / f"data{split:02d}.bin")
    return folder, model


def tiny_config(**train_overrides) -> dict:
    """The validated model and train sections of a tiny training run, for tinyllm.train.train(config=...):
    TINY_MODEL with dropout (so resuming must restore its random stream too), 2 x 64 tokens twice per step
    (TINY_STEP_TOKENS), 24 steps with an evaluation and a state checkpoint every 8."""
    from tinyllm.config import validate_config

    config = validate_config({
        "model": {**TINY_MODEL_SECTION, "dropout": 0.1},
        "train": {"batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 3e-3, "max_iters": 24,
                  "warmup_iters": 4, "eval_interval": 8, "eval_iters": 2, "log_interval": 2, "device": "cpu",
                  "dtype": "bfloat16", **train_overrides},
    })  # fmt: skip
    return {"model": config["model"], "train": config["train"]}


# Tokens of one optimizer step of tiny_config(): batch_size x max_seq_len x gradient_accumulation_steps.
TINY_STEP_TOKENS = 2 * TINY_MODEL["max_seq_len"] * 2


def run_settings(config: dict, data: tuple[Path, Path], out: Path) -> dict:
    """train()'s keyword arguments for config on data, every output under out."""
    bin_dir, tokenizer = data
    return {
        "config": config, "shards": str(bin_dir), "tokenizer_model": str(tokenizer),
        "state_dir": str(out / "state"), "ckpt_path": str(out / "ckpt.pt"), "best_path": str(out / "best.pt"),
        "metrics_path": str(out / "metrics.csv"), "plot_path": str(out / "loss.png"), "threads": 1,
    }  # fmt: skip


@pytest.fixture(scope="session")
def tiny_data(shards_dir, tmp_path_factory):
    """build_tiny_data once per test session: (folder of data00.bin/data01.bin, tokenizer model)."""
    return build_tiny_data(shards_dir, tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def finished_run(tiny_data, tmp_path_factory):
    """One uninterrupted training run of tiny_config() on tiny_data, in this process: (its output folder,
    the summary train returned). Tests that resume, change or damage it work on copies."""
    from tinyllm import train as training

    out = tmp_path_factory.mktemp("finished_run")
    return out, training.train(**run_settings(tiny_config(), tiny_data, out))


def read_csv_rows(path: Path) -> list[dict]:
    """A CSV file's rows (metrics.csv), every cell the text written."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stop_at_step(monkeypatch, step: int, signal_name: str = "SIGTERM") -> None:
    """Training, in this process, sees signal_name requested at its step-th step (the loop asks once a
    step), as if the signal had come then: it saves its state there and raises TrainingStopped."""
    from tinyllm import train as training

    calls = {"n": 0}

    def requested(self, world, at_log_step):
        calls["n"] += 1
        return signal_name if calls["n"] == step else None

    monkeypatch.setattr(training.StopSignals, "requested", requested)


def both_rank_streams(bin_dir, split, batch_size, max_seq_len, device, seed=1337, **_):
    """iter_batches' stand-in for one process that sees what 2 data-parallel ranks see: per optimizer step
    of 4 micro-batches, rank 0's two, then rank 1's two (each rank's own stream of seed, rank, batch)."""
    from tinyllm.batches import iter_batches

    streams = [iter_batches(bin_dir, split, batch_size, max_seq_len, device, seed=seed, rank=r, world_size=2)
               for r in range(2)]  # fmt: skip
    while True:
        yield from (next(stream) for stream in (streams[0], streams[0], streams[1], streams[1]))


@pytest.fixture
def small_disk(tmp_path, request):
    """A 3 MB tmpfs, or as large as the test's indirect parameter says ("8m"); root only: where mounting is
    not allowed, the test is skipped."""
    import shutil
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    size = getattr(request, "param", "3m")
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


# --- tinyllm serve in a thread, for the server and page tests -----------------------------------------------

SERVE_TIMEOUT_S = 60  # every wait of the server tests is bounded


# tinyllm.completions_api.Limits' values for the tests (a dict: this module imports no tinyllm at load, so
# that tests/gpu's collection needs nothing but the standard library and pytest).
SERVE_LIMITS = {"max_batch": 4, "max_queue": 6, "max_tokens": 300, "max_choices": 4}


class RunningServer:
    """A tinyllm server on 127.0.0.1 (a free port) in a thread of this process."""

    def __init__(self, checkpoint, tokenizer, api_key=None, int8=False, limits=None):
        import threading

        from tinyllm.cli import SAMPLE_DEFAULTS
        from tinyllm.completions_api import Limits
        from tinyllm.serve import listen, load_service, uvicorn_server

        limits = limits or Limits(**SERVE_LIMITS)
        self.service = load_service(checkpoint, SAMPLE_DEFAULTS, tokenizer, "cpu", int8, limits, api_key)
        self.socket = listen("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn_server(self.service)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> RunningServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(SERVE_TIMEOUT_S)
        assert not self.thread.is_alive()

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict | bytes]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SERVE_TIMEOUT_S)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(raw) if is_json else raw


def wait_until(condition, what: str, timeout: float = 5.0) -> float:
    """Poll condition until it holds; fail the test after timeout seconds."""
    import time

    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.005)
    return time.monotonic() - start
