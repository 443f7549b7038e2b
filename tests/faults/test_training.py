"""Training's faults: a kill (SIGKILL of the process or of the whole run), a stop signal (to training, to the
data-parallel launcher, to Snakemake alone), a NaN loss, bad or changed shards, init_from of another shape, a
full disk while saving. Each ends in one line (or none for a kill) and keeps the last good state, which the
rerun resumes to end as an uninterrupted run does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CONFIG_RECORD,
    SNAKEFILE,
    SNAKEMAKE,
    TINY_MODEL,
    TRAIN_ONWARD,
    describe,
    dry_run,
    override,
    read_csv_rows,
    run_settings,
    run_snakemake,
    stop_at_step,
    stop_group,
    tail,
    tiny_config,
    write_yaml,
)
from test_ddp import ddp_config
from tinyllm import train as training
from tinyllm.errors import CheckpointError, DataError, DiskFullError, TrainingDiverged, TrainingStopped
from tinyllm.model import Transformer

from .conftest import TRAIN_OUTPUTS, copy_run, tree_digest

LIB_DIR = Path(training.__file__).resolve().parents[1]


# --- a kill: SIGKILL leaves the last state, the rerun resumes it exactly ------------------------------------

CHILD = """
import sys, time
sys.path.insert(0, {lib!r})
import json
from tinyllm import train as training

real_iter_batches = training.iter_batches

def slow_iter_batches(*args, **kwargs):
    # Slow the run down so the parent's SIGKILL lands mid-training, after the first state checkpoint.
    for batch in real_iter_batches(*args, **kwargs):
        time.sleep(0.03)
        yield batch

training.iter_batches = slow_iter_batches
training.train(**json.loads({settings!r}))
"""


def run_child_until_state(settings: dict, tmp_path: Path) -> subprocess.Popen:
    """Start training in a child process, slowed down, and return once its first state checkpoint exists."""
    import json

    child_log = tmp_path / "child.log"
    with open(child_log, "wb") as log:  # a file, not a pipe: a full pipe would stall the child
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(lib=str(LIB_DIR), settings=json.dumps(settings))],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    state, deadline = Path(settings["state_dir"]) / "state.pt", time.monotonic() + 120
    while not state.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"no state checkpoint within 120 s: {child_log.read_text()}")
        time.sleep(0.02)
    return child


@pytest.mark.slow  # training in a child process, killed and resumed: about 4 s
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_data, finished_run, tmp_path):
    settings = run_settings(tiny_config(), tiny_data, tmp_path)
    state = tmp_path / "state" / "state.pt"
    child = run_child_until_state(settings, tmp_path)
    try:
        time.sleep(0.4)  # a few more micro-batches, then kill at an arbitrary point
        assert child.poll() is None, "the run finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    killed_at = torch.load(state, weights_only=True)["iter_num"]
    assert 8 <= killed_at < 24
    assert not (tmp_path / "ckpt.pt").exists()

    summary = training.train(**settings)

    reference_out, reference = finished_run
    resumed = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    uninterrupted = torch.load(reference_out / "ckpt.pt", weights_only=True)["model"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), "resumed weights differ"
    assert summary["val_loss"] == reference["val_loss"]

    def losses(path: Path) -> list[dict]:  # everything but the timings
        timings = ("tokens_per_s", "mfu", "elapsed_s")
        return [{k: v for k, v in row.items() if k not in timings} for row in read_csv_rows(path)]

    assert losses(tmp_path / "metrics.csv") == losses(reference_out / "metrics.csv")


def test_a_temporary_left_by_a_killed_save_is_removed_at_the_next_start(
    tiny_data, finished_run, tmp_path, capsys
):
    reference_out, _ = finished_run
    shutil.copytree(reference_out / "state", tmp_path / "state")
    leftover = tmp_path / "state" / ".state.pt.k1ll3d00.tmp"  # what a SIGKILL in the middle of a save leaves
    leftover.write_bytes(b"\0" * 4096)
    training.train(**run_settings(tiny_config(), tiny_data, tmp_path))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["best.pt", "state.pt"]
    assert f"removed 1 temporary file(s) of 4,096 bytes that a killed run left in {tmp_path / 'state'}" in (
        capsys.readouterr().err
    )
    assert torch.load(tmp_path / "state" / "state.pt", weights_only=True)["iter_num"] == 24  # the last good


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


@pytest.mark.slow
def test_killed_training_is_redone(tiny_run, tmp_path):
    """SIGKILL the run while the train script runs: the next run must redo train, not take its outputs."""
    workdir = copy_run(tiny_run, tmp_path / "run")
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


# --- divergence --------------------------------------------------------------------------------------------


def test_non_finite_loss_stops_naming_the_iteration(tiny_data, tmp_path, monkeypatch):
    real_forward = Transformer.forward
    steps = {"micro": 0}

    def forward_turning_nan(self, tokens, targets=None):
        logits, loss = real_forward(self, tokens, targets)
        if self.training:
            steps["micro"] += 1
            if steps["micro"] > 2 * 10:  # 2 micro-steps per iteration: iteration 11 goes bad
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", forward_turning_nan)
    with pytest.raises(TrainingDiverged) as caught:
        training.train(**run_settings(tiny_config(), tiny_data, tmp_path))
    message = str(caught.value)
    assert "iteration 11" in message and "iteration 8" in message and "\n" not in message
    assert torch.load(tmp_path / "state" / "state.pt", weights_only=True)["iter_num"] == 8
    assert not (tmp_path / "ckpt.pt").exists()


# --- SIGTERM (SLURM's warning before a kill) and SIGINT to training save the state and stop --------------


@pytest.mark.slow  # training in a child process, stopped and resumed: about 4 s
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_state_and_a_rerun_ends_as_an_uninterrupted_run(
    signum, tiny_data, finished_run, tmp_path
):
    settings = run_settings(tiny_config(), tiny_data, tmp_path)
    child = run_child_until_state(settings, tmp_path)
    time.sleep(0.3)  # past the first state checkpoint (iteration 8), between two others
    assert child.poll() is None, "the run finished before the signal"
    child.send_signal(signum)
    assert child.wait(timeout=60) != 0  # Snakemake must see a failed job, so the state stays
    log = (tmp_path / "child.log").read_text()
    name = signal.Signals(signum).name
    stopped_at = torch.load(tmp_path / "state" / "state.pt", weights_only=True)["iter_num"]
    assert f"stopped by {name} at iteration {stopped_at}; rerun to resume" in log
    assert 8 < stopped_at < 24 and stopped_at % 8  # a step between two evaluations was saved
    assert not (tmp_path / "ckpt.pt").exists()

    training.train(**settings)

    reference_out, _ = finished_run
    resumed = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    uninterrupted = torch.load(reference_out / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), "resumed weights differ"


# --- SIGTERM to the data-parallel launcher -----------------------------------------------------------------

LAUNCH_CHILD = """
import json, sys
sys.path.insert(0, {lib!r})
from tinyllm.ddp import launch_distributed
from tinyllm.errors import TrainingStopped
try:
    launch_distributed(json.loads({kwargs!r}), 2, {kwargs_path!r})
except TrainingStopped as err:
    print(err, file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.slow  # torchrun starts two ranks: about 10 s
def test_a_sigterm_to_the_launcher_reaches_every_rank_which_save_and_stop(tiny_data, tmp_path):
    """SIGTERM to the rule's process (SLURM's warning, a forwarded Ctrl-C) goes on through torchrun to both
    ranks: they agree on stopping at a log step, rank 0 saves the state, and the launcher says so in one
    line."""
    import json

    long_run = ddp_config(gradient_accumulation_steps=2, gpus=2, max_iters=3000, eval_interval=20,
                          log_interval=5)  # fmt: skip
    settings = run_settings(long_run, tiny_data, tmp_path)
    settings["threads"] = 2
    launch = tmp_path / "launch.json"
    script = LAUNCH_CHILD.format(lib=str(LIB_DIR), kwargs=json.dumps(settings), kwargs_path=str(launch))
    with open(tmp_path / "child.log", "wb") as log:
        child = subprocess.Popen([sys.executable, "-c", script], stderr=log, stdout=log)
    state, deadline = tmp_path / "state" / "state.pt", time.monotonic() + 120
    try:
        while not state.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert state.exists(), (tmp_path / "child.log").read_text()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=120) == 1
    finally:
        if child.poll() is None:
            child.kill()
    output = (tmp_path / "child.log").read_text()
    assert "data-parallel training stopped by SIGTERM; rerun to resume" in output, output
    saved = torch.load(state, weights_only=True)
    assert 20 <= saved["iter_num"] < 3000 and saved["iter_num"] % 5 == 0  # a log step: where ranks agree
    assert saved["world_size"] == 2 and not (tmp_path / "ckpt.pt").exists()


# --- SIGTERM or SIGINT to a local Snakemake alone (issue 18, 13 and 14) ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_snakemake_alone_stops_training_with_its_line_and_keeps_the_state(
    signum, tiny_run, tmp_path
):
    """Training used to be told nothing and run to its end; Snakemake then exited 1 anyway."""
    workdir = copy_run(tiny_run, tmp_path / "run")
    for name in TRAIN_OUTPUTS:  # training is to run; nothing upstream, whatever edits the tree saw since
        (workdir / "results/train" / name).unlink()
    only_missing = ("--rerun-triggers", "mtime")
    longer = write_yaml(tmp_path / "longer.yaml", {"train": {"max_iters": 150, "eval_interval": 10}})
    configs = (tiny_run.config, longer)
    data_before = tree_digest(workdir / "results/tok512")
    state = workdir / "results/train/state/state.pt"
    cmd = [*SNAKEMAKE, "results/train/ckpt.pt", "--snakefile", str(SNAKEFILE), "--directory", str(workdir)]
    cmd += ["--cores", "2", *only_missing, "--configfile", *map(str, configs)]
    console_path = tmp_path / "console.txt"
    started = time.time()
    with open(console_path, "w") as console_file:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=console_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240
        while not (state.exists() and state.stat().st_mtime > started):  # the new run saved a state
            assert proc.poll() is None, f"the run ended before a state:\n{tail(console_path.read_text())}"
            assert time.monotonic() < deadline, f"no state saved:\n{tail(console_path.read_text())}"
            time.sleep(0.05)
        os.kill(proc.pid, signum)  # Snakemake alone, not its process group
        returncode = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            stop_group(proc)
    console = console_path.read_text()
    name = signal.Signals(signum).name
    found = re.search(rf"error: training stopped by {name} at iteration (\d+); rerun to resume\n", console)
    assert returncode != 0 and found, tail(console)
    stopped_at = int(found[1])
    assert 10 <= stopped_at < 150, "training was not stopped midway"
    assert "Traceback" not in console
    log = (workdir / "logs/train/train.log").read_text()
    assert log.endswith(found[0]) and "Traceback" not in log
    # Nothing lost: the state of the step it stopped at, the data; no half-written outputs.
    assert torch.load(state, weights_only=True)["iter_num"] == stopped_at
    assert tree_digest(workdir / "results/tok512") == data_before
    assert not any((workdir / "results/train" / name).exists() for name in TRAIN_OUTPUTS)
    # The rerun resumes from there and finishes.
    run_snakemake(workdir, "results/train/ckpt.pt", "--cores", "2", *only_missing, configfiles=configs)
    rerun_log = (workdir / "logs/train/train.log").read_text()
    assert f"resuming from results/train/state/state.pt at iteration {stopped_at}" in rerun_log
    assert torch.load(workdir / "results/train/ckpt.pt", weights_only=True)["iter_num"] == 150


# --- inputs: checked before the state is touched; the fingerprint covers their content ---------------------


def copy_data_and_state(tiny_data, finished_run, tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, tokenizer = tiny_data
    data = tmp_path / "data"
    shutil.copytree(bin_dir, data)
    reference_out, _ = finished_run
    shutil.copytree(reference_out / "state", tmp_path / "out" / "state")
    return data, data / Path(tokenizer).name


def test_a_shard_changed_in_place_is_not_resumed_and_the_change_is_named(tiny_data, finished_run, tmp_path,
                                                                          capsys):  # fmt: skip
    data, tokenizer = copy_data_and_state(tiny_data, finished_run, tmp_path)
    shard = data / "data01.bin"
    ids = np.fromfile(shard, dtype="<u2")
    ids[100:110] = ids[200:210]  # other valid tokens, same size
    ids.tofile(shard)
    config = tiny_config(max_iters=8)
    training.train(**run_settings(config, (data, tokenizer), tmp_path / "out"))
    log = capsys.readouterr().err
    assert "data01.bin changed content" in log and "starting fresh" in log
    assert torch.load(tmp_path / "out" / "state" / "stale" / "state.pt", weights_only=True)["iter_num"] == 24


@pytest.mark.parametrize("damage", ["id beyond the vocabulary", "odd size"])
def test_a_bad_shard_fails_naming_it_before_the_state_is_touched(damage, tiny_data, finished_run, tmp_path):
    data, tokenizer = copy_data_and_state(tiny_data, finished_run, tmp_path)
    shard = data / "data01.bin"
    if damage == "odd size":
        with open(shard, "ab") as f:
            f.write(b"\x01")
    else:
        ids = np.fromfile(shard, dtype="<u2")
        ids[50] = 600  # the vocabulary has 512 tokens
        ids.tofile(shard)
    state = tmp_path / "out" / "state" / "state.pt"
    before = state.read_bytes()
    with pytest.raises(DataError) as caught:
        training.train(**run_settings(tiny_config(), (data, tokenizer), tmp_path / "out"))
    message = str(caught.value)
    assert "data01.bin" in message and "\n" not in message
    if damage == "odd size":
        assert "bytes is not a whole number of 2-byte token ids" in message
    else:
        assert "600" in message and "512" in message
    assert state.read_bytes() == before and not (tmp_path / "out" / "state" / "stale").exists()


# --- init_from of another shape, a full disk ------------------------------------------------------------


def test_init_from_a_model_of_another_shape_names_the_first_mismatch(tiny_data, finished_run, tmp_path):
    reference_out, _ = finished_run
    config = tiny_config(init_from=str(reference_out / "ckpt.pt"))
    config["model"] = {**config["model"], "dim": 32}  # another shape than the checkpoint's TINY_MODEL
    with pytest.raises(CheckpointError) as caught:
        training.train(**run_settings(config, tiny_data, tmp_path))
    source, dim = reference_out / "ckpt.pt", TINY_MODEL["dim"]
    assert str(caught.value) == f"train.init_from {source} has model.dim {dim}, the config says 32"
    assert not (tmp_path / "state").exists()


# 8 MB: room for a state of TINY_MODEL (weights and AdamW's moments, 1.6 MB), its temporary and best.pt
@pytest.mark.parametrize("small_disk", ["8m"], indirect=True)
def test_a_full_disk_while_saving_is_one_line_and_the_state_before_stays(tiny_data, small_disk, monkeypatch):
    settings = run_settings(tiny_config(max_iters=16), tiny_data, small_disk)
    with monkeypatch.context() as patch:
        stop_at_step(patch, 12)
        with pytest.raises(TrainingStopped):
            training.train(**settings)
    state, best = small_disk / "state" / "state.pt", small_disk / "state" / "best.pt"
    before = state.read_bytes(), best.read_bytes()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 16384))  # no room for the next state

    with pytest.raises(DiskFullError) as caught:
        training.train(**settings)  # resumes at 12; saving at 16 fails
    expected = [f"no space left on device while writing {path}" for path in (state, best)]
    assert str(caught.value) in expected
    assert (state.read_bytes(), best.read_bytes()) == before
    assert torch.load(state, weights_only=True)["iter_num"] == 12


