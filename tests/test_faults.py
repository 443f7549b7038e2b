"""The fault suite: every fault a user can make ends in one line that names the file, the line or the key, and
loses nothing already produced.

One test (or one parametrized test) per row of issue 18, each with the fault, the line the user sees and the
proof that the earlier outputs and the training state are intact. Disk cases run on real filesystems (a
small tmpfs, a read-only bind mount: root only, skipped elsewhere), signal cases on real processes.
README.md's "What happens when" table lists the same faults.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    SNAKEFILE,
    make_random_model,
    run_snakemake,
    tail,
    write_tiny_config,
)

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


def copy_workflow(dest: Path) -> Path:
    """The workflow (Snakefile, config.yaml, rules, scripts, lib, envs, profiles) copied: its Snakefile."""
    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "workflow", "envs", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest / "Snakefile"


def failed_run(workdir: Path, *args: str, configfiles=(), snakefile: Path = SNAKEFILE) -> str:
    """A real (not dry) `snakemake --cores 1` that must fail; its console, stdout and stderr together."""
    out = run_snakemake(
        workdir, "--cores", "1", *args, configfiles=configfiles, snakefile=snakefile, check=False
    )
    console = out.stdout + out.stderr
    assert out.returncode != 0, f"the run succeeded:\n{tail(console)}"
    assert "Traceback" not in console, tail(console)
    return console


# --- 9. temporaries a killed writer left ------------------------------------------------------------------

WRITER = """
import sys, time
sys.path.insert(0, {lib!r})
from tinyllm.files import atomic_output
with atomic_output({path!r}) as f:
    f.write(b"x" * 1_000_000)
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def start_writer(path: Path) -> subprocess.Popen:
    """A process midway through writing path with atomic_output (its temporary written, not renamed)."""
    code = WRITER.format(lib=str(REPO / "workflow/lib"), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    return proc


def test_a_killed_writers_temporary_goes_and_a_live_writers_stays(tmp_path):
    from tinyllm.files import remove_stale_temporaries

    (tmp_path / "state.pt").write_bytes(b"the last good state")
    (tmp_path / ".notes.tmp").write_bytes(b"not ours")  # not atomic_path's naming
    killed = start_writer(tmp_path / "state.pt")
    killed.send_signal(signal.SIGKILL)  # as in the middle of a state save
    killed.wait()
    live = start_writer(tmp_path / "best.pt")
    try:
        temporaries = sorted(p.name for p in tmp_path.glob(".*.tmp") if p.name != ".notes.tmp")
        assert [name.split(".")[1] for name in temporaries] == ["best", "state"]
        removed = remove_stale_temporaries(tmp_path)
        assert [(p.name.split(".")[1], size) for p, size in removed] == [("state", 1_000_000)]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [".notes.tmp", "state.pt", next(n for n in temporaries if n.startswith(".best.pt."))]
        )
        assert (tmp_path / "state.pt").read_bytes() == b"the last good state"
    finally:
        live.kill()
        live.wait()


# --- 10. filesystem faults ----------------------------------------------------------------------------------


def test_a_full_disk_during_the_gguf_export_names_the_file_and_keeps_the_old_one(small_disk, small_tokenizer):
    """gguf writes tensors with numpy's tofile, whose short write used to be "32768 requested and 31608
    written": no file named, no word of the disk."""
    from tinyllm.errors import DiskFullError
    from tinyllm.export_gguf import export_gguf

    path = small_disk / "model.gguf"
    path.write_bytes(b"the earlier export")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - 200_000))
    with pytest.raises(DiskFullError) as caught:
        export_gguf(make_random_model(vocab_size=512), small_tokenizer, path)
    assert str(caught.value) == f"no space left on device while writing {path}"
    assert path.read_bytes() == b"the earlier export"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "model.gguf"]


# --- 11. tinyllm sample with a damaged tokenizer or a foreign model -----------------------------------------


@pytest.mark.parametrize("kind", ["run.c model.bin", "Hugging Face folder"])
def test_sample_given_a_foreign_model_says_tinyllm_import_converts_it(
    kind, small_tokenizer, tmp_path, capsys
):
    """Used to be a torch mmap error (model.bin) or "run snakemake first" (a folder)."""
    from tinyllm import cli
    from tinyllm.export_hf import export_hf
    from tinyllm.export_runc import export_runc

    model = make_random_model()
    if kind == "run.c model.bin":
        source, words = export_runc(model, tmp_path / "model.bin"), "a llama2.c run.c model.bin"
    else:
        source, words = export_hf(model, small_tokenizer, tmp_path / "hf"), "a Hugging Face model folder"
    before = tree_digest(tmp_path)
    assert cli.main(["sample", "--checkpoint", str(source), "--tokenizer", str(small_tokenizer)]) == 2
    assert capsys.readouterr().err == (
        f"tinyllm sample: {source} is {words}, a foreign format: convert it with "
        f"`tinyllm import {source} model.pt`, then pass model.pt\n"
    )
    assert tree_digest(tmp_path) == before


def test_sample_with_a_damaged_tokenizer_is_one_line(small_tokenizer, tmp_path, capsys):
    """Used to be SentencePiece's 25-line traceback."""
    from tinyllm import cli
    from tinyllm.checkpoint import save_checkpoint, weights_checkpoint

    checkpoint = tmp_path / "ckpt.pt"
    save_checkpoint(weights_checkpoint(make_random_model(), config=None), checkpoint)
    damaged = tmp_path / "tok512.model"
    damaged.write_bytes(small_tokenizer.read_bytes()[:1000])  # cut short, as by a full disk or a bad copy
    assert cli.main(["sample", "--checkpoint", str(checkpoint), "--tokenizer", str(damaged)]) == 2
    assert capsys.readouterr().err == (
        f"tinyllm sample: tokenizer {damaged} is not a readable SentencePiece model (damaged, or another "
        "format): pass the model's own tokenizer; delete a damaged one of the pipeline's and rerun "
        "snakemake\n"
    )


# --- 12. tinyllm import into a folder ---------------------------------------------------------------------


def test_import_into_an_existing_folder_is_one_line(tmp_path, capsys):
    from tinyllm import cli
    from tinyllm.export_runc import export_runc

    source = tmp_path / "model.bin"
    export_runc(make_random_model(), source)
    dest = tmp_path / "imported"
    dest.mkdir()
    (dest / "kept.txt").write_text("already here")
    assert cli.main(["import", str(source), str(dest)]) == 2
    err = capsys.readouterr().err
    example = dest / "model.pt"
    assert err == f"tinyllm import: {dest} is a folder: name the checkpoint file to write (e.g. {example})\n"
    assert [p.name for p in dest.iterdir()] == ["kept.txt"]


# --- end to end: a finished tiny run, then faults on copies of it -------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shards_dir):
    """The tiny config run through the whole DAG once: (workdir, config)."""
    root = tmp_path_factory.mktemp("faults")
    config = write_tiny_config(shards_dir, root)
    workdir = root / "run"
    workdir.mkdir()
    run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", configfiles=(config,), timeout=900)
    return workdir, config


def copy_run(finished, dest: Path) -> Path:
    shutil.copytree(finished[0], dest, symlinks=True)
    return dest


@pytest.mark.slow
def test_a_file_where_the_export_folder_belongs_is_one_line(finished, tmp_path):
    """results/export as a file used to end in Snakemake's 60-line traceback."""
    workdir = copy_run(finished, tmp_path / "run")
    shutil.rmtree(workdir / "results/export")
    (workdir / "results/export").write_text("a file of the user's")
    before = tree_digest(workdir / "results")
    console = failed_run(workdir, configfiles=(finished[1],))
    assert re.search(
        r"cannot write results/export/\S+: results/export is a file where a folder belongs: move or delete",
        console,
    ), tail(console)
    assert tree_digest(workdir / "results") == before


@pytest.fixture
def read_only(tmp_path):
    """Bind-mounts folders read-only (root only); unmounts them afterwards."""
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


@pytest.mark.slow
def test_a_read_only_results_folder_is_one_line(finished, tmp_path, read_only):
    workdir = copy_run(finished, tmp_path / "run")
    (workdir / "results/samples.txt").unlink()  # something to redo
    before = tree_digest(workdir / "results")
    read_only(workdir / "results")
    console = failed_run(workdir, configfiles=(finished[1],))
    assert "cannot write results/samples.txt: results is on a read-only filesystem" in console, tail(console)
    assert tree_digest(workdir / "results") == before


@pytest.mark.slow
def test_a_killed_exports_temporary_goes_when_the_export_is_redone(finished, tmp_path):
    workdir = copy_run(finished, tmp_path / "run")
    export = workdir / "results/export"
    (export / "model.gguf").unlink()
    leftover = export / ".model.gguf.k1ll3d00.tmp"  # what a SIGKILL in the middle of the export leaves
    leftover.write_bytes(b"\0" * 4096)
    run_snakemake(workdir, "--cores", "1", "results/export/model.gguf", configfiles=(finished[1],))
    assert not leftover.exists() and (export / "model.gguf").stat().st_size > 0
