"""Writing files atomically: readers see either the old file or the whole new one, never a torn one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import tempfile
from pathlib import Path

from tinyllm.errors import DiskFullError, OutputError

# atomic_path's temporaries: ".NAME.XXXXXXXX.tmp" beside NAME (mkstemp's 8 random characters).
TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A temporary path beside path for a writer that opens files by name; on success it is synced and
    renamed over path, on error deleted.

    Readers never see a half-written path, and a crash leaves at most a hidden .tmp file. A full disk,
    however deep in the writer it shows up (torch.save wraps it in its own RuntimeError), ends in one line:
    "no space left on device while writing PATH".
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _locked_temporary(path)
    except OSError as err:
        raise _output_error(err, path) from None
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private
        yield Path(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as err:
        if _is_disk_full(err, path.parent):  # before the temporary goes and frees its space
            Path(tmp).unlink(missing_ok=True)
            raise DiskFullError(f"no space left on device while writing {path}") from None
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and (err.filename in (tmp, str(path)) or err.errno == errno.EROFS):
            raise _output_error(err, path) from None  # our own file operation, not a read in the writer
        raise
    finally:
        os.close(fd)  # releases the lock


def _locked_temporary(path: Path) -> tuple[int, str]:
    """A new temporary for path, locked (flock) for as long as its descriptor stays open.

    The lock tells remove_stale_temporaries that a writer still works on it; a killed writer's lock goes
    with its process. Should a cleaner delete the file between its creation and the lock, another is made.
    """
    while True:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a cleaner holds it and is deleting it
            os.close(fd)
            continue
        except OSError:  # a filesystem without locks: the temporary still works, unlocked
            return fd, tmp
        if _same_file(fd, tmp):
            return fd, tmp
        os.close(fd)


def _same_file(fd: int, name: str | os.PathLike) -> bool:
    try:
        named, held = os.stat(name), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def remove_stale_temporaries(folder: str | os.PathLike, names=None) -> list[tuple[Path, int]]:
    """Delete the temporaries atomic_path left in folder when its process died (SIGKILL, power cut, OOM):
    the hidden `.NAME.XXXXXXXX.tmp` files, up to a whole checkpoint each. Returns [(path, size)] removed.

    names limits it to the temporaries of those outputs (file names in folder). A temporary that a live
    writer holds is kept: atomic_path locks it while writing. Nothing else in folder is touched.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = TEMPORARY.match(entry.name)
        if not match or (names is not None and match["target"] not in names):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to open
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a writer is at work on it
            except OSError:  # no locks on this filesystem: only the owner of the outputs may decide
                if names is None:
                    continue
            if _same_file(fd, entry.path) and entry.is_file(follow_symlinks=False):
                size = os.fstat(fd).st_size
                os.unlink(entry.path)
                removed.append((Path(entry.path), size))
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", **open_kwargs):
    """Open a temporary file beside path for writing (see atomic_path): path gets it whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """ENOSPC anywhere in the chain of causes (torch.save raises its own RuntimeError in the context of it),
    or a short write (numpy's tofile: "32768 requested and 31608 written", no errno) on a filesystem with
    less room left than was asked for."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        short = isinstance(err, OSError) and re.fullmatch(r"(\d+) requested and (\d+) written", str(err))
        if short:
            try:
                room = os.statvfs(folder)
            except OSError:
                return False
            return room.f_bavail * room.f_frsize < int(short[1])
        err = err.__cause__ or err.__context__
    return False


def _output_error(err: OSError, path: Path) -> OSError | OutputError | DiskFullError:
    """One line for what keeps path from being written, naming the path that is in the way; err itself
    where it is none of those."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left on device while writing {path}")
    if err.errno == errno.EROFS:
        return OutputError(f"cannot write {path}: {_existing_folder(path)} is on a read-only filesystem")
    if err.errno in (errno.EACCES, errno.EPERM):
        return OutputError(f"cannot write {path}: no permission to write in {_existing_folder(path)}")
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return OutputError(
            f"cannot write {path}: {blocker} is a file where a folder belongs: move or delete it"
        )
    if err.errno == errno.EISDIR:
        return OutputError(f"cannot write {path}: it is a folder where a file belongs: move or delete it")
    return err


def _existing_folder(path: Path) -> Path:
    return next((p for p in path.parents if p.is_dir()), path.parent)


def check_writable(path: str | os.PathLike) -> None:
    """Raise OutputError (one line) unless path could be written: no file where one of its folders belongs,
    no folder where it belongs, and its nearest existing folder writable. Snakemake creates a job's folders
    and deletes its old outputs before the job starts, with a traceback where either fails: the Snakefile's
    onstart calls this for every output first."""
    path = Path(path)
    for folder in [path, *path.parents]:
        if not os.path.lexists(folder):
            continue
        if folder != path and not folder.is_dir():
            raise OutputError(
                f"cannot write {path}: {folder} is a file where a folder belongs: move or delete it"
            )
        if folder == path:
            continue
        if not os.access(folder, os.W_OK):
            readonly = _is_read_only(folder)
            why = "is on a read-only filesystem" if readonly else "is not writable (permissions)"
            raise OutputError(f"cannot write {path}: {folder} {why}")
        return


def _is_read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
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
