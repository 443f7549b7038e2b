"""tinyllm.batches: the training batch stream from pretokenized shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinyllm.batches import (
    PretokDataset,
    check_pretokenized_shard,
    iter_batches,
    shard_split,
    split_shards,
    tokens_per_byte,
)
from tinyllm.errors import DataError
from tinyllm.shards import load_stories
from tinyllm.tokenizer import Tokenizer

torch.set_num_threads(1)


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


def test_stream_is_the_datasets_batches_in_order(bin_dir):
    """Batch b depends on (seed, rank, b) alone: iter_batches from start_batch s yields batch s, s + 1, ..."""
    dataset = PretokDataset(bin_dir, "train", 16, seed=3, batch_size=3)
    stream = take(iter_batches(bin_dir, "train", 3, 16, "cpu", seed=3, start_batch=2), 4)
    for got, batch in zip(stream, range(2, 6), strict=True):
        x, y = dataset.batch_arrays(batch)
        assert np.array_equal(got[0].numpy(), x) and np.array_equal(got[1].numpy(), y)
    with pytest.raises(ValueError, match="start_batch"):
        next(iter_batches(bin_dir, "train", 3, 16, "cpu", start_batch=-1))


def test_dataset_errors_name_the_folder(bin_dir, tmp_path):
    (bin_dir / "data02.bin").unlink()
    (bin_dir / "data01.bin").unlink()
    with pytest.raises(FileNotFoundError, match=f"{bin_dir}.*'train'"):
        PretokDataset(bin_dir, "train", 16)
    with pytest.raises(DataError, match=f"{bin_dir}: the val split holds 300 tokens .* too small for one"):
        PretokDataset(bin_dir, "val", 300)
    with pytest.raises(ValueError, match="split must be"):
        PretokDataset(bin_dir, "test", 16)


def test_prepared_shard_names_give_the_split_and_short_shards_are_left_out(tmp_path):
    """val_NNNN.bin / train_NNNN.bin (the prepared corpus), beside the tokenizer's run.c file: the last shard
    of a split is often short; it gives no window and is left out rather than failing the run."""
    for name, length in [("val_0000", 400), ("train_0000", 900), ("train_0001", 20), ("tok512", 50)]:
        (int(name[-1]) * 10_000 + np.arange(length)).astype("<u2").tofile(tmp_path / f"{name}.bin")
    assert [p.name for p in split_shards(tmp_path, "val")] == ["val_0000.bin"]
    assert [p.name for p in split_shards(tmp_path, "train")] == ["train_0000.bin", "train_0001.bin"]
    names = ("data00.bin", "data07.bin", "tok512.bin")
    assert [shard_split(tmp_path / n) for n in names] == ["val", "train", None]
    dataset = PretokDataset(tmp_path, "train", 32, batch_size=16)
    assert [p.name for p in dataset.shards] == ["train_0000.bin"]
    x, _ = dataset.batch_arrays(0)
    assert set((x // 10_000).flatten().tolist()) == {0}


# --- checking a shard before training on it -----------------------------------------------------------------


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_a_valid_shard_passes_and_its_tokens_are_counted(bin_dir):
    assert check_pretokenized_shard(bin_dir / "data01.bin", vocab_size=12_000) == 2000


def test_an_id_outside_the_vocabulary_is_named_with_its_position(bin_dir):
    """A shard changed in place, same size: token 600 written into a vocab-512 shard."""
    shard = bin_dir / "data00.bin"
    ids = np.arange(300, dtype="<u2") % 512
    ids[[123, 200]] = [600, 700]
    ids.tofile(shard)
    with pytest.raises(DataError) as err:
        check_pretokenized_shard(shard, vocab_size=512)
    assert_one_line(err, str(shard), "token id 600 at position 123", "vocabulary of 512 tokens")
    assert check_pretokenized_shard(shard, vocab_size=701) == 300  # every id below the vocabulary size


def test_an_odd_sized_shard_is_named_by_the_check_and_by_the_dataset(bin_dir):
    shard = bin_dir / "data01.bin"
    with open(shard, "r+b") as f:
        f.truncate(3999)  # `truncate -s -1`
    with pytest.raises(DataError) as err:
        check_pretokenized_shard(shard, vocab_size=65536)
    assert_one_line(err, str(shard), "3999 bytes is not a whole number of 2-byte token ids")
    with pytest.raises(DataError) as err:  # not numpy's "Size of available data is not a multiple"
        PretokDataset(bin_dir, "train", 16)
    assert_one_line(err, str(shard), "3999 bytes")


def test_an_empty_shard_is_named(bin_dir):
    shard = bin_dir / "data02.bin"
    shard.write_bytes(b"")
    with pytest.raises(DataError) as err:
        check_pretokenized_shard(shard, vocab_size=512)
    assert_one_line(err, str(shard), "empty shard")



def test_tokens_per_byte_matches_the_text(tiny_data, shards_dir):
    bin_dir, model = tiny_data
    stories = load_stories(shards_dir / "data00.json")[:150]
    expected = (np.fromfile(bin_dir / "data00.bin", dtype="<u2").size
                / sum(len(s.encode("utf-8")) for s in stories))  # fmt: skip
    assert tokens_per_byte(bin_dir / "data00.bin", Tokenizer(model)) == pytest.approx(expected, rel=1e-3)
