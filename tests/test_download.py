"""download_archive against a real HTTP server on 127.0.0.1, file:// URLs and local paths. Its faults (cut
transfers, server errors, bad or truncated bodies, a full disk) are in tests/faults/test_download.py."""

from __future__ import annotations

import gzip
import hashlib

import pytest
from conftest import assert_one_line
from http_server import FAST, PATH, FileServer
from tinyllm.download import download_archive, part_path
from tinyllm.errors import DownloadError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_checks_sha256(server, archive_bytes, tmp_path):
    output = tmp_path / "results" / "archive.tar.gz"
    download_archive(server.url(PATH), output, sha256=sha256(archive_bytes).upper(), **FAST)
    assert output.read_bytes() == archive_bytes
    assert not part_path(output).exists()
    assert server.requests == [(PATH, None)]
    assert [p.name for p in output.parent.iterdir()] == ["archive.tar.gz"]  # no temporary left behind


def test_cut_transfer_is_resumed_with_a_range_request(server, archive_bytes, tmp_path):
    server.cut_first = 1
    output = tmp_path / "archive.tar.gz"
    download_archive(server.url(PATH), output, sha256=sha256(archive_bytes), **FAST)
    assert sha256(output.read_bytes()) == sha256(archive_bytes)
    assert len(server.requests) == 2
    resumed_from = int(server.requests[1][1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= len(archive_bytes) // 2





def test_server_ignoring_range_restarts_from_scratch(server, archive_bytes, tmp_path):
    server.ignore_range = True
    output = tmp_path / "archive.tar.gz"
    part_path(output).write_bytes(b"stale bytes from an older file")
    download_archive(server.url(PATH), output, sha256=sha256(archive_bytes), **FAST)
    assert server.requests[0][1] == "bytes=30-"  # it asked to resume, got 200, and started over
    assert output.read_bytes() == archive_bytes


def test_range_not_satisfiable_restarts(server, archive_bytes, tmp_path):
    output = tmp_path / "archive.tar.gz"
    part_path(output).write_bytes(b"x" * (len(archive_bytes) + 10))  # longer than the file: 416
    download_archive(server.url(PATH), output, sha256=sha256(archive_bytes), **FAST)
    assert [r for _, r in server.requests] == [f"bytes={len(archive_bytes) + 10}-", None]
    assert output.read_bytes() == archive_bytes


def test_complete_part_file_is_not_fetched_again(server, archive_bytes, tmp_path):
    output = tmp_path / "archive.tar.gz"
    part_path(output).write_bytes(archive_bytes)  # a run that died between download and rename
    download_archive(server.url(PATH), output, **FAST)
    assert len(server.requests) == 1  # one 416 answer confirmed it is whole
    assert output.read_bytes() == archive_bytes


def test_body_without_length_is_checked_to_the_end(server, archive_bytes, tmp_path):
    server.omit_length = True
    output = tmp_path / "archive.tar.gz"
    download_archive(server.url(PATH), output, **FAST)
    assert output.read_bytes() == archive_bytes

    server.cut_first = 1  # now the connection closes early and nothing tells the client so
    with pytest.raises(DownloadError, match="not a whole gzip-compressed tar") as err:
        download_archive(server.url(PATH), tmp_path / "cut.tar.gz", **FAST)
    assert_one_line(err, server.url(PATH))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz"]


def test_server_errors_are_retried(server, archive_bytes, tmp_path):
    server.fail_statuses = [503, 500]
    output = tmp_path / "archive.tar.gz"
    download_archive(server.url(PATH), output, **FAST)
    assert len(server.requests) == 3
    assert output.read_bytes() == archive_bytes








def test_file_url_and_local_path_are_copied_and_checked(tinystories_archive, archive_bytes, tmp_path):
    digest = sha256(archive_bytes)
    from_url = download_archive(tinystories_archive.as_uri(), tmp_path / "a" / "x.tar.gz", sha256=digest)
    from_path = download_archive(str(tinystories_archive), tmp_path / "b" / "x.tar.gz", sha256=digest)
    assert from_url.read_bytes() == from_path.read_bytes() == archive_bytes
    assert from_url.stat().st_mode & 0o044 == 0o044  # readable like any other output, not mkstemp's 0600
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.tar.gz"]

    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_archive(str(tinystories_archive), tmp_path / "c" / "x.tar.gz", sha256="f" * 64)
    assert list((tmp_path / "c").iterdir()) == []





# --- corpus sources: any file, checked as its name says --------------------------------------------------


@pytest.mark.parametrize("name", ["forum.jsonl.gz", "books.zip", "notes.txt.xz"])
def test_a_compressed_source_is_checked_to_its_end(name, tmp_path):
    import io
    import lzma
    import zipfile

    body = b'{"text": "hello"}\n' * 2000
    if name.endswith(".gz"):
        whole = gzip.compress(body)
    elif name.endswith(".xz"):
        whole = lzma.compress(body)
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a.jsonl", body)
        whole = buffer.getvalue()
    with FileServer({f"/{name}": whole, f"/cut-{name}": whole[: len(whole) // 2]}) as server:
        out = download_archive(server.url(f"/{name}"), tmp_path / name, sha256=sha256(whole), **FAST)
        assert out.read_bytes() == whole
        with pytest.raises(DownloadError, match=f"not a whole {name.rsplit('.', 1)[1]} file") as err:
            download_archive(server.url(f"/cut-{name}"), tmp_path / "cut" / name, **FAST)
        assert_one_line(err, server.url(f"/cut-{name}"))
    assert list((tmp_path / "cut").iterdir()) == []


def test_plain_files_are_checked_by_sha256_only(tmp_path):
    with FileServer({"/a.jsonl": b'{"text": "x"}\n'}) as server:
        download_archive(server.url("/a.jsonl"), tmp_path / "a.jsonl", **FAST)
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            download_archive(server.url("/a.jsonl"), tmp_path / "b.jsonl", sha256="0" * 64, **FAST)
    assert (tmp_path / "a.jsonl").read_bytes() == b'{"text": "x"}\n'
