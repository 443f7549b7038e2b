"""Output faults: a writer killed midway, a full disk, a read-only folder, a file where a folder belongs (or a
folder where a file belongs), no permission, an export the target format cannot hold. Each is one line naming
the path; the file there before stays whole, and a killed writer's temporary goes at the next start. Disk
cases on a small tmpfs and a read-only bind mount (root only), killed writers as real processes; the
end-to-end cases on copies of the session's tiny pipeline run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_MODEL, make_random_model, run_snakemake, tail
from tinyllm.errors import CheckpointError, DiskFullError
from tinyllm.export_gguf import export_gguf
from tinyllm.export_hf import export_hf
from tinyllm.export_runc import export_runc
from tinyllm.files import atomic_output, check_writable
from tinyllm.model import ModelArgs, Transformer

from .conftest import copy_run, failed_run, tree_digest

# --- writes: whole files or none ------------------------------------------------------------------------


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
    """(issue 18, 9) A SIGKILL in the middle of a state save left its temporary for good."""
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


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output(path, "w") as f:
        f.write("new, half written")
        raise RuntimeError("boom")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_stays(small_disk):
    path = small_disk / "state.pt"
    torch.save({"weights": torch.ones(1000)}, path)
    before = path.read_bytes()
    with pytest.raises(DiskFullError) as caught, atomic_output(path) as f:
        torch.save({"weights": torch.zeros(2_000_000)}, f)  # 8 MB into 3 MB: torch wraps the ENOSPC
    assert str(caught.value) == f"no space left on device while writing {path}"
    assert path.read_bytes() == before and [p.name for p in small_disk.iterdir()] == ["state.pt"]


def test_a_file_where_the_folder_belongs_is_one_line_naming_it(tmp_path):
    from tinyllm.errors import OutputError

    (tmp_path / "export").write_text("a file of the user's")
    for path in (tmp_path / "export/model.bin", tmp_path / "export/hf/config.json"):
        with pytest.raises(OutputError) as caught, atomic_output(path) as f:
            f.write(b"never written")
        blocker = tmp_path / "export"
        line = f"cannot write {path}: {blocker} is a file where a folder belongs: move or delete it"
        assert str(caught.value) == line
        with pytest.raises(OutputError) as checked:
            check_writable(path)
        assert str(checked.value) == line
    assert (tmp_path / "export").read_text() == "a file of the user's"


def test_a_folder_where_the_file_belongs_is_one_line_and_the_folder_stays(tmp_path):
    from tinyllm.errors import OutputError

    (tmp_path / "model.pt").mkdir()
    with pytest.raises(OutputError) as caught, atomic_output(tmp_path / "model.pt") as f:
        f.write(b"weights")
    assert str(caught.value) == (
        f"cannot write {tmp_path / 'model.pt'}: it is a folder where a file belongs: move or delete it"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_read_only_folder_is_one_line_and_its_files_stay(tmp_path, read_only):
    from tinyllm.errors import OutputError

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "samples.txt").write_text("earlier samples")
    read_only(folder)
    for path in (folder / "samples.txt", folder / "export/model.bin"):
        with pytest.raises(OutputError) as caught, atomic_output(path, "w") as f:
            f.write("new")
        assert str(caught.value) == f"cannot write {path}: {folder} is on a read-only filesystem"
        with pytest.raises(OutputError, match=f"{folder} is on a read-only filesystem"):
            check_writable(path)
    assert [p.name for p in folder.iterdir()] == ["samples.txt"]
    assert (folder / "samples.txt").read_text() == "earlier samples"


def test_no_permission_for_the_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    """Root writes anywhere, so the refusal is the one a non-root user gets from mkstemp."""
    import errno
    import tempfile

    from tinyllm.errors import OutputError

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.bin.x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OutputError) as caught, atomic_output(tmp_path / "out.bin") as f:
        f.write(b"never written")
    assert str(caught.value) == f"cannot write {tmp_path / 'out.bin'}: no permission to write in {tmp_path}"


# --- exports: a full disk, what the format cannot hold ------------------------------------------------------


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
        export_gguf(make_random_model(), small_tokenizer, path)
    assert str(caught.value) == f"no space left on device while writing {path}"
    assert path.read_bytes() == b"the earlier export"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "model.gguf"]


def test_export_runc_refuses_an_epsilon_run_c_does_not_use(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**TINY_MODEL, norm_eps=1e-6))
    with pytest.raises(CheckpointError, match="hardcodes RMSNorm eps"):
        export_runc(model, tmp_path / "model.bin")
    assert not (tmp_path / "model.bin").exists()


@pytest.mark.parametrize("export", [export_hf, export_gguf], ids=["hf", "gguf"])
def test_an_export_refuses_a_tokenizer_of_another_size(export, tmp_path, small_tokenizer):
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**{**TINY_MODEL, "vocab_size": 600}))  # the tokenizer has 512
    with pytest.raises(CheckpointError, match="has 512 tokens but the model has vocab_size 600"):
        export(model, small_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- in the workflow, on a copy of the session's tiny run (issue 18, 10) ------------------------------------


@pytest.mark.slow
def test_a_file_where_the_export_folder_belongs_is_one_line(tiny_run, tmp_path):
    """results/export as a file used to end in Snakemake's 60-line traceback."""
    workdir = copy_run(tiny_run, tmp_path / "run")
    shutil.rmtree(workdir / "results/export")
    (workdir / "results/export").write_text("a file of the user's")
    before = tree_digest(workdir / "results")
    console = failed_run(workdir, configfiles=(tiny_run.config,))
    assert re.search(
        r"cannot write results/export/\S+: results/export is a file where a folder belongs: move or delete",
        console,
    ), tail(console)
    assert tree_digest(workdir / "results") == before


@pytest.mark.slow
def test_a_read_only_results_folder_is_one_line(tiny_run, tmp_path, read_only):
    workdir = copy_run(tiny_run, tmp_path / "run")
    (workdir / "results/samples.txt").unlink()  # something to redo
    before = tree_digest(workdir / "results")
    read_only(workdir / "results")
    console = failed_run(workdir, configfiles=(tiny_run.config,))
    assert "cannot write results/samples.txt: results is on a read-only filesystem" in console, tail(console)
    assert tree_digest(workdir / "results") == before


@pytest.mark.slow
def test_a_killed_exports_temporary_goes_when_the_export_is_redone(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "run")
    export = workdir / "results/export"
    (export / "model.gguf").unlink()
    leftover = export / ".model.gguf.k1ll3d00.tmp"  # what a SIGKILL in the middle of the export leaves
    leftover.write_bytes(b"\0" * 4096)
    others = tree_digest(workdir / "results")
    del others[str(leftover.relative_to(workdir / "results"))]
    run_snakemake(workdir, "--cores", "1", "results/export/model.gguf", configfiles=(tiny_run.config,))
    assert not leftover.exists() and (export / "model.gguf").stat().st_size > 0
    after = tree_digest(workdir / "results")
    assert {k: v for k, v in after.items() if k != "export/model.gguf"} == others  # the rest untouched
