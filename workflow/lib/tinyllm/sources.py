"""Corpus sources: where documents come from and how to read them, one stream at a time.

A source (one entry of `data.sources`) names local files (`path`: a file, a folder or a glob) or a file to
fetch (`url`), optionally an archive (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .tar.zst, .zip) with `members`
globs choosing what to read inside it, and files compressed one by one (.gz, .bz2, .xz, .zst). Each file is
read in one format: JSON (an array of objects or strings), JSON Lines, plain text or Parquet, from its
extension unless `format` says. A record's text is a field, a dotted path into nested objects or a template
such as "{subject}\\n{lines}"; a list of strings is joined with newlines. Plain text splits into documents
per file, per blank-line paragraph or per line.

Everything streams: a file is read in blocks, JSON arrays element by element, Parquet by row batch, so memory
holds one record (at most MAX_RECORD_BYTES) whatever the corpus size. Every problem with the input is a
DataError naming the file and the line or record, and what to do.
"""

from __future__ import annotations

import bz2
import fnmatch
import glob
import gzip
import io
import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from tinyllm.errors import ConfigError, DataError
from tinyllm.records import (
    BLOCK,
    json_documents,
    jsonl_documents,
    parquet_documents,
    template_fields,
    text_documents,
)

FORMATS = ("json", "jsonl", "text", "parquet")
DOCUMENT_MODES = ("file", "paragraph", "line")
FORMAT_OF_SUFFIX = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".parquet": "parquet",
}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".zip")
SNIFF_BYTES = 8192  # what a binary-file check reads


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    """What reading damaged compressed data raises (gzip.BadGzipFile is an OSError without an errno)."""
    errors = [EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, tarfile.TarError, zipfile.BadZipFile]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


CORRUPT = _corrupt_errors()


# --- source specs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One entry of data.sources, checked and with its defaults (see the schema)."""

    name: str
    location: str  # a local path, folder or glob (path), or the downloaded file (url)
    key: str  # "data.sources[0]", for messages
    members: tuple[str, ...] = ()  # archive member globs; () = every member
    format: str = "auto"
    text: str = "text"
    documents: str = "file"
    missing: str = "error"  # a record without the text's field: "error" or "skip"
    is_glob: bool = False  # the files were found by a folder or a glob: binary ones are skipped, not errors

    def settings(self) -> dict:
        """What changes this source's documents (the prepare rule's params hold it)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("key",)} | {"members": list(self.members)}


def check_data_section(data: dict) -> None:
    """The data section's checks beyond the schema: URLs well formed, each source a path or a url, templates
    parse, validation only for data.sources. ConfigError naming the key."""
    from tinyllm.download import url_problem

    problem = url_problem(data["url"])
    if problem:
        raise ConfigError(f"data.url: {problem}")
    if not data["sources"]:
        if any(data["validation"].get(k) for k in ("fraction", "sources", "files")):
            raise ConfigError(
                "data.validation: applies to data.sources; TinyStories' validation split is data00.json"
            )
        return
    for index, spec in enumerate(data["sources"]):
        key = f"data.sources[{index}]"
        if bool(spec.get("path")) == bool(spec.get("url")):
            raise ConfigError(f"{key}: give either path (local, read in place) or url (fetched), not both")
        if spec.get("url"):
            problem = url_problem(spec["url"])
            if problem:
                raise ConfigError(f"{key}.url: {problem}")
        elif spec.get("sha256"):
            raise ConfigError(f"{key}.sha256: only a url is checked against a sha256")
        source_from_dict({**spec, "path": spec.get("path") or spec["url"]}, index)


def source_from_dict(spec: dict, index: int, location: str | None = None) -> Source:
    """A Source from one validated entry of data.sources; location replaces the path (a download's file)."""
    key = f"data.sources[{index}]"
    where = location or spec.get("path")
    if not where:
        raise ConfigError(f"{key}: give path (a local file, folder or glob) or url")
    members = spec.get("members") or ()
    if isinstance(members, str):
        members = (members,)
    fmt = spec.get("format", "auto")
    text = spec.get("text")
    if fmt == "text" and text is not None:
        raise ConfigError(f"{key}.text: plain text has no records; use documents: file, paragraph or line")
    text = text if text is not None else "text"
    template_fields(text, f"{key}.text")  # refuses a malformed template now, not mid-corpus
    return Source(
        name=spec.get("name") or default_name(where),
        location=where,
        key=key,
        members=tuple(members),
        format=fmt,
        text=text,
        documents=spec.get("documents", "file"),
        missing=spec.get("missing", "error"),
        is_glob=location is None and (Path(where).is_dir() or glob.has_magic(where)),
    )


def default_name(location: str) -> str:
    """A source's name from its path or URL: the last component without archive or format extensions."""
    tail = PurePosixPath(urlparse(location).path if "://" in location else location.rstrip("/\\")).name
    tail = tail.replace("*", "").replace("?", "") or "source"
    suffixes = sorted({*ARCHIVE_SUFFIXES, *COMPRESSIONS, *FORMAT_OF_SUFFIX}, key=len, reverse=True)
    while found := next((s for s in suffixes if tail.lower().endswith(s) and len(tail) > len(s)), None):
        tail = tail[: -len(found)]  # forum.jsonl.gz -> forum
    return tail.strip(".") or "source"


def url_file_name(url: str) -> str:
    """The file name a URL's path ends in (unquoted), or "download"."""
    return PurePosixPath(unquote(urlparse(url).path)).name or "download"


def local_files(location: str, key: str) -> list[Path]:
    """The files a source's path names: the file itself, every file under a folder (hidden ones left out), or
    every file a glob matches (`**` recursive), sorted. ConfigError when there is none."""
    if location.startswith("file://"):
        location = unquote(urlparse(location).path)
    path = Path(location).expanduser()
    if glob.has_magic(location):
        found = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = sorted(p for p in found if p.is_file() and not _hidden(p, path.anchor))
        if not files:
            raise ConfigError(f"{key}.path: {location!r} matches no file")
        return files
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path), "")
        )
        if not files:
            raise ConfigError(f"{key}.path: the folder {location} holds no file")
        return files
    if path.is_file():
        return [path]
    raise ConfigError(f"{key}.path: no such file or folder: {location}")


def _hidden(path: Path, anchor: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in path.parts if part != anchor)


# --- opening files: archives, compression, format -----------------------------------------------------------


@dataclass
class Counter:
    """Bytes read from the sources' files on disk (compressed), for the progress bar."""

    done: int = 0
    documents: int = 0  # documents read (the caller counts them)
    on_progress: Callable[[int], None] | None = None

    def add(self, n: int) -> None:
        self.done += n
        if self.on_progress is not None:
            self.on_progress(n)


class _CountingReader(io.RawIOBase):
    """A raw file whose reads are counted."""

    def __init__(self, raw, counter: Counter):
        self._raw, self._counter = raw, counter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self._counter.add(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _strip_compression(name: str) -> tuple[str, str | None]:
    lower = name.lower()
    for suffix in COMPRESSIONS:
        if lower.endswith(suffix) and not lower.endswith(".tar" + suffix):
            return name[: -len(suffix)], suffix
    return name, None


def archive_kind(name: str) -> str | None:
    """"tar" or "zip" for an archive's file name, else None."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if any(lower.endswith(s) for s in ARCHIVE_SUFFIXES):
        return "tar"
    return None


def decompressed(stream, name: str):
    """stream (binary) decompressed as name's compression suffix says (.gz, .bz2, .xz, .zst), or as is."""
    _, suffix = _strip_compression(name)
    if suffix == ".gz":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if suffix == ".bz2":
        return bz2.BZ2File(stream, mode="rb")
    if suffix == ".xz":
        return lzma.LZMAFile(stream, mode="rb")
    if suffix == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(stream, closefd=False), BLOCK)
    return stream


def format_of(name: str, source: Source) -> str | None:
    """The format to read name in: the source's format, else by extension (after compression); None if
    the extension tells none."""
    if source.format != "auto":
        return source.format
    base, _ = _strip_compression(name)
    return FORMAT_OF_SUFFIX.get(PurePosixPath(base).suffix.lower())


def member_matches(member: str, patterns: tuple[str, ...]) -> str | None:
    """The first pattern that matches a member path, or the path under its first folder; None if none."""
    path = member.lstrip("./") if member.startswith("./") else member
    under_top = path.split("/", 1)[1] if "/" in path else None
    for pattern in patterns or ("*",):
        if fnmatch.fnmatchcase(path, pattern) or (under_top and fnmatch.fnmatchcase(under_top, pattern)):
            return pattern
    return None


@dataclass
class Skipped:
    """A file a folder, glob or member glob caught that is not read, and why (logged, counted)."""

    label: str
    reason: str


@dataclass
class FileStats:
    files: int = 0
    skipped: list[Skipped] = field(default_factory=list)


# --- the documents of one source ----------------------------------------------------------------------------


def iter_source_documents(
    source: Source, files: list[Path], counter: Counter, stats: FileStats, spool_dir: str | None = None
) -> Iterator[tuple[str, str, str]]:
    """Every document of a source in order, as (text, file label, where in the file: "line 5", "record 3").

    Texts are as read (not stripped). Archives are read once, front to back; every members glob must match
    a member. Files a folder or glob caught that are binary or of no known format are skipped and recorded in
    stats; a file named directly that is so is a DataError.
    """
    for path in files:
        kind = archive_kind(path.name)
        if kind is None:
            with open(path, "rb", buffering=0) as raw:
                stream = io.BufferedReader(_CountingReader(raw, counter), BLOCK)
                yield from _file_documents(source, stream, str(path), path.name, stats, spool_dir)
        elif kind == "zip":
            yield from _zip_documents(source, path, counter, stats, spool_dir)
        else:
            yield from _tar_documents(source, path, counter, stats, spool_dir)


def _tar_documents(source, path: Path, counter, stats, spool_dir) -> Iterator[tuple[str, str, str]]:
    matched: set[str] = set()
    with open(path, "rb", buffering=0) as raw:
        stream = io.BufferedReader(_CountingReader(raw, counter), BLOCK)
        if path.name.lower().endswith(".zst"):  # tarfile reads gz, bz2 and xz itself
            stream = decompressed(stream, "archive.zst")
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    pattern = member_matches(member.name, source.members)
                    if pattern is None:
                        continue
                    label = f"{path}:{member.name}"
                    if not member.isfile():
                        if not member.isdir():
                            stats.skipped.append(Skipped(label, "not a regular file (a link or device)"))
                        continue
                    matched.add(pattern)
                    body = tar.extractfile(member)
                    caught = glob.has_magic(pattern)
                    yield from _file_documents(source, body, label, member.name, stats, spool_dir, caught)
        except CORRUPT as err:
            raise DataError(
                f"{path}: the archive is truncated or corrupt ({type(err).__name__}: {err}); fetch it again"
            ) from None
    _check_members_matched(source, path, matched)


def _zip_documents(source, path: Path, counter, stats, spool_dir) -> Iterator[tuple[str, str, str]]:
    matched: set[str] = set()
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                pattern = member_matches(info.filename, source.members)
                if pattern is None or info.is_dir():
                    continue
                label = f"{path}:{info.filename}"
                if stat.S_ISLNK(info.external_attr >> 16):
                    stats.skipped.append(Skipped(label, "a link, not a regular file"))
                    continue
                matched.add(pattern)
                with zf.open(info) as body:
                    caught = glob.has_magic(pattern)
                    yield from _file_documents(source, body, label, info.filename, stats, spool_dir, caught)
                counter.add(info.compress_size)
    except CORRUPT as err:
        raise DataError(f"{path}: the zip archive is truncated or corrupt ({err}); fetch it again") from None
    _check_members_matched(source, path, matched)


def _check_members_matched(source: Source, path: Path, matched: set[str]) -> None:
    for pattern in source.members:
        if pattern not in matched:
            raise DataError(
                f"{path}: no member matches {source.key}.members {pattern!r}; list the archive "
                f"(tar -tf / unzip -l) and fix the glob"
            )


def _file_documents(
    source: Source, stream, label: str, name: str, stats: FileStats, spool_dir, glob_caught: bool = False
) -> Iterator[tuple[str, str, str]]:
    """The documents of one file (or archive member) read from a binary stream."""
    caught = glob_caught or source.is_glob
    fmt = format_of(name, source)
    if fmt is None:
        if caught:
            stats.skipped.append(Skipped(label, "no known format from its extension"))
            return
        raise DataError(
            f"{label}: cannot tell the format from the name; set {source.key}.format to one of "
            f"{', '.join(FORMATS)}"
        )
    try:
        body = decompressed(stream, name)
        if fmt == "parquet":
            yield from parquet_documents(source, body, label, spool_dir)
            stats.files += 1
            return
        body = body if hasattr(body, "peek") else io.BufferedReader(body, BLOCK)
        head = body.peek(SNIFF_BYTES)[:SNIFF_BYTES]
        problem = _binary_reason(head)
        if problem:
            if caught:
                stats.skipped.append(Skipped(label, f"binary ({problem})"))
                return
            raise DataError(
                f"{label}: a binary file ({problem}), not {fmt} text; remove it from {source.key}"
            )
        stats.files += 1
        if fmt == "jsonl":
            yield from jsonl_documents(source, body, label)
        elif fmt == "json":
            yield from json_documents(source, body, label)
        else:
            yield from text_documents(source, body, label)
    except CORRUPT as err:
        if _strip_compression(name)[1] is None:  # the archive around it is damaged: its reader says so
            raise
        raise DataError(
            f"{label}: truncated or corrupt compressed data ({type(err).__name__}: {err})"
        ) from None


def _binary_reason(head: bytes) -> str | None:
    if b"\0" in head:
        return "NUL bytes in its first block"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.end < len(head) - 3:  # not just a character cut by the block's end
            return f"byte {err.start} is not UTF-8"
    return None
