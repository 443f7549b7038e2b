"""Data faults: a source of no known format, not UTF-8, malformed JSON, a record without its text; an archive
member glob that matches nothing, links in an archive; a corpus without documents or a split; malformed or
empty TinyStories shards; damaged pretokenized shards; a tokenizer missing, or a vocabulary too small or too
big. Each is one line naming the file (and line, record, byte or position) or the setting to change, and
leaves no output that looks done.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    assert_one_line,
    make_tar_gz,
    run_snakemake,
    write_json,
    write_stories_text,
    write_tiny_config,
)
from corpora import MEMBERS, RECORDS, jsonl, prepare, read_source, tar_bytes
from tinyllm import shards
from tinyllm.batches import PretokDataset, check_pretokenized_shard
from tinyllm.errors import ConfigError, DataError
from tinyllm.records import MAX_RECORD_BYTES, iter_json_array
from tinyllm.shards import load_stories, pretokenize_shard, write_tiny_txt
from tinyllm.sources import local_files
from tinyllm.tokenizer import Tokenizer, train_tokenizer

# --- sources: files, archives, records ------------------------------------------------------------------


def test_an_unknown_extension_without_a_format_is_named(tmp_path):
    path = tmp_path / "dump.data"
    path.write_bytes(jsonl(RECORDS))
    with pytest.raises(DataError, match=r"dump.data: cannot tell the format from the name; set data.source"):
        read_source({"path": str(path)})


def test_a_path_or_glob_that_finds_nothing_is_named(tmp_path):
    (tmp_path / "1.txt").write_text("one")
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path: '.*\*.md' matches no file"):
        local_files(str(tmp_path / "*.md"), "data.sources[0]")
    with pytest.raises(ConfigError, match="no such file or folder"):
        local_files(str(tmp_path / "nope"), "data.sources[0]")


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


def test_a_record_too_long_is_refused_not_read_without_end(tmp_path, monkeypatch):
    import tinyllm.records as records

    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text('[{"text": "' + "x" * 5000 + '"}]')
    with pytest.raises(DataError, match="record 0 is not valid JSON or longer than"):
        [v for _, v in iter_json_array(open(path, "rb"), str(path), block=256)]
    assert MAX_RECORD_BYTES >= 1 << 20


# --- the corpus prepare writes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files,validation,message",
    [
        ({"a.jsonl": '{"text": "x"}\n'}, {"fraction": 0.01}, "the validation split is empty .*raise "
                                                              "data.validation.fraction"),
        ({"a.jsonl": '{"text": "x"}\n'}, {"files": ["a.jsonl"]}, "the training split is empty"),
        ({"a.jsonl": '{"text": "  "}\n{"text": ""}\n'}, {}, r"data.sources\[0\] \(a, .*\): every document is "
                                                            "empty or a duplicate"),
        ({"a.json": "[]"}, {}, r"data.sources\[0\] .*: no documents in its 1 file\(s\) read"),
    ],
)
def test_bad_corpus_fails_in_one_line_and_writes_nothing(files, validation, message, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    sources = [{"path": str(tmp_path / name)} for name in files]
    with pytest.raises(DataError, match=message) as err:
        prepare(tmp_path, sources, validation=validation)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # neither output nor temporary


def test_a_glob_catching_only_binary_files_is_a_source_without_documents(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"\x00\x01binary")
    with pytest.raises(DataError, match=r"no documents in its 0 file\(s\) read, 1 skipped"):
        prepare(tmp_path, [{"path": str(tmp_path / "in")}])


# --- TinyStories shards; in the workflow, the rule that reads a bad one stops there ----------------------


@pytest.mark.parametrize(
    "content,message",
    [
        ('[{"story": "ok"}, {"story": ', r"not valid JSON \(.* line 1 column"),
        ('{"story": "not in a list"}', "expected a JSON array"),
        ([{"story": "ok"}, {"story": "ok"}, {"text": "no story"}], 'entry 2 has no "story"'),
        ([{"story": "ok"}, {"story": 42}], 'entry 1 has a "story" that is a int'),
        ([{"story": "ok"}, "just a string"], "entry 1 is a str, not an object"),
        ([{"story": "ok"}, {"story": ""}], 'entry 1 has a "story" that is empty'),
        ([{"story": "ok"}, {"story": "ok"}, {"story": " \n\t "}], 'entry 2 .* that is only whitespace'),
        ("[]", r"no stories \(an empty JSON array\)"),
    ],
    ids=[
        "bad-json", "not-a-list", "missing-story", "story-not-string", "entry-not-object", "empty-story",
        "whitespace-story", "no-stories",
    ],  # fmt: skip
)
def test_malformed_shard_names_file_and_entry(content, message, small_tokenizer, tmp_path):
    shard = write_json(tmp_path / "data09.json", content)
    for action in (
        lambda: load_stories(shard),
        lambda: write_tiny_txt([shard], tmp_path / "tiny.txt"),
        lambda: pretokenize_shard(shard, small_tokenizer, tmp_path / "data09.bin"),
    ):
        with pytest.raises(DataError, match=message) as err:
            action()
        assert str(shard) in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data09.json"]


def test_vocabulary_beyond_uint16_is_refused(shards_dir, small_tokenizer, tmp_path, monkeypatch):
    class HugeVocab(Tokenizer):
        def __init__(self, path):
            super().__init__(path)
            self.n_words = 70_000

    monkeypatch.setattr(shards, "Tokenizer", HugeVocab)
    with pytest.raises(ValueError, match="70000 tokens does not fit uint16"):
        pretokenize_shard(shards_dir / "data00.json", small_tokenizer, tmp_path / "data00.bin")
    assert not (tmp_path / "data00.bin").exists()


@pytest.mark.slow  # Snakemake runs download and prepare: about 3 s
def test_empty_stories_stop_prepare_with_one_line(shards_dir, tmp_path):
    """An archive whose data01.json is 1,000 empty stories: the training split is empty, so prepare fails with
    one line saying so, and nothing after it (tiny_txt, tokenizer, pretokenize, train) runs."""
    archive = make_tar_gz(
        tmp_path / "TinyStories_empty.tar.gz",
        {
            "data00.json": (shards_dir / "data00.json").read_bytes(),
            "data01.json": json.dumps([{"story": ""}] * 1000).encode(),
        },
    )
    config = write_tiny_config(shards_dir, tmp_path, data={"url": str(archive)})
    target = "results/tok512/train_0000.bin"
    run = run_snakemake(tmp_path, "--cores", "1", target, configfiles=(config,), check=False)
    assert run.returncode != 0
    line = next(x for x in run.stderr.splitlines() if x.startswith("error: "))
    assert "the training split is empty" in line, run.stderr[-3000:]
    assert not (tmp_path / "results" / "corpus").exists()
    assert not (tmp_path / "results" / "data" / "tiny.txt").exists()
    assert not (tmp_path / "logs" / "tokenizer").exists()


# --- pretokenized shards -----------------------------------------------------------------------------------


def test_dataset_errors_name_the_folder(numbered_shards, tmp_path):
    (numbered_shards / "data02.bin").unlink()
    (numbered_shards / "data01.bin").unlink()
    with pytest.raises(FileNotFoundError, match=f"{numbered_shards}.*'train'"):
        PretokDataset(numbered_shards, "train", 16)
    too_small = f"{numbered_shards}: the val split holds 300 tokens .* too small for one"
    with pytest.raises(DataError, match=too_small):
        PretokDataset(numbered_shards, "val", 300)
    with pytest.raises(ValueError, match="split must be"):
        PretokDataset(numbered_shards, "test", 16)


def test_an_id_outside_the_vocabulary_is_named_with_its_position(numbered_shards):
    """A shard changed in place, same size: token 600 written into a vocab-512 shard."""
    shard = numbered_shards / "data00.bin"
    ids = np.arange(300, dtype="<u2") % 512
    ids[[123, 200]] = [600, 700]
    ids.tofile(shard)
    with pytest.raises(DataError) as err:
        check_pretokenized_shard(shard, vocab_size=512)
    assert_one_line(err, str(shard), "token id 600 at position 123", "vocabulary of 512 tokens")
    assert check_pretokenized_shard(shard, vocab_size=701) == 300  # every id below the vocabulary size


def test_an_odd_sized_shard_is_named_by_the_check_and_by_the_dataset(numbered_shards):
    shard = numbered_shards / "data01.bin"
    with open(shard, "r+b") as f:
        f.truncate(3999)  # `truncate -s -1`
    with pytest.raises(DataError) as err:
        check_pretokenized_shard(shard, vocab_size=65536)
    assert_one_line(err, str(shard), "3999 bytes is not a whole number of 2-byte token ids")
    with pytest.raises(DataError) as err:  # not numpy's "Size of available data is not a multiple"
        PretokDataset(numbered_shards, "train", 16)
    assert_one_line(err, str(shard), "3999 bytes")


def test_an_empty_shard_is_named(numbered_shards):
    shard = numbered_shards / "data02.bin"
    shard.write_bytes(b"")
    with pytest.raises(DataError) as err:
        check_pretokenized_shard(shard, vocab_size=512)
    assert_one_line(err, str(shard), "empty shard")


# --- the tokenizer -----------------------------------------------------------------------------------------


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="tokenizer model not found: .*nope.model"):
        Tokenizer(tmp_path / "nope.model")
    with pytest.raises(DataError, match="training text not found"):
        train_tokenizer(tmp_path / "missing.txt", tmp_path / "tok", 300)


def required_pieces(err: pytest.ExceptionInfo) -> int:
    return int(re.search(r"smaller than the (\d+) pieces", str(err.value)).group(1))


def test_vocabulary_too_small_for_the_text_names_both_numbers_and_both_settings(shards_dir, tmp_path):
    text = write_stories_text(shards_dir, tmp_path / "tiny.txt")
    with pytest.raises(ConfigError) as err:
        train_tokenizer(text, tmp_path / "out" / "tok260", 260, quiet=True)
    message, required = str(err.value), required_pieces(err)
    assert "\n" not in message and "tokenizer.vocab_size 260 is smaller than" in message
    assert required > 260 and f"at least {required}" in message and "tokenizer.character_coverage" in message
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

    # Both fixes it names work: a lower coverage needs fewer pieces, and the vocabulary it asks for trains.
    with pytest.raises(ConfigError) as fewer:
        train_tokenizer(text, tmp_path / "out" / "tok260", 260, character_coverage=0.99, quiet=True)
    assert required_pieces(fewer) < required and "character_coverage 0.99," in str(fewer.value)
    model = train_tokenizer(text, tmp_path / "out" / f"tok{required}", required, quiet=True)
    assert Tokenizer(model).n_words == required


@pytest.mark.slow  # Snakemake runs the data rules up to the tokenizer: about 4 s
def test_tokenizer_rule_with_too_small_a_vocabulary_fails_in_one_line(shards_dir, tmp_path):
    """tokenizer.vocab_size 260 (the schema's minimum): the console names the numbers and the settings; the
    rule's log keeps SentencePiece's own lines."""
    config = write_tiny_config(shards_dir, tmp_path, tokenizer={"vocab_size": 260})
    target = "results/tok260/tok260.model"
    run = run_snakemake(tmp_path, "--cores", "1", target, configfiles=(config,), check=False)
    assert run.returncode != 0
    line = next(x for x in run.stderr.splitlines() if x.startswith("error: "))
    assert "tokenizer.vocab_size 260 is smaller than" in line and "tokenizer.character_coverage 1," in line
    log = (tmp_path / "logs" / "tokenizer" / "tok260.log").read_text()
    assert "trainer_interface.cc" in log and "Vocabulary size is smaller than required_chars" in log
    assert not (tmp_path / target).exists()


def test_vocabulary_too_big_for_the_corpus_is_one_line(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("a tiny corpus of few words\n" * 50)
    with pytest.raises(ConfigError) as err:
        train_tokenizer(text, tmp_path / "out" / "tok4096", 4096, quiet=True)
    message = str(err.value)
    assert message.startswith("tokenizer.vocab_size 4096 is too big for the corpus: ") and "\n" not in message
    most = int(re.search(r"at most (\d+) pieces", message).group(1))
    assert f"lower tokenizer.vocab_size to {most} or less" in message
    assert Tokenizer(train_tokenizer(text, tmp_path / "out" / "tokmost", most, quiet=True)).n_words == most
    assert not (tmp_path / "out" / "tok4096.model").exists()


def test_too_small_a_vocabulary_at_the_lowest_coverage_does_not_advise_lowering_it(shards_dir, tmp_path):
    text = write_stories_text(shards_dir, tmp_path / "tiny.txt")
    with pytest.raises(ConfigError) as err:
        train_tokenizer(text, tmp_path / "tok260", 260, character_coverage=0.98, quiet=True)
    assert "raise tokenizer.vocab_size to at least" in str(err.value)
    assert "character_coverage (not below" not in str(err.value)
    with pytest.raises(ConfigError, match=r"lower tokenizer.character_coverage \(not below 0.98\)"):
        train_tokenizer(text, tmp_path / "tok260", 260, character_coverage=1.0, quiet=True)
