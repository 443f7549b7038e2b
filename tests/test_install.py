"""The README's pipeline install as a new user runs it: a fresh virtualenv, `pip install -e '.[workflow]'` and
nothing else, then the whole DAG on the tiny config with that virtualenv's snakemake.

Every module that a rule imports must come with that install; a module that only the test extra brings
(as safetensors once did) fails the export rule here. torch is pinned to the build the test command pins,
whose CPU wheel CI machines carry (an unpinned torch would download a CUDA build of several GB).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_process, write_tiny_config
from tinyllm import paths
from tinyllm.export_runc import read_runc_header, runc_file_size
from tinyllm.foreign import load_foreign_checkpoint
from tinyllm.model import load_model

pytestmark = [pytest.mark.slow, pytest.mark.install]

TORCH_PIN = "torch==2.13.0"  # as in the README's test command


def readme_install_target() -> str:
    """What the README's first command installs: the argument of its `pip install -e`."""
    quickstart = (REPO / "README.md").read_text().split("## Quickstart", 1)[1]
    command = re.search(r"```sh\n(.+?)\n```", quickstart, flags=re.S).group(1)
    return re.search(r"pip install -e '?([^' ]+)'?", command).group(1)


def clone_of_checkout(dest: Path) -> Path:
    """The files a clone of this checkout holds (tracked and new, nothing ignored): no venv, no results."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return run_process(cmd, cwd, timeout, merge_stderr=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, float]:
    """(checkout copy, its fresh virtualenv, seconds the install took)."""
    root = tmp_path_factory.mktemp("install")
    checkout = clone_of_checkout(root / "tinyllm")
    venv = root / "venv"
    start = time.monotonic()
    run([sys.executable, "-m", "venv", str(venv)], cwd=root, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", TORCH_PIN]
    run([*pip, "-e", readme_install_target()], cwd=checkout, timeout=1200)
    return checkout, venv, time.monotonic() - start


def test_the_readme_install_runs_the_whole_dag(installed, shards_dir, tmp_path):
    checkout, venv, install_seconds = installed
    assert readme_install_target() == ".[workflow]"
    config = write_tiny_config(shards_dir, tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    start = time.monotonic()
    cmd = [str(venv / "bin" / "snakemake"), "--snakefile", str(checkout / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", "2", "--resources", "gpu=1", "--configfile", str(config)]
    run(cmd, cwd=workdir, timeout=1200)
    print(f"install {install_seconds:.0f} s, pipeline {time.monotonic() - start:.0f} s", file=sys.stderr)

    def result(path: str) -> Path:
        return workdir / path

    checkpoint = load_model(result(paths.CKPT))
    assert "## prompt 1, sample 1" in result(paths.SAMPLES).read_text()
    header = read_runc_header(result(paths.EXPORT_RUNC))
    assert header["dim"] == checkpoint.args.dim
    assert result(paths.EXPORT_RUNC).stat().st_size == runc_file_size(header)
    # The Hugging Face folder holds our model: read back, its weights are the checkpoint's.
    hf = load_foreign_checkpoint(result(paths.EXPORT_HF))
    assert sorted(p.name for p in result(paths.EXPORT_HF).iterdir()) == sorted(paths.HF_EXPORT_FILES)
    assert all(torch.equal(hf.state_dict[name], t) for name, t in checkpoint.state_dict().items())
    gguf = pytest.importorskip("gguf")
    embedding = {t.name: t for t in gguf.GGUFReader(result(paths.EXPORT_GGUF)).tensors}["token_embd.weight"]
    np.testing.assert_array_equal(embedding.data, checkpoint.tok_embeddings.weight.detach().numpy())
    assert result(f"{paths.REPORT_DIR}/summary.html").stat().st_size > 0
