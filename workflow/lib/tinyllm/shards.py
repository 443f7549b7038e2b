"""Prepared shards -> tiny.txt (the tokenizer's training text) and pretokenized shards; TinyStories' own JSON.

A prepared shard (`val_0000.jsonl`, `train_0003.jsonl`, ... from tinyllm.corpus.prepare_corpus) holds one
`{"text": ...}` per line; a TinyStories shard (`data00.json`) is a JSON array of `{"story": ...}`, which the
tests and the bench still read directly. Pretokenized shards (`val_0000.bin`, ...) are flat uint16
little-endian token ids: every document encoded with BOS in front and no EOS, concatenated (llama2.c's
layout); tinyllm.batches reads them.

Every file is written through tinyllm.files.atomic_output, so a crash never leaves a truncated output behind.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tinyllm.errors import DataError
from tinyllm.files import atomic_output
from tinyllm.tokenizer import MAX_SENTENCE_LENGTH, Tokenizer

UINT16_VOCAB_LIMIT = 1 << 16
ENCODE_BATCH = 2048  # documents encoded at a time while pretokenizing: bounds memory whatever the shard size


# --- stories, tiny.txt, pretokenize ------------------------------------------------------------------------


def load_stories(shard_json: str | os.PathLike) -> list[str]:
    """The stories of a TinyStories shard, each stripped of surrounding whitespace (as llama2.c does).

    A story that is empty or only whitespace is an error rather than skipped: it would train on bare BOS
    tokens, and a shard of them means the data is not what it should be.
    """
    path = Path(shard_json)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not isinstance(entries, list):
        raise DataError(
            f'{path}: expected a JSON array of {{"story": ...}} objects, found a {type(entries).__name__}'
        )
    stories = []
    for index, entry in enumerate(entries):
        story = entry.get("story") if isinstance(entry, dict) else None
        if not isinstance(story, str):
            if not isinstance(entry, dict):
                problem = f"is a {type(entry).__name__}, not an object"
            elif "story" not in entry:
                problem = 'has no "story"'
            else:
                problem = f'has a "story" that is a {type(story).__name__}, not a string'
            raise DataError(f"{path}: entry {index} {problem}")
        stripped = story.strip()
        if not stripped:
            kind = "only whitespace" if story else "empty"
            raise DataError(f'{path}: entry {index} has a "story" that is {kind}')
        stories.append(stripped)
    if not stories:
        raise DataError(f"{path}: no stories (an empty JSON array)")
    return stories


def shard_documents(shard: str | os.PathLike) -> Iterator[str]:
    """The documents of a prepared shard (.jsonl) or of a TinyStories shard (.json, stripped stories)."""
    from tinyllm.corpus import iter_shard

    path = Path(shard)
    if path.suffix == ".json":
        return iter(load_stories(path))
    return iter_shard(path)


def split_long_line(line: str, limit: int = MAX_SENTENCE_LENGTH) -> list[str]:
    """line cut into pieces of at most limit UTF-8 bytes, at a space where one is near the cut, else between
    characters (text without spaces, such as Chinese). SentencePiece's trainer skips longer lines silently."""
    data = line.encode("utf-8")
    if len(data) <= limit:
        return [line]
    pieces, start = [], 0
    while len(data) - start > limit:
        end = start + limit
        while (data[end] & 0xC0) == 0x80:  # inside a character: back to its first byte
            end -= 1
        space = data.rfind(b" ", start + limit // 2, end)
        end = space + 1 if space > 0 else end
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return [*pieces, data[start:].decode("utf-8")]


def write_tiny_txt(shards: Sequence[str | os.PathLike], output: str | os.PathLike) -> int:
    """Write the tokenizer's training text: every document of the shards, then a newline.

    As llama2.c's train_vocab: newlines inside a document stay, so SentencePiece sees each paragraph as a
    line. A line longer than SentencePiece's max_sentence_length (MAX_SENTENCE_LENGTH bytes) would be skipped
    by its trainer without a word, and a corpus of only such lines fails with `!sentences_.empty()`: such
    lines are cut into pieces (logged with their number). Returns the number of documents written.
    """
    count = long_lines = pieces = 0
    with atomic_output(output, "w", encoding="utf-8", newline="\n") as out:
        for shard in shards:
            for document in shard_documents(shard):
                count += 1
                if len(document) * 4 <= MAX_SENTENCE_LENGTH:  # short enough: at most 4 bytes a character
                    out.write(document + "\n")
                    continue
                for line in document.split("\n"):
                    parts = split_long_line(line)
                    if len(parts) > 1:
                        long_lines += 1
                        pieces += len(parts)
                    out.write("\n".join(parts) + "\n")
    if long_lines:
        print(f"tiny_txt: cut {long_lines} lines longer than {MAX_SENTENCE_LENGTH} bytes (SentencePiece's "
              f"limit per sentence) into {pieces} pieces for tokenizer training",
              file=sys.stderr)  # fmt: skip
    return count


def pretokenize_shard(
    shard: str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    output: str | os.PathLike,
    num_threads: int = 1,
) -> int:
    """Encode every document of a shard (BOS first, no EOS), concatenate, write uint16 LE to output.

    Streams: ENCODE_BATCH documents at a time, so memory is bounded whatever the shard size. Returns the
    number of tokens written. A vocabulary too large for uint16 ids is refused.
    """
    tokenizer = Tokenizer(tokenizer_model)
    if tokenizer.n_words > UINT16_VOCAB_LIMIT:
        raise ValueError(
            f"{tokenizer_model}: a vocabulary of {tokenizer.n_words} tokens does not fit uint16 ids "
            f"(at most {UINT16_VOCAB_LIMIT})"
        )
    documents = shard_documents(shard)
    count = 0
    with atomic_output(output) as out:
        for ids in tokenizer.encode_stream(documents, bos=True, eos=False, num_threads=num_threads,
                                           batch=ENCODE_BATCH):  # fmt: skip
            out.write(ids.astype("<u2").tobytes())
            count += len(ids)
    return count
