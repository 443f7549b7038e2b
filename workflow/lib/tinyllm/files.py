"""Writing files atomically: readers see either the old file or the whole new one, never a torn one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path

from tinyllm.errors import DiskFullError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A temporary path beside path for a writer that opens files by name; on success it is synced and
    renamed over path, on error deleted.

    Readers never see a half-written path, and a crash leaves at most a hidden .tmp file. A full disk,
    however deep in the writer it shows up (torch.save wraps it in its own RuntimeError), ends in one line:
    "no space left on device while writing PATH".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private
        yield Path(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(err):
            raise DiskFullError(f"no space left on device while writing {path}") from None
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", **open_kwargs):
    """Open a temporary file beside path for writing (see atomic_path): path gets it whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def _is_disk_full(err: BaseException) -> bool:
    """ENOSPC anywhere in the chain of causes: torch.save raises its own RuntimeError in the context of it."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def file_digest(path: str | os.PathLike, algorithm: str = "blake2b") -> str:
    """The hex digest of a file's content, or of a folder's (every file in it, by relative name and content).

    blake2b, the default, hashes about 1 GB/s: fingerprinting a run's shards costs little beside training.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        parts = (f"{p.relative_to(path)}:{file_digest(p, algorithm)}" for p in files)
        return hashlib.new(algorithm, "\n".join(parts).encode()).hexdigest()
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
