"""TinyStories data: download and extract the archive, write tiny.txt, pretokenize shards, serve batches.

Pretokenized shards (`data{NN}.bin`) are flat uint16 little-endian token ids: every story encoded with BOS in
front and no EOS, concatenated (llama2.c's layout). `data00.bin` is the validation split, the rest train.

Training reads them through `PretokDataset` / `iter_batches`, whose batches are a pure function of
(seed, rank, batch index), so a resumed run sees exactly the batches an uninterrupted one would.

Every file is written to a temporary name in its destination folder and renamed into place, so a crash
never leaves a truncated output behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np

from tinyllm.files import atomic_output, current_umask
from tinyllm.logs import log_stderr_to  # noqa: F401 - until data.py is split
from tinyllm.tokenizer import Tokenizer

ARCHIVE_SHARD_NAME = "data{:02d}.json"
UINT16_VOCAB_LIMIT = 1 << 16
RETRY_STATUS = frozenset({408, 425, 429})  # besides every 5xx: the server may answer next time


# --- download ----------------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    """The archive could not be fetched or is not what was asked for. str() is one line naming the URL."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class _Retry(Exception):
    """A transient failure: worth another attempt after a pause."""


def part_path(output: str | os.PathLike) -> Path:
    """Where a download in progress accumulates: beside the output, kept across runs to resume from."""
    output = Path(output)
    return output.with_name(output.name + ".part")


def download_archive(
    url: str,
    output: str | os.PathLike,
    sha256: str | None = None,
    *,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 16,  # small reads: a dropped connection loses at most one partial read
    progress: bool = True,
) -> Path:
    """Fetch the TinyStories archive from an http(s) URL, a file:// URL or a local path into output.

    HTTP downloads stream into `<output>.part` and resume from it with a Range request, so an interrupted
    download (this run or an earlier one) continues where it stopped. Connection errors, timeouts and 5xx
    answers are retried `retries` times with exponential backoff starting at `backoff` seconds; other 4xx
    answers fail at once. The result must match `sha256` when given and be a gzip-compressed tar, or it is
    deleted and DownloadError raised. The output appears only complete and checked (rename).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        part = part_path(output)
        size_confirmed = _download_http(url, part, retries, backoff, timeout, chunk_size, progress)
        # Without a length from the server, only reading the gzip stream to its end shows it is whole.
        _publish_checked(part, output, url, sha256, whole_stream=not size_confirmed)
    elif parsed.scheme in ("file", "") or len(parsed.scheme) == 1:  # one letter: a Windows drive
        source = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
        if not source.is_file():
            raise DownloadError(f"archive not found: {url}")
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)  # copies content only: tmp keeps mkstemp's private mode
            os.chmod(tmp, 0o666 & ~current_umask())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _publish_checked(Path(tmp), output, url, sha256)
    else:
        raise DownloadError(f"unsupported URL scheme {parsed.scheme!r}: {url}")
    return output


def _download_http(url, part: Path, retries, backoff, timeout, chunk_size, progress) -> bool:
    """Fetch url into part, retrying; return whether its size matched the length the server announced."""
    for attempt in range(retries + 1):
        try:
            return _fetch_into(url, part, timeout, chunk_size, progress)
        except _Retry as err:
            if attempt == retries:
                raise DownloadError(f"download failed after {retries + 1} attempts: {err} ({url})") from None
            wait = backoff * 2**attempt
            print(f"download: {err}; retrying in {wait:g}s", file=sys.stderr)
            time.sleep(wait)


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header such as "bytes 100-199/1000" or "bytes */1000"."""
    if not header or not header.startswith("bytes "):
        return None, None
    span, _, total = header[len("bytes ") :].partition("/")
    first = span.partition("-")[0]
    return (int(first) if first.isdigit() else None), (int(total) if total.isdigit() else None)


def _short_reason(err: Exception) -> str:
    """The system's words in a requests error ("[Errno 111] Connection refused"), else the error's type."""
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", str(err))
    return found.group(0).strip() if found else type(err).__name__


def _fetch_into(url: str, part: Path, timeout: float, chunk_size: int, progress: bool) -> bool:
    """One attempt: append what the server sends to part (or restart it); raise _Retry if worth retrying.

    Returns whether the server announced the full size (and part now has exactly that many bytes).
    """
    import requests  # only downloads need it
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    # identity: a transparently decompressed body could be neither resumed by byte offset nor checksummed.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Retry(f"cannot connect ({_short_reason(err)})") from None
    except requests.RequestException as err:
        raise DownloadError(f"{type(err).__name__}: {err} ({url})") from None
    with response:
        status, reason = response.status_code, response.reason
        if status == 416:  # the range starts at or past the end: complete already, or the file changed
            if _content_range(response.headers.get("Content-Range"))[1] == have:
                return True
            part.unlink(missing_ok=True)
            raise _Retry("server refused the resume range (HTTP 416); starting over")
        if status >= 500 or status in RETRY_STATUS:
            raise _Retry(f"HTTP {status} {reason}")
        if status >= 400:
            raise DownloadError(f"HTTP {status} {reason}: {url}")
        if status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != have:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {first} instead of {have}; starting over")
        elif status == 200:  # the whole file: no Range sent, or the server ignored it
            if have:
                print("download: the server ignored the resume request; starting over", file=sys.stderr)
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"unexpected HTTP {status} {reason}: {url}")

        interactive = sys.stderr.isatty()
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name,
                disable=not progress, mininterval=0.5 if interactive else 10.0,
            ) as bar,
        ):  # fmt: skip
            try:
                for chunk in response.iter_content(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as err:
                raise _Retry(f"connection lost after {f.tell()} bytes ({_short_reason(err)})") from None
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise _Retry(f"transfer ended at {size} of {total} bytes")
    return total is not None


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _publish_checked(
    candidate: Path, output: Path, url: str, sha256: str | None, whole_stream: bool = False
) -> None:
    """Rename candidate to output if it passes the checks; otherwise delete it and raise DownloadError.

    The gzip-tar check reads the first member only, or with whole_stream the entire gzip stream (its
    checksum and length trailer reveal a truncated file).
    """
    try:
        if sha256:
            actual = file_sha256(candidate)
            if actual.lower() != sha256.lower():
                raise DownloadError(f"sha256 mismatch: expected {sha256.lower()}, got {actual} for {url}")
        problem = _not_a_gzip_tar(candidate) or (_gzip_stream_problem(candidate) if whole_stream else None)
        if problem:
            raise DownloadError(f"not a gzip-compressed tar archive ({problem}): {url}")
    except BaseException:
        candidate.unlink(missing_ok=True)  # a bad file must neither be used nor resumed
        raise
    os.replace(candidate, output)


def _not_a_gzip_tar(path: Path) -> str | None:
    """Why path is not a gzip-compressed tar, or None. Reads only the first member's header: cheap."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return "no gzip header"
    try:
        with tarfile.open(path, "r:gz") as tar:
            if tar.next() is None:
                return "empty archive"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _gzip_stream_problem(path: Path) -> str | None:
    """Why path's gzip stream is incomplete or corrupt, or None; decompresses it all."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as err:
        return f"{type(err).__name__}: {err}"
    return None


# --- extract -----------------------------------------------------------------------------------------------


class ArchiveError(ValueError):
    """The archive lacks the requested shard or holds it in a form that is not safe to write."""


def shard_file_name(shard: int | str) -> str:
    """ "data07.json" for shard 7 or "07"."""
    return ARCHIVE_SHARD_NAME.format(int(shard))


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith("\\") or (len(member.name) > 1 and member.name[1] == ":"):
        return "absolute path"
    if ".." in path.parts:
        return "path leads outside the archive's folder"
    if member.issym() or member.islnk():
        return f"a link to {member.linkname!r}"
    if member.isdev():
        return "a device or FIFO"
    if not member.isfile():
        return "not a regular file"
    return None


def extract_shard(archive: str | os.PathLike, member_name: str, output: str | os.PathLike) -> Path:
    """Copy one shard file (e.g. "data07.json") out of the gzip tar archive into output, atomically.

    The member must sit at the archive's root (as upstream) or under a single top folder. Only that member's
    bytes are read and they go to output alone, never to a path the archive names; a requested member that is
    a link, device, absolute path or `..` path is refused with ArchiveError, as is a missing one.
    """
    archive, output = Path(archive), Path(output)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # streams: stops at the shard rather than reading the whole archive
            if PurePosixPath(member.name).name != member_name:
                continue
            problem = _unsafe_reason(member)
            if problem:
                raise ArchiveError(f"{archive}: refusing member {member.name!r}: {problem}")
            depth = len([p for p in PurePosixPath(member.name).parts if p != "."])
            if depth > 2:
                continue
            source = tar.extractfile(member)
            with atomic_output(output) as out:
                shutil.copyfileobj(source, out, 1 << 20)
                written = out.tell()
            if written != member.size:
                output.unlink(missing_ok=True)
                raise ArchiveError(f"{archive}: member {member.name!r} is truncated")
            return output
    raise ArchiveError(f"{archive}: no shard {member_name} at the archive's root")


# --- stories, tiny.txt, pretokenize ------------------------------------------------------------------------


class ShardFormatError(ValueError):
    """A shard file is not a JSON array of {"story": str} objects. str() is one line naming file and entry."""


def load_stories(shard_json: str | os.PathLike) -> list[str]:
    """The stories of a TinyStories shard, each stripped of surrounding whitespace (as llama2.c does)."""
    path = Path(shard_json)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except json.JSONDecodeError as err:
        raise ShardFormatError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        raise ShardFormatError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not isinstance(entries, list):
        raise ShardFormatError(
            f'{path}: expected a JSON array of {{"story": ...}} objects, found a {type(entries).__name__}'
        )
    stories = []
    for index, entry in enumerate(entries):
        story = entry.get("story") if isinstance(entry, dict) else None
        if not isinstance(story, str):
            if not isinstance(entry, dict):
                problem = f"is a {type(entry).__name__}, not an object"
            elif "story" not in entry:
                problem = 'has no "story"'
            else:
                problem = f'has a "story" that is a {type(story).__name__}, not a string'
            raise ShardFormatError(f"{path}: entry {index} {problem}")
        stories.append(story.strip())
    return stories


def write_tiny_txt(shard_jsons: Sequence[str | os.PathLike], output: str | os.PathLike) -> int:
    """Write the tokenizer's training text: every story of the shards, stripped, then a newline.

    As llama2.c's train_vocab: newlines inside a story stay, so SentencePiece sees each paragraph as a line.
    Returns the number of stories written.
    """
    count = 0
    with atomic_output(output, "w", encoding="utf-8", newline="\n") as out:
        for shard in shard_jsons:
            for story in load_stories(shard):
                out.write(story + "\n")
                count += 1
    return count


def pretokenize_shard(
    shard_json: str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    output: str | os.PathLike,
    num_threads: int = 1,
) -> int:
    """Encode every story of a shard (stripped, BOS first, no EOS), concatenate, write uint16 LE to output.

    Returns the number of tokens written. A vocabulary too large for uint16 ids is refused.
    """
    tokenizer = Tokenizer(tokenizer_model)
    if tokenizer.n_words > UINT16_VOCAB_LIMIT:
        raise ValueError(
            f"{tokenizer_model}: a vocabulary of {tokenizer.n_words} tokens does not fit uint16 ids "
            f"(at most {UINT16_VOCAB_LIMIT})"
        )
    stories = load_stories(shard_json)
    ids = tokenizer.encode_concat(stories, bos=True, eos=False, num_threads=num_threads)
    with atomic_output(output) as out:
        out.write(ids.astype("<u2").tobytes())
    return len(ids)


VAL_SHARD = "data00.bin"
SPLITS = ("train", "val")


# --- batches for training ----------------------------------------------------------------------------------


def split_shards(bin_dir: str | os.PathLike | Sequence[str | os.PathLike], split: str) -> list[Path]:
    """The pretokenized shards of one split: data00.bin is "val", every other data*.bin is "train".

    bin_dir is a folder (every data*.bin in it) or an explicit list of .bin files, as the train rule passes
    its inputs: a folder may still hold shards of an earlier run with more data.shards.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if isinstance(bin_dir, (str, os.PathLike)):
        where = Path(bin_dir)
        shards = sorted(where.glob("data*.bin"))
    else:
        shards = sorted(Path(p) for p in bin_dir)
        where = shards[0].parent if shards else Path(".")
    chosen = [p for p in shards if (p.name == VAL_SHARD) == (split == "val")]
    if not chosen:
        raise FileNotFoundError(f"{where}: no pretokenized shards for the {split!r} split (data*.bin)")
    return chosen


class PretokDataset:
    """Endless (x, y) windows of max_seq_len tokens from the pretokenized shards of one split: a torch
    IterableDataset (registered as one on construction, so that importing this module, as every data rule
    does, costs no torch import; envs/data.yaml has no torch at all).

    Batch number b (0-based) consists of batch_size windows drawn by a numpy Generator seeded with
    (seed, rank, b): uniform over every window start in the split, so longer shards are sampled more. Items
    come out batch by batch, starting at start_batch; under a DataLoader with num_workers workers, worker w
    produces batches start_batch + w, start_batch + w + num_workers, ... which the DataLoader interleaves back
    into batch order, so the stream does not depend on the worker count.
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike | Sequence[str | os.PathLike],  # a folder of data*.bin or the files
        split: str,
        max_seq_len: int,
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        batch_size: int = 1,
    ):
        from torch.utils.data import IterableDataset

        IterableDataset.register(PretokDataset)  # DataLoader then treats it as iterable-style
        if max_seq_len < 1 or batch_size < 1 or start_batch < 0:
            raise ValueError("max_seq_len and batch_size must be >= 1 and start_batch >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.bin_dir = bin_dir
        self.split = split
        self.max_seq_len = max_seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.batch_size = batch_size
        self.shards = split_shards(self.bin_dir, split)
        lengths = np.array([p.stat().st_size // 2 for p in self.shards], dtype=np.int64)
        short = [p.name for p, n in zip(self.shards, lengths, strict=True) if n < max_seq_len + 1]
        if short:
            raise ValueError(
                f"{self.shards[0].parent}: shard {short[0]} holds fewer than "
                f"max_seq_len + 1 = {max_seq_len + 1} tokens"
            )
        # A window of max_seq_len + 1 tokens can start at 0 .. n - max_seq_len - 1 in a shard of n tokens.
        self._window_starts = lengths - max_seq_len
        self._cumulative = np.cumsum(self._window_starts)
        self._memmaps: list[np.memmap] | None = None  # opened lazily, in each DataLoader worker

    def windows(self, batch: int) -> list[tuple[int, int]]:
        """The (shard index, token offset) of each window in batch number `batch`."""
        rng = np.random.default_rng([self.seed, self.rank, batch])
        picks = rng.integers(0, self._cumulative[-1], size=self.batch_size)
        shard_ids = np.searchsorted(self._cumulative, picks, side="right")
        offsets = picks - (self._cumulative[shard_ids] - self._window_starts[shard_ids])
        return [(int(s), int(o)) for s, o in zip(shard_ids, offsets, strict=True)]

    def batch_arrays(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch number `batch`: int64 x, y of shape (batch_size, max_seq_len), y = x shifted by one."""
        if self._memmaps is None:
            self._memmaps = [np.memmap(p, dtype=np.dtype("<u2"), mode="r") for p in self.shards]
        length = self.max_seq_len + 1
        chunk = np.stack([self._memmaps[s][o : o + length] for s, o in self.windows(batch)]).astype(np.int64)
        return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])

    def batch_indices(self) -> Iterator[int]:
        """Batch numbers this process (or DataLoader worker) produces, in order, forever."""
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = self.start_batch + worker
        while True:
            yield batch
            batch += workers

    def __iter__(self):
        import torch

        for batch in self.batch_indices():
            x, y = self.batch_arrays(batch)
            for row in range(self.batch_size):
                yield torch.from_numpy(x[row]), torch.from_numpy(y[row])


def iter_batches(
    bin_dir: str | os.PathLike | Sequence[str | os.PathLike],
    split: str,
    batch_size: int,
    max_seq_len: int,
    device,
    seed: int = 1337,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    num_workers: int = 0,
):
    """Yield (x, y) int64 tensors of shape (batch_size, max_seq_len) on device, batch start_batch onwards.

    The same batches come out whatever num_workers is (see PretokDataset).
    """
    import torch

    device = torch.device(device)
    on_cuda = device.type == "cuda"
    dataset = PretokDataset(
        bin_dir, split, max_seq_len, seed=seed, rank=rank, world_size=world_size,
        start_batch=start_batch, batch_size=batch_size,
    )  # fmt: skip
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=on_cuda
        )
        batches = iter(loader)
    else:
        batches = (
            (torch.from_numpy(x), torch.from_numpy(y))
            for x, y in map(dataset.batch_arrays, dataset.batch_indices())
        )
    for x, y in batches:
        if on_cuda and num_workers == 0:
            # Pinned host memory lets the copy overlap with compute.
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=on_cuda), y.to(device, non_blocking=on_cuda)
