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
from tinyllm.shards import load_stories
from tinyllm.tokenizer import Tokenizer

torch.set_num_threads(1)


# --- PretokDataset and iter_batches -------------------------------------------------------------------------


def take(batches, n):
    return [next(batches) for _ in range(n)]


def assert_same_stream(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_are_contiguous_windows_with_shifted_targets(numbered_shards):
    for x, y in take(iter_batches(numbered_shards, "train", 8, 32, "cpu"), 5):
        assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert torch.all(y - x == 1)  # consecutive tokens of one shard: the window never straddles shards


def test_splits_read_their_own_shards(numbered_shards):
    val = torch.cat([x for x, _ in take(iter_batches(numbered_shards, "val", 8, 32, "cpu"), 10)])
    train = torch.cat([x for x, _ in take(iter_batches(numbered_shards, "train", 8, 32, "cpu"), 20)])
    assert set((val // 10_000).unique().tolist()) == {0}
    assert set((train // 10_000).unique().tolist()) == {1, 2}


def test_an_explicit_shard_list_ignores_other_shards_in_the_folder(numbered_shards):
    """The train rule passes its inputs: shards of an earlier run with more data.shards must not leak in."""
    chosen = [numbered_shards / "data00.bin", numbered_shards / "data01.bin"]
    train = torch.cat([x for x, _ in take(iter_batches(chosen, "train", 8, 32, "cpu"), 20)])
    assert set((train // 10_000).unique().tolist()) == {1}
    with pytest.raises(FileNotFoundError, match="no pretokenized shards for the 'train' split"):
        iter_batches(chosen[:1], "train", 8, 32, "cpu").__next__()


def test_same_seed_same_stream_and_resume_matches(numbered_shards):
    full = take(iter_batches(numbered_shards, "train", 4, 16, "cpu", seed=7), 10)
    assert_same_stream(full, take(iter_batches(numbered_shards, "train", 4, 16, "cpu", seed=7), 10))
    resumed = take(iter_batches(numbered_shards, "train", 4, 16, "cpu", seed=7, start_batch=6), 4)
    assert_same_stream(full[6:], resumed)
    other_seed = take(iter_batches(numbered_shards, "train", 4, 16, "cpu", seed=8), 10)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other_seed, strict=True))


def test_ranks_get_different_streams(numbered_shards):
    rank0 = take(iter_batches(numbered_shards, "train", 4, 16, "cpu", rank=0, world_size=2), 5)
    rank1 = take(iter_batches(numbered_shards, "train", 4, 16, "cpu", rank=1, world_size=2), 5)
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(rank0, rank1, strict=True))
    with pytest.raises(ValueError, match="rank 2"):
        PretokDataset(numbered_shards, "train", 16, rank=2, world_size=2)


def test_stream_is_the_datasets_batches_in_order(numbered_shards):
    """Batch b depends on (seed, rank, b) alone: iter_batches from start_batch s yields batch s, s + 1, ..."""
    dataset = PretokDataset(numbered_shards, "train", 16, seed=3, batch_size=3)
    stream = take(iter_batches(numbered_shards, "train", 3, 16, "cpu", seed=3, start_batch=2), 4)
    for got, batch in zip(stream, range(2, 6), strict=True):
        x, y = dataset.batch_arrays(batch)
        assert np.array_equal(got[0].numpy(), x) and np.array_equal(got[1].numpy(), y)
    with pytest.raises(ValueError, match="start_batch"):
        next(iter_batches(numbered_shards, "train", 3, 16, "cpu", start_batch=-1))


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


def test_a_valid_shard_passes_and_its_tokens_are_counted(numbered_shards):
    assert check_pretokenized_shard(numbered_shards / "data01.bin", vocab_size=12_000) == 2000


def test_tokens_per_byte_matches_the_text(tiny_data, shards_dir):
    data_dir, model = tiny_data
    stories = load_stories(shards_dir / "data00.json")[:150]
    expected = (np.fromfile(data_dir / "data00.bin", dtype="<u2").size
                / sum(len(s.encode("utf-8")) for s in stories))  # fmt: skip
    assert tokens_per_byte(data_dir / "data00.bin", Tokenizer(model)) == pytest.approx(expected, rel=1e-3)
