"""Fetch a file (the TinyStories archive, a corpus source's url) from an http(s) URL, a file:// URL or a local
path; resume, retry, check.

The file appears at its output only whole and checked (renamed into place), so neither a crash nor a bad
download leaves a file that looks done. What is checked depends on the name: a .tar.gz is read to its end
(gzip trailer and tar listing), other compressed files (.gz, .bz2, .xz, .zst, .zip) are decompressed to
theirs.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from urllib.parse import unquote, urlparse

from tinyllm.errors import DiskFullError, DownloadError
from tinyllm.files import atomic_path, file_digest

RETRY_STATUS = frozenset({408, 425, 429})  # besides every 5xx: the server may answer next time


class _Retry(Exception):
    """A transient failure: worth another attempt after a pause."""


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def url_problem(url: str) -> str | None:
    """Why url is not a usable http(s) URL, file:// URL or local path ("no port after ':'"), or None."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            return f"{url!r} names no host"
        try:
            port = parsed.port
        except ValueError:
            return f"{url!r} has a port that is not a number from 0 to 65535"
        if port is None and parsed.netloc.endswith(":"):
            return f"{url!r} has no port after ':'; write the port or drop the ':'"
        return None
    if parsed.scheme == "file":
        return None if parsed.path else f"{url!r} names no file"
    if "://" in url:
        return f"{url!r}: unsupported URL scheme {parsed.scheme!r}; use http, https, file or a local path"
    return None


def _is_local(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in LOCAL_HOSTS or host.startswith("127.")


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
    answers fail at once. Whatever the source, the result must match `sha256` when given and be a whole
    gzip-compressed tar (read to its end: see archive_problem), or it is deleted and DownloadError raised.
    The output appears only complete and checked (rename).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        part = part_path(output)
        _download_http(url, part, retries, backoff, timeout, chunk_size, progress)
        try:
            _check_archive(part, url, sha256, output.name)
        except BaseException:
            part.unlink(missing_ok=True)  # a bad file must neither be used nor resumed
            raise
        os.replace(part, output)
    elif parsed.scheme in ("file", "") or len(parsed.scheme) == 1:  # one letter: a Windows drive
        source = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
        if not source.is_file():
            raise DownloadError(f"archive not found: {url}")
        with atomic_path(output) as tmp:  # a bad copy is deleted, never published
            shutil.copyfile(source, tmp)
            _check_archive(tmp, url, sha256, output.name)
    else:
        raise DownloadError(f"unsupported URL scheme {parsed.scheme!r}: {url}")
    return output


def _download_http(url, part: Path, retries, backoff, timeout, chunk_size, progress) -> None:
    """Fetch url into part, retrying transient failures."""
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


def _fetch_into(url: str, part: Path, timeout: float, chunk_size: int, progress: bool) -> None:
    """One attempt: append what the server sends to part (or restart it); raise _Retry if worth retrying."""
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
        reason = _short_reason(err)
        if "refused" in reason.lower() and _is_local(url):  # nothing listens here: waiting will not help
            where = urlparse(url).netloc
            raise DownloadError(
                f"cannot connect ({reason}): nothing listens at {where} on this machine; start the server or "
                f"fix the URL ({url})"
            ) from None
        raise _Retry(f"cannot connect ({reason})") from None
    except requests.RequestException as err:
        raise DownloadError(f"{type(err).__name__}: {err} ({url})") from None
    with response:
        status, reason = response.status_code, response.reason
        if status == 416:  # the range starts at or past the end: complete already, or the file changed
            if _content_range(response.headers.get("Content-Range"))[1] == have:
                return
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
                f.flush()
            except requests.RequestException as err:
                raise _Retry(f"connection lost after {f.tell()} bytes ({_short_reason(err)})") from None
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(
                        f"no space left on device while writing {part}; free some space and rerun: the "
                        "download resumes from what it holds"
                    ) from None
                raise
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise _Retry(f"transfer ended at {size} of {total} bytes")


def _check_archive(candidate: Path, url: str, sha256: str | None, name: str | None = None) -> None:
    """Raise DownloadError unless candidate matches sha256 (when given) and, as its name (the output's) says,
    is a whole gzip-compressed tar (.tar.gz, .tgz) or a whole compressed file (.gz, .bz2, .xz, .zst, .zip)."""
    if sha256:
        actual = file_digest(candidate, "sha256")
        if actual.lower() != sha256.lower():
            raise DownloadError(f"sha256 mismatch: expected {sha256.lower()}, got {actual} for {url}")
    name = (name or candidate.name).lower()
    if name.endswith((".tar.gz", ".tgz")):
        problem = archive_problem(candidate)
        if problem:
            raise DownloadError(f"not a whole gzip-compressed tar archive ({problem}): {url}")
        return
    problem = compressed_problem(candidate, name)
    if problem:
        raise DownloadError(f"not a whole {name.rsplit('.', 1)[-1]} file ({problem}): {url}")


def compressed_problem(path: str | os.PathLike, name: str) -> str | None:
    """Why a compressed file (by name: .gz, .bz2, .xz, .zst, .zip) does not decompress to its end, or None;
    None for any other name (nothing to check)."""
    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    suffix = "." + name.rsplit(".", 1)[-1]
    try:
        if suffix in openers:
            with openers[suffix](path, "rb") as stream:
                while stream.read(1 << 22):
                    pass
        elif suffix == ".zst":
            import zstandard

            with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
                while stream.read(1 << 22):
                    pass
        elif suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            return f"member {bad} is damaged" if bad else None
    except EOFError as err:
        return f"truncated: {err}"
    except Exception as err:  # noqa: BLE001 - each library has its own error for damaged data
        return f"{type(err).__name__}: {err}"
    return None


def archive_problem(path: str | os.PathLike) -> str | None:
    """Why path is not a whole gzip-compressed tar archive, or None. Reads it all, once.

    The gzip stream is read to its end, where its CRC and length trailer reveal a truncated or altered file,
    and the tar listing to its end-of-archive block, which catches a tar cut short inside a sound gzip
    stream. A matching Content-Length or file size proves neither: the file may have been cut before.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return "no gzip header"
    try:
        with gzip.open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            members = sum(1 for _ in tar)  # skipping over a member's data decompresses it: still one pass
            listing_end = tar.offset  # where the listing stopped: the end-of-archive block in a whole tar
            while stream.read(1 << 22):  # the rest, to the gzip trailer
                pass
            size = stream.tell()
    except EOFError as err:
        return f"truncated: {err}"
    except (tarfile.TarError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        return f"{type(err).__name__}: {err}"
    if members == 0:
        return "empty archive"
    if size < listing_end + tarfile.BLOCKSIZE:
        return f"truncated: the tar listing ends after {members} members without its end-of-archive block"
    return None
