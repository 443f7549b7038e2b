"""download_archive against a real HTTP server on 127.0.0.1, file:// URLs and local paths."""

from __future__ import annotations

import gzip
import hashlib
import socket

import pytest
from conftest import make_tar_gz
from http_server import FileServer
from tinyllm.download import download_archive, part_path
from tinyllm.errors import DownloadError

PATH = "/TinyStories_all_data.tar.gz"
FAST = {"retries": 2, "backoff": 0.01, "timeout": 10.0, "progress": False}


@pytest.fixture
def archive_bytes(tinystories_archive) -> bytes:
    return tinystories_archive.read_bytes()


@pytest.fixture
def server(archive_bytes):
    with FileServer({PATH: archive_bytes}) as running:
        yield running


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_one_line_naming(err: pytest.ExceptionInfo, url: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert url in message


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


def test_partial_download_survives_a_failed_run_and_the_next_run_resumes(server, archive_bytes, tmp_path):
    server.cut_first = 1
    output = tmp_path / "archive.tar.gz"
    with pytest.raises(DownloadError) as err:
        download_archive(server.url(PATH), output, **{**FAST, "retries": 0})
    assert_one_line_naming(err, server.url(PATH))
    kept = part_path(output).stat().st_size
    assert 0 < kept < len(archive_bytes) and not output.exists()

    download_archive(server.url(PATH), output, sha256=sha256(archive_bytes), **FAST)
    assert server.requests[-1] == (PATH, f"bytes={kept}-")
    assert output.read_bytes() == archive_bytes


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
    assert_one_line_naming(err, server.url(PATH))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz"]


def test_server_errors_are_retried(server, archive_bytes, tmp_path):
    server.fail_statuses = [503, 500]
    output = tmp_path / "archive.tar.gz"
    download_archive(server.url(PATH), output, **FAST)
    assert len(server.requests) == 3
    assert output.read_bytes() == archive_bytes


def test_persistent_server_errors_give_up_with_the_url(server, tmp_path):
    server.fail_statuses = [502] * 10
    with pytest.raises(DownloadError, match="after 3 attempts") as err:
        download_archive(server.url(PATH), tmp_path / "archive.tar.gz", **FAST)
    assert_one_line_naming(err, server.url(PATH))
    assert len(server.requests) == 3


def test_sha256_mismatch_leaves_no_output(server, tmp_path):
    output = tmp_path / "archive.tar.gz"
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        download_archive(server.url(PATH), output, sha256="0" * 64, **FAST)
    assert_one_line_naming(err, server.url(PATH))
    assert not output.exists()
    assert not part_path(output).exists()  # a bad file is not resumed next time either


def test_404_fails_at_once_with_one_line_naming_the_url(server, tmp_path):
    url = server.url("/missing.tar.gz")
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_archive(url, tmp_path / "archive.tar.gz", **FAST)
    assert_one_line_naming(err, url)
    assert len(server.requests) == 1  # a 404 is not retried


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Sign in to continue</body></html>", gzip.compress(b"plain text, not a tar")],
    ids=["html-page", "gzip-but-not-tar"],
)
def test_body_that_is_not_a_gzip_tar_is_refused(body, tmp_path):
    output = tmp_path / "archive.tar.gz"
    with FileServer({PATH: body}) as server:
        with pytest.raises(DownloadError, match="not a whole gzip-compressed tar") as err:
            download_archive(server.url(PATH), output, **FAST)
        assert_one_line_naming(err, server.url(PATH))
    assert not output.exists() and not part_path(output).exists()


def test_refused_connection_gives_one_line_naming_the_url(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/TinyStories_all_data.tar.gz"
    with pytest.raises(DownloadError, match=r"cannot connect \(\[Errno \d+\] Connection refused\)") as err:
        download_archive(url, tmp_path / "archive.tar.gz", **{**FAST, "retries": 1})
    assert_one_line_naming(err, url)


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


def test_local_file_that_is_not_an_archive_or_missing(tmp_path):
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(DownloadError, match="not a whole gzip-compressed tar"):
        download_archive(str(not_archive), tmp_path / "out" / "x.tar.gz")
    with pytest.raises(DownloadError, match="archive not found") as err:
        download_archive(str(tmp_path / "nope.tar.gz"), tmp_path / "out" / "x.tar.gz")
    assert_one_line_naming(err, str(tmp_path / "nope.tar.gz"))
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        download_archive("ftp://example.org/x.tar.gz", tmp_path / "out" / "x.tar.gz")
    assert list((tmp_path / "out").iterdir()) == []


# --- the whole archive is checked, whatever the source ------------------------------------------------------


def assert_refused_without_output(err: pytest.ExceptionInfo, url: str, problem: str, folder) -> None:
    assert_one_line_naming(err, url)
    assert "not a whole gzip-compressed tar archive" in str(err.value) and problem in str(err.value)
    assert list(folder.iterdir()) == []  # neither the output nor a temporary or .part file


@pytest.mark.parametrize("as_uri", [False, True], ids=["plain-path", "file-url"])
def test_truncated_local_archive_is_refused(as_uri, archive_bytes, tmp_path):
    """The archive cut to 75% of its bytes: its first members are whole, so only reading to the end tells."""
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive_bytes[: len(archive_bytes) * 3 // 4])
    url = cut.as_uri() if as_uri else str(cut)
    with pytest.raises(DownloadError) as err:
        download_archive(url, tmp_path / "out" / "archive.tar.gz")
    assert_refused_without_output(err, url, "truncated", tmp_path / "out")


def test_truncated_archive_served_with_its_own_length_is_refused(archive_bytes, tmp_path):
    """A server that sends a cut file as if whole: the length matches, the archive is still refused."""
    with FileServer({PATH: archive_bytes[: len(archive_bytes) * 3 // 4]}) as server:
        with pytest.raises(DownloadError) as err:
            download_archive(server.url(PATH), tmp_path / "out" / "archive.tar.gz", **FAST)
        assert_refused_without_output(err, server.url(PATH), "truncated", tmp_path / "out")
        assert len(server.requests) == 1  # a whole transfer of a bad file is not worth retrying


def test_tar_cut_inside_a_sound_gzip_stream_is_refused(tmp_path):
    """The gzip stream is whole (its trailer checks out) but the tar inside stops after its first member."""
    whole = make_tar_gz(tmp_path / "whole.tar.gz", {"data00.json": b"[]" * 600, "data01.json": b"[]" * 600})
    tar_bytes = gzip.decompress(whole.read_bytes())
    first_member_end = 512 + 1536  # one header block, then 1200 bytes of data padded to 512
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gzip.compress(tar_bytes[:first_member_end]))
    with pytest.raises(DownloadError) as err:
        download_archive(str(cut), tmp_path / "out" / "archive.tar.gz")
    assert_refused_without_output(err, str(cut), "without its end-of-archive block", tmp_path / "out")


def test_corrupt_byte_in_the_middle_is_refused(archive_bytes, tmp_path):
    damaged = bytearray(archive_bytes)
    damaged[len(damaged) // 2] ^= 0xFF
    path = tmp_path / "damaged.tar.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(DownloadError) as err:
        download_archive(str(path), tmp_path / "out" / "archive.tar.gz")
    assert_refused_without_output(err, str(path), "", tmp_path / "out")


# --- corpus sources: any file, checked as its name says; faults in one line ---------------------------------


def test_a_refused_connection_on_this_machine_is_not_retried(tmp_path, capfd):
    """Nothing listens at a local port: waiting a minute of backoff would not change that (issue 18)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/forum.jsonl.gz"
    with pytest.raises(DownloadError, match=rf"nothing listens at 127.0.0.1:{port} on this machine") as err:
        download_archive(url, tmp_path / "forum.jsonl.gz", retries=5, backoff=30.0, progress=False)
    assert_one_line_naming(err, url)
    assert "retrying" not in capfd.readouterr().err


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
        assert_one_line_naming(err, server.url(f"/cut-{name}"))
    assert list((tmp_path / "cut").iterdir()) == []


def test_plain_files_are_checked_by_sha256_only(tmp_path):
    with FileServer({"/a.jsonl": b'{"text": "x"}\n'}) as server:
        download_archive(server.url("/a.jsonl"), tmp_path / "a.jsonl", **FAST)
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            download_archive(server.url("/a.jsonl"), tmp_path / "b.jsonl", sha256="0" * 64, **FAST)
    assert (tmp_path / "a.jsonl").read_bytes() == b'{"text": "x"}\n'


def test_a_full_disk_during_download_names_the_part_file(small_disk):
    """A 3 MB filesystem and a 4 MB download: one line naming the .part file; what it holds is kept, so the
    next run resumes once there is room."""
    from tinyllm.errors import DiskFullError

    body = bytes(range(256)) * (4 << 12)
    output = small_disk / "forum.jsonl"
    with FileServer({"/forum.jsonl": body}) as server:
        with pytest.raises(DiskFullError) as err:
            download_archive(server.url("/forum.jsonl"), output, **FAST)
    message = str(err.value)
    assert f"no space left on device while writing {part_path(output)}" in message and "\n" not in message
    assert not output.exists()
