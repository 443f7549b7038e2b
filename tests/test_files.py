"""tinyllm.files.atomic_output: whole files or none, and a full disk in one line with the old file kept."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch
from tinyllm.errors import DiskFullError
from tinyllm.files import atomic_output, check_writable, remove_stale_temporaries


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


def test_a_read_only_folder_is_one_line_and_its_files_stay(tmp_path):
    from tinyllm.errors import OutputError

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "samples.txt").write_text("earlier samples")
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only bind mount needs root")
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        for path in (folder / "samples.txt", folder / "export/model.bin"):
            with pytest.raises(OutputError) as caught, atomic_output(path, "w") as f:
                f.write("new")
            assert str(caught.value) == f"cannot write {path}: {folder} is on a read-only filesystem"
            with pytest.raises(OutputError, match=f"{folder} is on a read-only filesystem"):
                check_writable(path)
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert [p.name for p in folder.iterdir()] == ["samples.txt"]
    assert (folder / "samples.txt").read_text() == "earlier samples"


def test_stale_temporaries_are_only_atomic_paths_and_only_those_asked_for(tmp_path):
    kept = [".state.pt.tmp", "state.pt", ".state.pt.abc.tmp", "notes.k1ll3d00.tmp", ".best.pt.k1ll3d00.tmp"]
    for name in kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".state.pt.k1ll3d00.tmp").write_bytes(b"x" * 10)
    removed = remove_stale_temporaries(tmp_path, names={"state.pt"})
    assert removed == [(tmp_path / ".state.pt.k1ll3d00.tmp", 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temporaries(tmp_path / "absent") == []
    assert [p.name for p, _ in remove_stale_temporaries(tmp_path)] == [".best.pt.k1ll3d00.tmp"]


def test_a_temporary_is_locked_while_written_and_the_lock_goes_with_it(tmp_path):
    import fcntl

    with atomic_output(tmp_path / "out.bin") as f:
        (temporary,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin.")]
        fd = os.open(temporary, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert remove_stale_temporaries(tmp_path) == []
        finally:
            os.close(fd)
        f.write(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"whole"


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
