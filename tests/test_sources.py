"""tinyllm.sources: every format, compression, archive and text setting. Every bad input, in one line, is in
tests/faults/test_data.py."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile

import pytest
from corpora import LETTERS, MEMBERS, RECORDS, jsonl, read_source, tar_bytes
from tinyllm.records import iter_json_array


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


# --- bad bytes and bad JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_json_array_streams_across_block_boundaries(block):
    """Elements cut anywhere by the read blocks, numbers at a block's end, nesting, escapes, non-ASCII."""
    values = [{"text": "α" * 5, "n": 12345}, "plain", 67890, [1, [2, {"x": "}]"}]], {"t": '\\"\u4e2d'}, 1.5e3]
    data = ("\ufeff [ " + " ,\n".join(json.dumps(v, ensure_ascii=False) for v in values) + " ] \n").encode()
    got = [v for _, v in iter_json_array(io.BytesIO(data), "mem", block=block)]
    assert got == values
    assert list(iter_json_array(io.BytesIO(b" [ ] "), "mem", block=block)) == []


