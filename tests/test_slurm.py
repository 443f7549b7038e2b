"""The tiny pipeline through a real one-node SLURM cluster, with the SLURM profile, as a cluster user runs it.

The module fixture starts slurmctld, slurmd and munge on this machine (.ci/slurm-up.sh, which installs
them with apt where missing) and stops them by their pid files afterwards (.ci/slurm-down.sh). The node
offers one fake GPU, so the train job's `--gpus=1` is really scheduled and sets CUDA_VISIBLE_DEVICES; torch
finds no CUDA device behind it and trains on the CPU (train.device: cpu in the tiny config anyway).

Midway through training the run gets what SLURM sends ahead of a time limit (profiles/slurm asks for
`--signal=TERM@120`): `scancel --signal=TERM` on the train job. Training saves its state and fails the job,
and the profile's one retry resumes it. What the tests check comes from files SLURM and Snakemake write
(the jobs' SLURM logs, the rule logs, the outputs) and from `scontrol show job`, not from console output.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, SNAKEFILE, SNAKEMAKE, stop_group, tail, write_tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_UP = REPO / ".ci" / "slurm-up.sh"
SLURM_DOWN = REPO / ".ci" / "slurm-down.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
# slurm-up.sh records here what it started; a cluster that it did not start is used but left running.
STARTED_BY_US = Path(os.environ.get("SLURM_CI_STATE", "/run/tinyllm-slurm")) / "started"
RUN_TIMEOUT = 600  # seconds; the run takes about 3-4 minutes on two loaded cores, the retried train included
# Rules the Snakefile keeps on the submit host (localrules): they must not become SLURM jobs.
LOCAL_RULES = ("download", "tiny_txt", "report_summary", "report_config")
# Long enough that the train job is surely midway when it gets SIGTERM, short enough for the retry to finish.
# (The tiny model trains about 40 steps a second on two cores: 200 steps could end before the signal came.)
TRAIN = {"max_iters": 600, "eval_interval": 300, "log_interval": 10}


def cannot_run_slurm() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munge needs root"
    installed = all(shutil.which(d) for d in ("slurmctld", "slurmd", "munged"))
    if not installed and shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def cluster_is_up() -> bool:
    """A cluster is already running here with an idle node that has a GPU (someone else's: leave it be)."""
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T %G"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(
        line.split()[0] == "idle" and "gpu" in line for line in out.stdout.splitlines() if line.strip()
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = cannot_run_slurm()
    if reason:
        pytest.skip(reason)
    if cluster_is_up() and not STARTED_BY_US.exists():
        yield "existing"
        return
    try:
        up = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, f".ci/slurm-up.sh failed:\n{up.stdout}\n{up.stderr}"
        yield "started"
    finally:
        down = subprocess.run([str(SLURM_DOWN)], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, f".ci/slurm-down.sh failed:\n{down.stdout}\n{down.stderr}"


def running_train_job() -> str | None:
    """The id of the running SLURM job of rule train (the plugin comments each job with rule_<name>)."""
    for line in slurm_command("squeue", "-h", "-o", "%i %T %k").splitlines():
        job_id, state, comment = (line.split() + ["", ""])[:3]
        if state == "RUNNING" and comment == "rule_train":
            return job_id
    return None


def slurm_command(*args: str) -> str:
    """The stdout of a SLURM client command (squeue, scontrol, scancel), which must succeed."""
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
    return out.stdout


def scontrol_job(job_id: str) -> str:
    """`scontrol show job -d`: SLURM keeps a finished job there for MinJobAge (300 s in .ci/slurm-up.sh)."""
    return slurm_command("scontrol", "show", "job", "-d", job_id)


def profile_set_resources(**overrides: dict) -> list[str]:
    """profiles/slurm's set-resources as RULE:RESOURCE=VALUE arguments, with some values replaced."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    resources = {rule: dict(values) for rule, values in profile["set-resources"].items()}
    for rule, values in overrides.items():
        resources.setdefault(rule, {}).update(values)
    return [f"{rule}:{key}={value}" for rule, values in resources.items() for key, value in values.items()]


@dataclass
class SlurmRun:
    workdir: Path
    config: dict
    seconds: float
    terminated_job: str  # the train job that got SIGTERM


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, shards_dir, tmp_path_factory) -> SlurmRun:
    """The tiny pipeline with the SLURM profile; its first train job gets SIGTERM once training runs."""
    root = tmp_path_factory.mktemp("slurm")
    config_path = write_tiny_config(shards_dir, root, train=TRAIN)
    workdir = root / "run"
    workdir.mkdir()
    cmd = [*SNAKEMAKE, "--snakefile", str(SNAKEFILE), "--directory", str(workdir)]
    cmd += ["--configfile", str(config_path), "--workflow-profile", str(SLURM_PROFILE), "--jobs", "4"]
    # The test node has few cores (rules ask for up to 8 threads); polling every second instead of the
    # plugin's 40 s keeps the run to minutes.
    cmd += ["--max-threads", str(os.cpu_count() or 1)]
    # The profile's 16 GB for training is a cluster's size, more than a small test node may have. (A
    # --set-resources on the command line replaces the profile's whole list, so the rest is passed on.)
    cmd += ["--set-resources", *profile_set_resources(train={"mem_mb": 2000, "runtime": 30})]
    cmd += ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]
    console = root / "console.log"
    train_log = workdir / "logs/train/train.log"
    start = time.monotonic()
    with open(console, "w") as out:
        # Its own session, so that a timeout can stop it with SIGINT: Snakemake then cancels its SLURM jobs.
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=out, start_new_session=True)

    def output() -> str:
        return tail(console.read_text(), 12000)

    try:
        # The loop runs, its signal handlers in place, once it projects the run's length (after its first 20
        # timed steps; the initial evaluation comes before the handlers, in training's setup).
        job_id = None
        while job_id is None or not (train_log.is_file() and "projected wall time" in train_log.read_text()):
            assert proc.poll() is None, f"the run ended before train ran:\n{output()}"
            assert time.monotonic() - start < RUN_TIMEOUT, f"train did not start:\n{output()}"
            time.sleep(0.5)
            job_id = running_train_job() or job_id
        slurm_command("scancel", "--signal=TERM", job_id)
        proc.wait(timeout=max(1, RUN_TIMEOUT - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run took over {RUN_TIMEOUT} s:\n{output()}")
    finally:
        if proc.poll() is None:
            stop_group(proc, grace=60)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"exit {proc.returncode} after {seconds:.0f} s:\n{output()}"
    print(f"tiny pipeline on SLURM, train stopped once and resumed: {seconds:.0f} s")
    return SlurmRun(workdir, yaml.safe_load(config_path.read_text()), seconds, job_id)


def slurm_logs(workdir: Path) -> dict[str, list[Path]]:
    """rule -> the SLURM logs of its jobs (.snakemake/slurm_logs/rule_<name>/[<wildcards>/]<jobid>.log)."""
    root = workdir / ".snakemake" / "slurm_logs"

    def job_order(log: Path) -> list[int]:  # <jobid>.log, or <arrayid>_<task>.log for array jobs
        return [int(part) for part in log.stem.split("_") if part.isdigit()]

    logs = {
        path.name.removeprefix("rule_"): sorted(path.rglob("*.log"), key=job_order)
        for path in root.glob("rule_*")
    }
    return {rule: files for rule, files in logs.items() if files}


def test_tiny_pipeline_on_slurm(slurm_run):
    workdir = slurm_run.workdir
    for path in ("results/train/ckpt.pt", "results/samples.txt", "results/export/model.bin"):
        assert (workdir / path).is_file(), f"{path} missing after the SLURM run"

    # Every rule but the local ones ran as SLURM jobs (profiles/slurm keeps the logs of successful jobs).
    submitted = slurm_logs(workdir)
    assert {"tokenizer", "pretokenize", "train", "sample", "export_runc", "export_hf"} <= set(submitted), (
        f"rules submitted to SLURM: {sorted(submitted)}"
    )
    assert not set(LOCAL_RULES) & set(submitted), f"local rules went to SLURM: {sorted(submitted)}"

    # SLURM gave the train job the GPU and the rule's threads ...
    job = scontrol_job(submitted["train"][-1].stem)
    assert re.search(r"gres[:/]gpu[:=](\w+:)?1", job), job
    threads = min(8, os.cpu_count() or 1)  # the rule's threads, capped by --max-threads
    assert re.search(rf"\bCPUs/Task={threads}\b", job), job
    # ... and the training script ran with it visible.
    train_log = (workdir / "logs/train/train.log").read_text()
    assert re.search(r"(?i)cuda_visible_devices\W+0\b", train_log), (
        f"the train log does not show CUDA_VISIBLE_DEVICES=0:\n{train_log[:3000]}"
    )


def test_sigterm_saves_the_state_and_the_retry_resumes(slurm_run):
    """SIGTERM to the train job: training finishes its step, saves, names the iteration and fails the job;
    the profile's retry submits it again, and it resumes from that iteration to the end."""
    workdir = slurm_run.workdir
    train_jobs = slurm_logs(workdir)["train"]
    assert [log.stem for log in train_jobs][:1] == [slurm_run.terminated_job] and len(train_jobs) == 2, (
        f"train's SLURM jobs: {[log.name for log in train_jobs]} (SIGTERM went to {slurm_run.terminated_job})"
    )
    first_job = train_jobs[0].read_text()
    stopped = re.search(r"stopped by SIGTERM at iteration (\d+)", first_job)
    assert stopped, f"the terminated job's SLURM log does not say where it stopped:\n{tail(first_job)}"
    iteration = int(stopped.group(1))
    assert 0 < iteration < TRAIN["max_iters"], iteration

    # The retried job's rule log: it resumed from the state saved at that iteration.
    train_log = (workdir / "logs/train/train.log").read_text()
    assert re.search(rf"resuming from \S+ at iteration {iteration}\b", train_log), tail(train_log)
    checkpoint = torch.load(workdir / "results/train/ckpt.pt", map_location="cpu", weights_only=True)
    assert checkpoint["iter_num"] == TRAIN["max_iters"]
    with open(workdir / "results/train/metrics.csv", newline="") as f:
        logged = [int(row["iter"]) for row in csv.DictReader(f) if row["event"] == "train"]
    assert logged == list(range(TRAIN["log_interval"], TRAIN["max_iters"] + 1, TRAIN["log_interval"])), logged


def test_profile_asks_slurm_for_sigterm_before_the_time_limit():
    """The train job's extra sbatch arguments ask for SIGTERM ahead of its time limit (the path above)."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    extra = profile["set-resources"]["train"]["slurm_extra"]
    signal = re.search(r"--signal=(?:R:)?TERM@(\d+)", extra)
    assert signal, f"train's slurm_extra does not ask for SIGTERM before the time limit: {extra!r}"
    assert int(signal.group(1)) >= 60, f"{signal.group(1)} s is too short to finish a step and save the state"
