"""Training batches from pretokenized shards (flat uint16 token ids, see tinyllm.shards).

Batch number b of a split is a pure function of (seed, rank, b), so a resumed run sees exactly the batches an
uninterrupted one would, and each data-parallel rank its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinyllm.errors import DataError

VAL_SHARD = "data00.bin"
SPLITS = ("train", "val")
TOKEN_DTYPE = np.dtype("<u2")
_REMEDY = "delete it and rerun the workflow to pretokenize it again"


def shard_tokens(path: str | os.PathLike) -> int:
    """How many token ids the shard holds; DataError if its size is not a whole number of them."""
    size = os.path.getsize(path)
    if size % TOKEN_DTYPE.itemsize:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of {TOKEN_DTYPE.itemsize}-byte token ids "
            f"(truncated or damaged); {_REMEDY}"
        )
    return size // TOKEN_DTYPE.itemsize


def check_pretokenized_shard(path: str | os.PathLike, vocab_size: int) -> int:
    """Check that a pretokenized shard holds token ids of a vocab_size vocabulary; return how many it holds.

    Reads the file once, vectorized: the full dataset's 1 GB of shards takes about a second (0.6 s measured
    from the page cache). An odd size, an empty shard, or an id >= vocab_size is a DataError naming the
    shard (and the first bad id with its position).
    """
    count = shard_tokens(path)
    if count == 0:
        raise DataError(f"{path}: empty shard, no tokens; {_REMEDY}")
    ids = np.fromfile(path, dtype=TOKEN_DTYPE)
    if int(ids.max()) >= vocab_size:
        position = int(np.argmax(ids >= vocab_size))
        raise DataError(
            f"{path}: token id {int(ids[position])} at position {position} is outside the vocabulary of "
            f"{vocab_size} tokens (a shard of another tokenizer, or damaged); {_REMEDY}"
        )
    return count


TOKENS_PER_BYTE_SAMPLE = 2_000_000  # val tokens decoded for tokens per byte; the ratio is stable by then


def tokens_per_byte(shard: str | os.PathLike, tokenizer) -> float:
    """Tokens per UTF-8 byte of a pretokenized shard's text, for bits per byte = nats/token / ln 2 * this.

    Decodes (up to TOKENS_PER_BYTE_SAMPLE tokens of) the shard document by document: tokens count BOS (the
    model predicts it too), bytes are the documents' UTF-8 text without separators, so the figure compares
    across tokenizers, corpora and scripts.
    """
    ids = np.fromfile(shard, dtype=TOKEN_DTYPE, count=TOKENS_PER_BYTE_SAMPLE).astype(np.int64)
    starts = np.flatnonzero(ids == tokenizer.bos_id)
    if len(ids) == TOKENS_PER_BYTE_SAMPLE and len(starts) > 1:
        ids = ids[: starts[-1]]  # a whole number of documents
        starts = starts[:-1]
    bounds = [0, *starts.tolist(), len(ids)] if not len(starts) or starts[0] else [*starts.tolist(), len(ids)]
    n_bytes = sum(
        len(tokenizer.decode([t for t in ids[a:b].tolist() if t != tokenizer.bos_id]).encode("utf-8"))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    )
    if n_bytes == 0:
        raise DataError(f"{shard}: decodes to no text")
    return len(ids) / n_bytes


def shard_split(path: str | os.PathLike) -> str | None:
    """The split a pretokenized shard belongs to by its name: val_NNNN.bin (and llama2.c's data00.bin) are
    "val", train_NNNN.bin and every other dataNN.bin "train"; None for any other file (tok4096.bin)."""
    name = Path(path).name
    if name == VAL_SHARD or (name.startswith("val_") and name.endswith(".bin")):
        return "val"
    if name.endswith(".bin") and (name.startswith("train_") or name.startswith("data")):
        return "train"
    return None


def split_shards(bin_dir: str | os.PathLike | Sequence[str | os.PathLike], split: str) -> list[Path]:
    """The pretokenized shards of one split, by name (shard_split): val_NNNN.bin are "val", train_NNNN.bin
    "train" (the prepared corpus's layout); in llama2.c's layout data00.bin is "val", every other data*.bin
    "train".

    bin_dir is a folder (every shard in it) or an explicit list of .bin files, as the train rule passes its
    inputs: a folder may still hold shards of an earlier run with a larger corpus.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if isinstance(bin_dir, (str, os.PathLike)):
        where = Path(bin_dir)
        shards = sorted(where.glob("*.bin"))
    else:
        shards = sorted(Path(p) for p in bin_dir)
        where = shards[0].parent if shards else Path(".")
    chosen = [p for p in shards if shard_split(p) == split]
    if not chosen:
        raise FileNotFoundError(f"{where}: no pretokenized shards for the {split!r} split ({split}_*.bin)")
    return chosen


class PretokDataset:
    """(x, y) windows of max_seq_len tokens from the pretokenized shards of one split, batch by batch.

    Batch number b (0-based) consists of batch_size windows drawn by a numpy Generator seeded with
    (seed, rank, b): uniform over every window start in the split, so longer shards are sampled more.
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike | Sequence[str | os.PathLike],  # a folder of data*.bin or the files
        split: str,
        max_seq_len: int,
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
    ):
        if max_seq_len < 1 or batch_size < 1:
            raise ValueError("max_seq_len and batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.split = split
        self.max_seq_len = max_seq_len
        self.seed = seed
        self.rank = rank
        self.batch_size = batch_size
        self.shards = split_shards(bin_dir, split)
        lengths = np.array([shard_tokens(p) for p in self.shards], dtype=np.int64)
        # A shard shorter than one window (the last of a split, often) gives no window: it is left out. A
        # split with no window at all is a corpus too small for the context.
        fits = lengths >= max_seq_len + 1
        if not fits.any():
            raise DataError(
                f"{self.shards[0].parent}: the {split} split holds {int(lengths.sum()):,} tokens in "
                f"{len(lengths)} shard(s), none with max_seq_len + 1 = {max_seq_len + 1}: the corpus is too "
                f"small for one training batch; add text, move documents to this split (data.validation) or "
                f"lower model.max_seq_len"
            )
        self.shards = [p for p, ok in zip(self.shards, fits.tolist(), strict=True) if ok]
        lengths = lengths[fits]
        # A window of max_seq_len + 1 tokens can start at 0 .. n - max_seq_len - 1 in a shard of n tokens.
        self._window_starts = lengths - max_seq_len
        self._cumulative = np.cumsum(self._window_starts)
        self._memmaps = [np.memmap(p, dtype=TOKEN_DTYPE, mode="r") for p in self.shards]

    def windows(self, batch: int) -> list[tuple[int, int]]:
        """The (shard index, token offset) of each window in batch number `batch`."""
        rng = np.random.default_rng([self.seed, self.rank, batch])
        picks = rng.integers(0, self._cumulative[-1], size=self.batch_size)
        shard_ids = np.searchsorted(self._cumulative, picks, side="right")
        offsets = picks - (self._cumulative[shard_ids] - self._window_starts[shard_ids])
        return [(int(s), int(o)) for s, o in zip(shard_ids, offsets, strict=True)]

    def batch_arrays(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch number `batch`: int64 x, y of shape (batch_size, max_seq_len), y = x shifted by one."""
        length = self.max_seq_len + 1
        chunk = np.stack([self._memmaps[s][o : o + length] for s, o in self.windows(batch)]).astype(np.int64)
        return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])


def iter_batches(
    bin_dir: str | os.PathLike | Sequence[str | os.PathLike],
    split: str,
    batch_size: int,
    max_seq_len: int,
    device,
    seed: int = 1337,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
):
    """Yield (x, y) int64 tensors of shape (batch_size, max_seq_len) on device: batch start_batch, then on."""
    import torch  # the data rules import this package without torch (envs/data.yaml has none)

    if start_batch < 0:
        raise ValueError("start_batch must be >= 0")
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    dataset = PretokDataset(
        bin_dir, split, max_seq_len, seed=seed, rank=rank, world_size=world_size, batch_size=batch_size
    )
    batch = start_batch
    while True:
        x, y = (torch.from_numpy(a) for a in dataset.batch_arrays(batch))
        if on_cuda:  # pinned host memory lets the copy overlap with compute
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=on_cuda), y.to(device, non_blocking=on_cuda)
        batch += 1
