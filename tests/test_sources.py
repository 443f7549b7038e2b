"""tinyllm.sources: every format, compression, archive and text setting, and every bad input in one line."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
import zipfile
from pathlib import Path

import pytest
from corpora import LETTERS, MEMBERS, RECORDS, jsonl, read_source, tar_bytes
from tinyllm.errors import ConfigError, DataError
from tinyllm.records import MAX_RECORD_BYTES, iter_json_array
from tinyllm.sources import local_files


def compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data)
    if suffix == ".bz2":
        return bz2.compress(data)
    if suffix == ".xz":
        return lzma.compress(data)
    if suffix == ".zst":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def parquet_bytes(records) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), out, row_group_size=2)
    return out.getvalue()


# --- formats x compressions ---------------------------------------------------------------------------------

FORMATS = {
    "data.jsonl": jsonl(RECORDS),
    "data.json": json.dumps(RECORDS, ensure_ascii=False, indent=2).encode(),
    "data.parquet": parquet_bytes(RECORDS),
}


@pytest.mark.parametrize("compression", ["", ".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_and_compression_reads_the_same_documents(name, compression, tmp_path):
    path = tmp_path / f"{name}{compression}"
    path.write_bytes(compress(FORMATS[name], compression))
    docs, stats = read_source({"path": str(path), "text": "{title}\n{body}"})
    assert docs == [f"{r['title']}\n{r['body']}" for r in RECORDS]
    assert stats.files == 1 and not stats.skipped


def test_json_array_of_strings_and_jsonl_strings_are_documents(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["один", "два"], ensure_ascii=False))
    (tmp_path / "b.jsonl").write_text('"three"\n\n"four"\n')
    assert read_source({"path": str(tmp_path)})[0] == ["один", "два", "three", "four"]


TEXT = "\ufeffFirst paragraph,\r\nline two.\r\n\r\n\r\nSecond paragraph.\n   \nThird.\n"


@pytest.mark.parametrize(
    "documents,expected",
    [
        ("file", ["First paragraph,\nline two.\n\n\nSecond paragraph.\n   \nThird.\n"]),
        ("paragraph", ["First paragraph,\nline two.\n", "Second paragraph.\n", "Third.\n"]),
        ("line", ["First paragraph,\n", "line two.\n", "\n", "\n", "Second paragraph.\n", "   \n", "Third.\n"]),  # noqa: E501
    ],
)
@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_plain_text_documents_per_file_paragraph_or_line(documents, expected, compression, tmp_path):
    """Windows line ends and the byte order mark go; documents are stripped later, by prepare."""
    path = tmp_path / f"notes.txt{compression}"
    path.write_bytes(compress(TEXT.encode(), compression))
    assert read_source({"path": str(path), "documents": documents})[0] == expected


def test_format_override_reads_an_unknown_extension(tmp_path):
    path = tmp_path / "dump.data"
    path.write_bytes(jsonl(RECORDS))
    docs, _ = read_source({"path": str(path), "format": "jsonl", "text": "body"})
    assert docs == [r["body"] for r in RECORDS]
    with pytest.raises(DataError, match=r"dump.data: cannot tell the format from the name; set data.source"):
        read_source({"path": str(path)})


# --- archives -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".zip"])
def test_archive_members_chosen_by_glob(suffix, tmp_path):
    path = tmp_path / f"letters{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, content in MEMBERS.items():
                zf.writestr(name, content)
    elif suffix == ".tar.zst":
        path.write_bytes(compress(tar_bytes(MEMBERS, "w"), ".zst"))
    else:
        modes = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}
        path.write_bytes(tar_bytes(MEMBERS, modes[suffix]))
    docs, _ = read_source({"path": str(path), "members": "*/letters-*", "text": "{subject}\n{lines}"})
    assert docs == LETTERS
    # Patterns also match a member's path under the archive's top folder.
    docs, _ = read_source({"path": str(path), "members": ["letters-2.jsonl.gz"], "text": "subject"})
    assert docs == ["Yo"]


def test_member_glob_matching_nothing_names_the_pattern(tmp_path):
    path = tmp_path / "letters.tar.gz"
    path.write_bytes(tar_bytes(MEMBERS))
    with pytest.raises(DataError) as err:
        read_source({"path": str(path), "members": ["*/letters-*", "*/postcards-*"], "text": "subject"})
    assert f"{path}: no member matches data.sources[0].members '*/postcards-*'" in str(err.value)
    assert "\n" not in str(err.value)


def test_links_and_devices_in_an_archive_are_never_read_and_nothing_is_written(tmp_path):
    """Members are read as streams, never extracted: a link or a device is skipped (logged), and a `..` or
    absolute name writes nothing anywhere."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in {"../evil.jsonl": b'{"text": "outside"}\n', "/abs.jsonl": b'{"text": "abs"}\n',
                              "ok.jsonl": b'{"text": "fine"}\n'}.items():  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for kind, target in ((tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "ok.jsonl")):
            info = tarfile.TarInfo(f"link{kind.decode()}.jsonl")
            info.type, info.linkname = kind, target
            tar.addfile(info)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(out.getvalue())
    docs, stats = read_source({"path": str(archive)})
    assert docs == ["outside", "abs", "fine"]  # their text only: nothing was written where they point
    assert sorted(s.reason for s in stats.skipped) == ["not a regular file (a link or device)"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]


def test_corrupt_archive_is_one_line_naming_it(tmp_path):
    data = tar_bytes({f"m{i}.jsonl": jsonl(RECORDS) * 200 for i in range(3)})
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{path}: the archive is truncated or corrupt") as err:
        read_source({"path": str(path), "text": "body"})
    assert "\n" not in str(err.value)


# --- folders and globs --------------------------------------------------------------------------------------


def test_folder_and_glob_find_files_sorted_without_hidden_ones(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "1.txt").write_text("one")
    (tmp_path / ".hidden.txt").write_text("no")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("no")
    assert read_source({"path": str(tmp_path)})[0] == ["one", "two"]
    assert read_source({"path": str(tmp_path / "**" / "*.txt")})[0] == ["one", "two"]
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path: '.*\*.md' matches no file"):
        local_files(str(tmp_path / "*.md"), "data.sources[0]")
    with pytest.raises(ConfigError, match="no such file or folder"):
        local_files(str(tmp_path / "nope"), "data.sources[0]")


def test_binary_file_caught_by_a_glob_is_skipped_but_named_directly_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("real text")
    (tmp_path / "picture.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00")
    docs, stats = read_source({"path": str(tmp_path)})
    assert docs == ["real text"]
    assert {(Path(s.label).name, s.reason.split(" (")[0]) for s in stats.skipped} == {
        ("picture.txt", "binary"), ("image.png", "no known format from its extension")
    }
    with pytest.raises(DataError) as err:
        read_source({"path": str(tmp_path / "picture.txt")})
    assert f"{tmp_path / 'picture.txt'}: a binary file (NUL bytes" in str(err.value)


# --- the text of a record -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("title", [r["title"] for r in RECORDS]),
        ("meta.lang", ["de", "ja", "en"]),
        ("meta.lines", ["a\nb", "一\n二", ""]),
        ("{title} ({meta.lang}): {body}", [f"{r['title']} ({r['meta']['lang']}): {r['body']}" for r in RECORDS]),  # noqa: E501
        ("{{literal}} {title}", [f"{{literal}} {r['title']}" for r in RECORDS]),
    ],
)
def test_field_dotted_path_list_and_template(text, expected, tmp_path):
    (tmp_path / "r.jsonl").write_bytes(jsonl(RECORDS))
    assert read_source({"path": str(tmp_path / "r.jsonl"), "text": text})[0] == expected


def test_numbers_become_text_and_a_key_with_a_dot_wins(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"n": 3, "a.b": "dotted key", "a": {"b": "nested"}}\n')
    assert read_source({"path": str(tmp_path / "r.jsonl"), "text": "{n}: {a.b}"})[0] == ["3: dotted key"]


def test_unknown_placeholder_names_the_fields_the_first_record_has(tmp_path):
    (tmp_path / "r.jsonl").write_bytes(jsonl(RECORDS))
    with pytest.raises(DataError) as err:
        read_source({"path": str(tmp_path / "r.jsonl"), "text": "{subject}\n{body}"})
    message = str(err.value)
    assert "has the unknown placeholder {subject}: line 1 has the fields title, body, meta" in message
    assert message.startswith(f"{tmp_path / 'r.jsonl'}: data.sources[0].text")


def test_record_without_the_field_is_an_error_naming_the_line_or_a_skip_when_asked(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(jsonl([RECORDS[0], {"title": "no body here"}, RECORDS[1]]))
    with pytest.raises(DataError) as err:
        read_source({"path": str(path), "text": "{title}\n{body}"})
    assert f"{path}: line 2 has no field 'body'" in str(err.value)
    assert "set data.sources[0].missing: skip" in str(err.value)
    docs, _ = read_source({"path": str(path), "text": "{title}\n{body}", "missing": "skip"})
    assert docs == [f"{r['title']}\n{r['body']}" for r in RECORDS[:2]]


def test_a_field_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"text": "fine"}, {"text": {"nested": "object"}}]))
    with pytest.raises(DataError, match=rf"{path}: record 1: field text is a dict, not text"):
        read_source({"path": str(path)})


# --- bad bytes and bad JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,content,where",
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "line 2"),
        ("bad.txt", b"line one\nline two\n" * 600 + b"caf\xe9\n", "line 1201"),
        ("bad.json", b'[{"text": "ok"}, {"text": "caf\xe9"}]', "byte 30"),
    ],
)
def test_invalid_utf8_names_the_file_and_the_line_or_byte(name, content, where, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    spec = {"path": str(path), "documents": "line"} if name.endswith(".txt") else {"path": str(path)}
    with pytest.raises(DataError) as err:
        read_source(spec)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and where in message and "UTF-8" in message, message


@pytest.mark.parametrize(
    "content,message",
    [
        (b'[{"text": "a"}, {"text": ', "record 1 is not valid JSON"),
        (b'{"text": "an object, not an array"}', "expected a JSON array"),
        (b'[{"text": "a"} {"text": "b"}]', "after record 0, expected ',' or ']'"),
        (b'[{"text": "a"}] [1]', "text after the JSON array"),
        (b'[{"text": "a"}, 3]', "record 1 is a JSON int"),
    ],
)
def test_malformed_json_names_the_record(content, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_source({"path": str(path)})
    assert str(err.value).startswith(f"{path}: ")


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=f"{path}: line 2 is not JSON"):
        read_source({"path": str(path)})


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_json_array_streams_across_block_boundaries(block):
    """Elements cut anywhere by the read blocks, numbers at a block's end, nesting, escapes, non-ASCII."""
    values = [{"text": "α" * 5, "n": 12345}, "plain", 67890, [1, [2, {"x": "}]"}]], {"t": '\\"\u4e2d'}, 1.5e3]
    data = ("\ufeff [ " + " ,\n".join(json.dumps(v, ensure_ascii=False) for v in values) + " ] \n").encode()
    got = [v for _, v in iter_json_array(io.BytesIO(data), "mem", block=block)]
    assert got == values
    assert list(iter_json_array(io.BytesIO(b" [ ] "), "mem", block=block)) == []


def test_a_record_too_long_is_refused_not_read_without_end(tmp_path, monkeypatch):
    import tinyllm.records as records

    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text('[{"text": "' + "x" * 5000 + '"}]')
    with pytest.raises(DataError, match="record 0 is not valid JSON or longer than"):
        [v for _, v in iter_json_array(open(path, "rb"), str(path), block=256)]
    assert MAX_RECORD_BYTES >= 1 << 20
