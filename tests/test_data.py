"""tinyllm.data: archive extraction, tiny.txt, pretokenization, and the training batch stream."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import make_tar_gz
from tinyllm import data
from tinyllm.data import (
    ArchiveError,
    PretokDataset,
    ShardFormatError,
    extract_shard,
    iter_batches,
    load_stories,
    pretokenize_shard,
    write_tiny_txt,
)
from tinyllm.tokenizer import Tokenizer

torch.set_num_threads(1)


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
    with pytest.raises(ArchiveError, match="no shard data07.json"):
        extract_shard(tinystories_archive, "data07.json", tmp_path / "data07.json")
    deep = make_tar_gz(tmp_path / "deep.tar.gz", {"a/b/data07.json": b"[]"})
    with pytest.raises(ArchiveError, match="no shard data07.json"):
        extract_shard(deep, "data07.json", tmp_path / "data07.json")
    assert not (tmp_path / "data07.json").exists()


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
    with pytest.raises(ArchiveError, match=reason):
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
    ],
    ids=["bad-json", "not-a-list", "missing-story", "story-not-string", "entry-not-object"],
)
def test_malformed_shard_names_file_and_entry(content, message, small_tokenizer, tmp_path):
    shard = write_json(tmp_path / "data09.json", content)
    for action in (
        lambda: load_stories(shard),
        lambda: write_tiny_txt([shard], tmp_path / "tiny.txt"),
        lambda: pretokenize_shard(shard, small_tokenizer, tmp_path / "data09.bin"),
    ):
        with pytest.raises(ShardFormatError, match=message) as err:
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

    monkeypatch.setattr(data, "Tokenizer", HugeVocab)
    with pytest.raises(ValueError, match="70000 tokens does not fit uint16"):
        pretokenize_shard(shards_dir / "data00.json", small_tokenizer, tmp_path / "data00.bin")
    assert not (tmp_path / "data00.bin").exists()


# --- PretokDataset and iter_batches -------------------------------------------------------------------------


@pytest.fixture
def bin_dir(tmp_path):
    """Shards whose tokens tell where they came from: shard k holds k * 10000 + 0, 1, 2, ..."""
    for shard, length in enumerate([300, 2000, 800]):
        (shard * 10_000 + np.arange(length)).astype("<u2").tofile(tmp_path / f"data{shard:02d}.bin")
    return tmp_path


def take(batches, n):
    return [next(batches) for _ in range(n)]


def assert_same_stream(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_are_contiguous_windows_with_shifted_targets(bin_dir):
    for x, y in take(iter_batches(bin_dir, "train", 8, 32, "cpu"), 5):
        assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert torch.all(y - x == 1)  # consecutive tokens of one shard: the window never straddles shards


def test_splits_read_their_own_shards(bin_dir):
    val = torch.cat([x for x, _ in take(iter_batches(bin_dir, "val", 8, 32, "cpu"), 10)])
    train = torch.cat([x for x, _ in take(iter_batches(bin_dir, "train", 8, 32, "cpu"), 20)])
    assert set((val // 10_000).unique().tolist()) == {0}
    assert set((train // 10_000).unique().tolist()) == {1, 2}


def test_an_explicit_shard_list_ignores_other_shards_in_the_folder(bin_dir):
    """The train rule passes its inputs: shards of an earlier run with more data.shards must not leak in."""
    chosen = [bin_dir / "data00.bin", bin_dir / "data01.bin"]
    train = torch.cat([x for x, _ in take(iter_batches(chosen, "train", 8, 32, "cpu"), 20)])
    assert set((train // 10_000).unique().tolist()) == {1}
    with pytest.raises(FileNotFoundError, match="no pretokenized shards for the 'train' split"):
        iter_batches(chosen[:1], "train", 8, 32, "cpu").__next__()


def test_same_seed_same_stream_and_resume_matches(bin_dir):
    full = take(iter_batches(bin_dir, "train", 4, 16, "cpu", seed=7), 10)
    assert_same_stream(full, take(iter_batches(bin_dir, "train", 4, 16, "cpu", seed=7), 10))
    resumed = take(iter_batches(bin_dir, "train", 4, 16, "cpu", seed=7, start_batch=6), 4)
    assert_same_stream(full[6:], resumed)
    other_seed = take(iter_batches(bin_dir, "train", 4, 16, "cpu", seed=8), 10)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other_seed, strict=True))


def test_ranks_get_different_streams(bin_dir):
    rank0 = take(iter_batches(bin_dir, "train", 4, 16, "cpu", rank=0, world_size=2), 5)
    rank1 = take(iter_batches(bin_dir, "train", 4, 16, "cpu", rank=1, world_size=2), 5)
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(rank0, rank1, strict=True))
    with pytest.raises(ValueError, match="rank 2"):
        PretokDataset(bin_dir, "train", 16, rank=2, world_size=2)


def test_dataloader_workers_do_not_change_the_stream(bin_dir):
    plain = take(iter_batches(bin_dir, "train", 4, 16, "cpu", start_batch=3), 6)
    workers = take(iter_batches(bin_dir, "train", 4, 16, "cpu", start_batch=3, num_workers=2), 6)
    assert_same_stream(plain, workers)


def test_dataset_items_follow_batch_order(bin_dir):
    dataset = PretokDataset(bin_dir, "train", 16, batch_size=3, start_batch=2)
    assert isinstance(dataset, torch.utils.data.IterableDataset)
    items = iter(dataset)
    x2, y2 = dataset.batch_arrays(2)
    for row in range(3):
        x, y = next(items)
        assert x.shape == (16,) and np.array_equal(x.numpy(), x2[row]) and np.array_equal(y.numpy(), y2[row])
    assert np.array_equal(next(items)[0].numpy(), dataset.batch_arrays(3)[0][0])


def test_dataset_errors_name_the_folder(bin_dir, tmp_path):
    (bin_dir / "data02.bin").unlink()
    (bin_dir / "data01.bin").unlink()
    with pytest.raises(FileNotFoundError, match=f"{bin_dir}.*'train'"):
        PretokDataset(bin_dir, "train", 16)
    with pytest.raises(ValueError, match=f"{bin_dir}.*data00.bin holds fewer than max_seq_len"):
        PretokDataset(bin_dir, "val", 300)
    with pytest.raises(ValueError, match="split must be"):
        PretokDataset(bin_dir, "test", 16)


# --- rule-script logging ------------------------------------------------------------------------------------


def test_log_stderr_to_sends_traceback_to_log_and_one_line_to_console(tmp_path):
    log = tmp_path / "job.log"
    script = (
        "import os, sys\n"
        "from tinyllm.data import log_stderr_to, DownloadError\n"
        f"log_stderr_to({str(log)!r})\n"
        "print('python stderr line', file=sys.stderr)\n"
        "os.write(2, b'native stderr line\\n')\n"
        "raise DownloadError('HTTP 404 Not Found: http://example.org/x.tar.gz')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr == "DownloadError: HTTP 404 Not Found: http://example.org/x.tar.gz\n"
    logged = log.read_text()
    assert "python stderr line" in logged and "native stderr line" in logged and "Traceback" in logged
