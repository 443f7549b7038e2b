"""tinyllm.files: which stale temporaries go, a temporary locked while written. Its faults (a failed write, a
full disk, a read-only folder, paths in the way, no permission) are in tests/faults/test_outputs.py."""

from __future__ import annotations

import os

import pytest
from tinyllm.files import atomic_output, remove_stale_temporaries


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


