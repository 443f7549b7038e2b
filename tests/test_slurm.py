"""The tiny pipeline through a real one-node SLURM cluster, with the SLURM profile, as a cluster user runs it.

The module fixture starts slurmctld, slurmd and munge on this machine (.ci/slurm-up.sh, which installs
them with apt where missing) and stops them by their pid files afterwards (.ci/slurm-down.sh). The node
offers one fake GPU, so the train job's `--gpus=1` is really scheduled and sets CUDA_VISIBLE_DEVICES; torch
finds no CUDA device behind it and trains on the CPU (train.device: cpu in the tiny config anyway).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_pipeline import REPO, SNAKEFILE, SNAKEMAKE, tail, write_tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_UP = REPO / ".ci" / "slurm-up.sh"
SLURM_DOWN = REPO / ".ci" / "slurm-down.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
# slurm-up.sh records here what it started; a cluster that it did not start is used but left running.
STARTED_BY_US = Path(os.environ.get("SLURM_CI_STATE", "/run/tinyllm-slurm")) / "started"
RUN_TIMEOUT = 540  # seconds; the run takes about 2-3 minutes on two loaded cores
# Rules the Snakefile keeps on the submit host (localrules): they must not become SLURM jobs.
LOCAL_RULES = ("download", "extract", "tiny_txt", "report_summary", "report_config")


def cannot_run_slurm() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munge needs root"
    installed = all(shutil.which(d) for d in ("slurmctld", "slurmd", "munged"))
    if not installed and shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    if shutil.which("timeout") is None:
        return "coreutils' timeout is missing"
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


def test_tiny_pipeline_on_slurm(slurm_cluster, shards_dir, tmp_path):
    config_path = write_tiny_config(shards_dir, tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()

    # SIGINT on timeout: the SLURM plugin ignores SIGTERM; SIGINT makes Snakemake cancel its jobs.
    cmd = ["timeout", "-s", "INT", "-k", "10", str(RUN_TIMEOUT), SNAKEMAKE]
    cmd += ["--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(config_path)]
    cmd += ["--workflow-profile", str(SLURM_PROFILE), "--jobs", "4", "--verbose"]
    # The test node has few cores (rules ask for up to 8 threads); polling every second instead of the
    # plugin's 40 s keeps the run to minutes.
    cmd += ["--max-threads", str(os.cpu_count() or 1)]
    # The profile's 16 GB for training is a cluster's size, more than a small test node may have.
    cmd += ["--set-resources", "train:mem_mb=2000", "train:runtime=30"]
    cmd += ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]
    start = time.monotonic()
    run = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT + 60)
    seconds = time.monotonic() - start
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"exit {run.returncode} after {seconds:.0f} s:\n{tail(output, 12000)}"
    print(f"tiny pipeline on SLURM: {seconds:.0f} s")

    for path in ("results/train/ckpt.pt", "results/samples.txt", "results/export/model.bin"):
        assert (workdir / path).is_file(), f"{path} missing after the SLURM run"

    # The plugin's sbatch calls (logged with --verbose) by rule, from `--comment rule_<name>[_wildcards_..]`.
    submissions: dict[str, list[str]] = {}
    for line in output.splitlines():
        if "sbatch call:" in line and (m := re.search(r"--comment rule_(\w+?)(?:_wildcards_\S*)?\s", line)):
            submissions.setdefault(m.group(1), []).append(line)
    assert {"tokenizer", "pretokenize", "train", "sample", "export_runc", "export_hf"} <= set(submissions), (
        f"rules submitted to SLURM: {sorted(submissions)}"
    )
    assert not set(LOCAL_RULES) & set(submissions), f"local rules went to SLURM: {sorted(submissions)}"
    train_call = submissions["train"][0]
    assert "--gpus=1" in train_call, train_call
    assert re.search(r"--cpus-per-task=\d+", train_call), train_call

    # SLURM gave the job the GPU (scontrol keeps finished jobs for MinJobAge = 300 s) ...
    train_logs = list((workdir / ".snakemake/slurm_logs/rule_train").glob("*.log"))
    assert train_logs, "no SLURM log for the train job (profiles/slurm keeps successful logs)"
    job_id = train_logs[0].stem
    show = ["scontrol", "show", "job", "-d", job_id]
    job = subprocess.run(show, capture_output=True, text=True, timeout=30)
    assert re.search(r"gres[:/]gpu[:=](\w+:)?1", job.stdout), f"train job {job_id}:\n{job.stdout}"
    # ... and the training script ran with it visible.
    train_log = (workdir / "logs/train/train.log").read_text()
    assert re.search(r"(?i)cuda_visible_devices\W+0\b", train_log), (
        f"the train log does not show CUDA_VISIBLE_DEVICES=0:\n{train_log[:3000]}"
    )
