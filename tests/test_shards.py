"""tinyllm.shards: archive extraction, reading stories, tiny.txt and pretokenization."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from conftest import make_tar_gz, run_snakemake, write_tiny_config
from tinyllm import shards
from tinyllm.errors import DataError
from tinyllm.shards import (
    extract_shard,
    load_stories,
    pretokenize_shard,
    write_tiny_txt,
)
from tinyllm.tokenizer import Tokenizer

# --- extract ------------------------------------------------------------------------------------------------


def test_extract_shard_copies_the_member(tinystories_archive, shards_dir, tmp_path):
    output = tmp_path / "shards" / "data01.json"
    extract_shard(tinystories_archive, "data01.json", output)
    assert output.read_bytes() == (shards_dir / "data01.json").read_bytes()
    assert sorted(p.name for p in output.parent.iterdir()) == ["data01.json"]  # no temporary left


def test_extract_shard_accepts_one_top_folder(tmp_path):
    archive = make_tar_gz(tmp_path / "a.tar.gz", {"./TinyStories/data03.json": b"[]"})
    extract_shard(archive, "data03.json", tmp_path / "out.json")
    assert (tmp_path / "out.json").read_bytes() == b"[]"


def test_missing_shard_is_named(tinystories_archive, tmp_path):
    with pytest.raises(DataError, match="no shard data07.json"):
        extract_shard(tinystories_archive, "data07.json", tmp_path / "data07.json")
    deep = make_tar_gz(tmp_path / "deep.tar.gz", {"a/b/data07.json": b"[]"})
    with pytest.raises(DataError, match="no shard data07.json"):
        extract_shard(deep, "data07.json", tmp_path / "data07.json")
    assert not (tmp_path / "data07.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_damaged_archive_names_archive_and_shard(damage, tinystories_archive, tmp_path):
    """Cut short before data01.json ends, or not gzip at all: one line, not a bare EOFError or ReadError.

    (Extraction reads only up to its shard, so damage past it is download's check to catch, not this one's.)
    """
    archive_bytes = tinystories_archive.read_bytes()
    if damage == "truncated":
        archive_bytes = archive_bytes[: len(archive_bytes) * 3 // 4]
    else:
        archive_bytes = b"<html><body>Sign in to continue</body></html>"
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(bytes(archive_bytes))
    output = tmp_path / "shards" / "data01.json"
    with pytest.raises(DataError, match=f"{archive}: cannot extract data01.json: the archive is") as err:
        extract_shard(archive, "data01.json", output)
    assert "\n" not in str(err.value)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["archive.tar.gz"]  # not even a temporary


def tar_with(path, *members: tarfile.TarInfo, contents: dict[str, bytes] | None = None):
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            body = (contents or {}).get(info.name)
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def file_entry(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


@pytest.mark.parametrize(
    "member,reason",
    [
        (file_entry("../data01.json"), "outside"),
        (file_entry("/data01.json"), "absolute"),
        (link("data01.json", "../../outside.json"), "link"),
        (link("data01.json", "/etc/passwd"), "link"),
        (link("data01.json", "data00.json", tarfile.LNKTYPE), "link"),
        (link("data01.json", "", tarfile.CHRTYPE), "device"),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink", "char-device"],
)
def test_unsafe_member_is_refused_and_nothing_is_written(member, reason, tmp_path):
    archive = tar_with(
        tmp_path / "evil.tar.gz",
        file_entry("data00.json"),
        member,
        contents={"data00.json": b"[]", "../data01.json": b"evil", "/data01.json": b"evil"},
    )
    target = tmp_path / "work" / "results"
    with pytest.raises(DataError, match=reason):
        extract_shard(archive, "data01.json", target / "data01.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]  # nothing beside or inside target


def test_unsafe_neighbours_are_never_written(tmp_path):
    archive = tar_with(
        tmp_path / "mixed.tar.gz",
        file_entry("../evil"),
        link("evil_link", "/etc/passwd"),
        file_entry("data00.json"),
        contents={"../evil": b"evil", "data00.json": b"[]"},
    )
    out = tmp_path / "work" / "data00.json"
    extract_shard(archive, "data00.json", out)
    assert out.read_bytes() == b"[]"
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["mixed.tar.gz", "work", "work/data00.json"]


# --- stories and tiny.txt -----------------------------------------------------------------------------------


def write_json(path, value):
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)
    return path


def test_tiny_txt_holds_one_stripped_story_per_line(shards_dir, tmp_path):
    small = write_json(
        tmp_path / "data05.json", [{"story": "  First story.\nSecond paragraph.  \n"}, {"story": "B"}]
    )
    output = tmp_path / "out" / "tiny.txt"
    count = write_tiny_txt([small, shards_dir / "data00.json"], output)
    stories = [e["story"] for e in json.loads((shards_dir / "data00.json").read_text())]
    assert count == 2 + len(stories)
    expected = "First story.\nSecond paragraph.\nB\n" + "".join(s.strip() + "\n" for s in stories)
    assert output.read_text(encoding="utf-8") == expected  # inner newlines kept, as llama2.c's train_vocab
    assert sorted(p.name for p in output.parent.iterdir()) == ["tiny.txt"]


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


# --- pretokenize --------------------------------------------------------------------------------------------


def test_pretokenize_equals_per_story_encode_with_bos(shards_dir, small_tokenizer, tmp_path):
    output = tmp_path / "data00.bin"
    count = pretokenize_shard(shards_dir / "data00.json", small_tokenizer, output)
    tok = Tokenizer(small_tokenizer)
    entries = json.loads((shards_dir / "data00.json").read_text())
    expected = [i for e in entries for i in tok.encode(e["story"].strip(), bos=True, eos=False)]
    written = np.fromfile(output, dtype="<u2")
    assert count == len(written) == len(expected)
    np.testing.assert_array_equal(written, expected)
    assert written[0] == tok.bos_id and tok.eos_id not in written


def test_vocabulary_beyond_uint16_is_refused(shards_dir, small_tokenizer, tmp_path, monkeypatch):
    class HugeVocab(Tokenizer):
        def __init__(self, path):
            super().__init__(path)
            self.n_words = 70_000

    monkeypatch.setattr(shards, "Tokenizer", HugeVocab)
    with pytest.raises(ValueError, match="70000 tokens does not fit uint16"):
        pretokenize_shard(shards_dir / "data00.json", small_tokenizer, tmp_path / "data00.bin")
    assert not (tmp_path / "data00.bin").exists()


# --- in the workflow: the rule that reads a bad shard stops there -------------------------------------------


def test_empty_stories_stop_the_first_rule_that_reads_them(shards_dir, tmp_path):
    """An archive whose data01.json is 1,000 empty stories: tiny_txt fails with one line naming the shard and
    the entry, and nothing after it (tokenizer, pretokenize, train) runs."""
    archive = make_tar_gz(
        tmp_path / "TinyStories_empty.tar.gz",
        {
            "data00.json": (shards_dir / "data00.json").read_bytes(),
            "data01.json": json.dumps([{"story": ""}] * 1000).encode(),
        },
    )
    config = write_tiny_config(shards_dir, tmp_path, data={"url": str(archive)})
    target = "results/tok512/data01.bin"
    run = run_snakemake(tmp_path, "--cores", "1", target, configfiles=(config,), check=False)
    assert run.returncode != 0
    shard = "results/data/TinyStories_all_data/data01.json"
    assert f'error: {shard}: entry 0 has a "story" that is empty\n' in run.stderr
    assert not (tmp_path / "results" / "data" / "tiny.txt").exists()
    assert not (tmp_path / "logs" / "tokenizer").exists()
