"""Download faults (the TinyStories archive, a source's url): a cut transfer, server errors, a 404, a refused
connection, a body that is not what its name says, a truncated or corrupt archive, a sha256 mismatch, a full
disk. Each is one line naming the URL or file; nothing half-written is left that looks done, and a partial
download is kept to resume.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import subprocess

import pytest
from conftest import assert_one_line, make_tar_gz
from http_server import FAST, PATH, FileServer
from tinyllm.download import download_archive, part_path
from tinyllm.errors import DiskFullError, DownloadError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



# --- over HTTP, from a file: the transfer ----------------------------------------------------------------


def test_partial_download_survives_a_failed_run_and_the_next_run_resumes(server, archive_bytes, tmp_path):
    server.cut_first = 1
    output = tmp_path / "archive.tar.gz"
    with pytest.raises(DownloadError) as err:
        download_archive(server.url(PATH), output, **{**FAST, "retries": 0})
    assert_one_line(err, server.url(PATH))
    kept = part_path(output).stat().st_size
    assert 0 < kept < len(archive_bytes) and not output.exists()

    download_archive(server.url(PATH), output, sha256=sha256(archive_bytes), **FAST)
    assert server.requests[-1] == (PATH, f"bytes={kept}-")
    assert output.read_bytes() == archive_bytes


def test_persistent_server_errors_give_up_with_the_url(server, tmp_path):
    server.fail_statuses = [502] * 10
    with pytest.raises(DownloadError, match="after 3 attempts") as err:
        download_archive(server.url(PATH), tmp_path / "archive.tar.gz", **FAST)
    assert_one_line(err, server.url(PATH))
    assert len(server.requests) == 3


def test_sha256_mismatch_leaves_no_output(server, tmp_path):
    output = tmp_path / "archive.tar.gz"
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        download_archive(server.url(PATH), output, sha256="0" * 64, **FAST)
    assert_one_line(err, server.url(PATH))
    assert not output.exists()
    assert not part_path(output).exists()  # a bad file is not resumed next time either


def test_404_fails_at_once_with_one_line_naming_the_url(server, tmp_path):
    url = server.url("/missing.tar.gz")
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_archive(url, tmp_path / "archive.tar.gz", **FAST)
    assert_one_line(err, url)
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
        assert_one_line(err, server.url(PATH))
    assert not output.exists() and not part_path(output).exists()


def test_refused_connection_gives_one_line_naming_the_url(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/TinyStories_all_data.tar.gz"
    with pytest.raises(DownloadError, match=r"cannot connect \(\[Errno \d+\] Connection refused\)") as err:
        download_archive(url, tmp_path / "archive.tar.gz", **{**FAST, "retries": 1})
    assert_one_line(err, url)


def test_local_file_that_is_not_an_archive_or_missing(tmp_path):
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(DownloadError, match="not a whole gzip-compressed tar"):
        download_archive(str(not_archive), tmp_path / "out" / "x.tar.gz")
    with pytest.raises(DownloadError, match="archive not found") as err:
        download_archive(str(tmp_path / "nope.tar.gz"), tmp_path / "out" / "x.tar.gz")
    assert_one_line(err, str(tmp_path / "nope.tar.gz"))
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        download_archive("ftp://example.org/x.tar.gz", tmp_path / "out" / "x.tar.gz")
    assert list((tmp_path / "out").iterdir()) == []


# --- the whole archive is checked, whatever the source ------------------------------------------------------


def assert_refused_without_output(err: pytest.ExceptionInfo, url: str, problem: str, folder) -> None:
    assert_one_line(err, url)
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


# --- a source's url on this machine ------------------------------------------------------------------------


def test_a_refused_connection_on_this_machine_is_not_retried(tmp_path, capfd):
    """Nothing listens at a local port: waiting a minute of backoff would not change that (issue 18)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/forum.jsonl.gz"
    with pytest.raises(DownloadError, match=rf"nothing listens at 127.0.0.1:{port} on this machine") as err:
        download_archive(url, tmp_path / "forum.jsonl.gz", retries=5, backoff=30.0, progress=False)
    assert_one_line(err, url)
    assert "retrying" not in capfd.readouterr().err


# --- a full disk ----------------------------------------------------------------------------------------


def test_a_full_disk_during_download_names_the_part_file(small_disk):
    """A 3 MB filesystem and a 4 MB download: one line naming the .part file; what it holds is kept, so the
    next run resumes once there is room."""
    body = bytes(range(256)) * (4 << 12)
    output = small_disk / "forum.jsonl"
    with FileServer({"/forum.jsonl": body}) as server:
        with pytest.raises(DiskFullError) as err:
            download_archive(server.url("/forum.jsonl"), output, **FAST)
        message = str(err.value)
        assert f"no space left on device while writing {part_path(output)}" in message and "\n" not in message
        assert not output.exists()
        kept = part_path(output).stat().st_size
        assert kept > 0
        subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # room made
        download_archive(server.url("/forum.jsonl"), output, **FAST)
        assert server.requests[-1] == ("/forum.jsonl", f"bytes={kept}-")  # resumed, not started over
    assert output.read_bytes() == body and not part_path(output).exists()
