"""What the fault tests share: the proof that nothing was lost (a digest of a folder's files), a run that must
fail with one line, copies of the session's tiny pipeline run, read-only bind mounts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SNAKEFILE, run_snakemake, tail

TRAIN_OUTPUTS = ("ckpt.pt", "best.pt", "metrics.csv", "loss.png")


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under folder: what "nothing lost" compares."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def earlier_outputs(workdir: Path) -> dict[str, str]:
    """A workdir with a trained run's outputs and an export in place (stand-ins: what a config fault must
    not touch), as {relative path: sha256}."""
    for name in TRAIN_OUTPUTS:
        path = workdir / "results/train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"earlier {name}".encode())
    (workdir / "results/train/state").mkdir()
    (workdir / "results/train/state/state.pt").write_bytes(b"earlier training state")
    (workdir / "results/export").mkdir(parents=True)
    (workdir / "results/export/model.bin").write_bytes(b"earlier export")
    return tree_digest(workdir / "results")


def failed_run(workdir: Path, *args: str, configfiles=(), snakefile: Path = SNAKEFILE) -> str:
    """A real (not dry) `snakemake --cores 1` that must fail without a traceback; its console, stdout and
    stderr together."""
    out = run_snakemake(
        workdir, "--cores", "1", *args, configfiles=configfiles, snakefile=snakefile, check=False
    )
    console = out.stdout + out.stderr
    assert out.returncode != 0, f"the run succeeded:\n{tail(console)}"
    assert "Traceback" not in console, tail(console)
    return console


def failed_run_keeping_earlier_outputs(workdir: Path, configfiles=(), snakefile: Path = SNAKEFILE) -> str:
    """failed_run in workdir after earlier_outputs put a run's outputs there, which must all stay as they
    were; the console."""
    workdir.mkdir()
    before = earlier_outputs(workdir)
    console = failed_run(workdir, configfiles=configfiles, snakefile=snakefile)
    assert tree_digest(workdir / "results") == before
    return console


def copy_run(tiny_run, dest: Path) -> Path:
    """A copy of the session's tiny pipeline run (tiny_run.workdir), to damage."""
    shutil.copytree(tiny_run.workdir, dest, symlinks=True)
    return dest


@pytest.fixture
def read_only():
    """Bind-mounts folders read-only (root only, else the test is skipped); unmounts them afterwards."""
    mounted = []

    def mount(folder: Path) -> None:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("a read-only bind mount needs root")
        done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=True)
