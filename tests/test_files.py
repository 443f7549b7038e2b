"""tinyllm.files.atomic_output: whole files or none, and a full disk in one line with the old file kept."""

from __future__ import annotations

import pytest
import torch
from tinyllm.errors import DiskFullError
from tinyllm.files import atomic_output


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
