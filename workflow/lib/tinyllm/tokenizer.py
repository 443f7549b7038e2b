"""SentencePiece BPE tokenizer: training with llama2.c's options, encoding, and export to run.c's format."""

from __future__ import annotations

import collections
import itertools
import math
import os
import re
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from tinyllm.errors import ConfigError, DataError
from tinyllm.files import atomic_output

WORD_BOUNDARY = "\u2581"  # SentencePiece's visible space, "▁"
RUNC_BOS = "\n<s>\n"
RUNC_EOS = "\n</s>\n"
# tiny.txt lines reach a few thousand bytes; SentencePiece's default (4192) would silently drop longer ones.
MAX_SENTENCE_LENGTH = 1 << 16
ENCODE_CHUNK = 8192  # texts per step of encode_concat: bounds the Python lists it holds
# SentencePiece's words when the vocabulary cannot hold every required character plus the meta pieces, and
# when the text has fewer distinct pieces to learn than the vocabulary asks for.
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_TOO_BIG = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
MIN_CHARACTER_COVERAGE = 0.98  # SentencePiece refuses less (trainer_interface.cc)
# Scripts with large alphabets (Chinese, Japanese): SentencePiece recommends 0.9995, so that the rarest
# characters are spelled in bytes rather than each taking a piece. Chosen when the text has this many
# distinct characters or more; alphabets (Latin, Cyrillic, ...) stay far below it and get 1.0.
LARGE_ALPHABET = 1000
LARGE_ALPHABET_COVERAGE = 0.9995
COVERAGE_SAMPLE_BYTES = 64 << 20  # what auto_character_coverage reads of the training text


def train_tokenizer(
    text_path: str | os.PathLike,
    model_prefix: str | os.PathLike,
    vocab_size: int,
    input_sentence_size: int = 200_000,
    shuffle_input_sentence: bool = True,
    character_coverage: float | None = 1.0,
    num_threads: int = 1,
    quiet: bool = False,
) -> Path:
    """Train a BPE model on a text file (one sentence per line) into `<model_prefix>.model` and `.vocab`.

    The options are llama2.c's (tinystories.py train_vocab). Training writes under a temporary prefix and
    renames the files into place, so an interrupted run leaves no half-written model. quiet silences
    SentencePiece's progress log (it goes to stderr). character_coverage is the share of the text's
    characters that get a piece of their own; the rest are spelled in bytes (byte_fallback); None picks it
    from the text (auto_character_coverage, logged). A vocab_size below what that requires, or above what the
    text can fill, raises ConfigError. Returns the .model path.
    """
    text_path, model_prefix = Path(text_path), Path(model_prefix)
    if not text_path.is_file():
        raise DataError(f"tokenizer training text not found: {text_path}")
    if character_coverage is None:
        character_coverage, why = auto_character_coverage(text_path, vocab_size)
        print(f"tokenizer: character_coverage {character_coverage:g} (auto: {why})", file=sys.stderr)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = model_prefix.with_name(f".{model_prefix.name}.tmp{os.getpid()}")
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_path),
            model_prefix=str(tmp_prefix),
            model_type="bpe",
            vocab_size=vocab_size,
            self_test_sample_size=0,
            input_format="text",
            character_coverage=character_coverage,
            num_threads=num_threads,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            unk_surface=r" \342\201\207 ",
            normalization_rule_name="identity",
            # Beyond llama2.c: keep runs of spaces, so decode(encode(story)) == story for every story
            # (the default collapses "  " and breaks the round trip for a few stories per thousand).
            remove_extra_whitespaces=False,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=shuffle_input_sentence,
            max_sentence_length=MAX_SENTENCE_LENGTH,
            minloglevel=2 if quiet else 0,
        )
        for suffix in (".vocab", ".model"):
            os.replace(f"{tmp_prefix}{suffix}", f"{model_prefix}{suffix}")
    except RuntimeError as err:
        vocabulary_error = _vocabulary_error(str(err), text_path, character_coverage)
        if vocabulary_error is None:
            raise
        raise vocabulary_error from err  # SentencePiece's own words stay in the rule's log
    finally:
        for suffix in (".vocab", ".model"):
            Path(f"{tmp_prefix}{suffix}").unlink(missing_ok=True)
    return Path(f"{model_prefix}.model")


def _vocabulary_error(message: str, text_path: Path, character_coverage: float) -> ConfigError | None:
    """SentencePiece's refusal of a vocabulary size as one line saying what to set; None for other errors."""
    too_big = _TOO_BIG.search(message)
    if too_big:
        size, most = too_big.groups()
        return ConfigError(
            f"tokenizer.vocab_size {size} is too big for the corpus: {text_path} yields at most {most} "
            f"pieces; lower tokenizer.vocab_size to {most} or less, or add text (data.sources, "
            "tokenizer.num_shards)"
        )
    too_small = _TOO_SMALL.search(message)
    if not too_small:
        return None
    # "vs" compares vocab_size with the text's characters plus the meta pieces (<unk>, <s>, </s>, bytes).
    size, required = too_small.groups()
    lower = ""
    if character_coverage > MIN_CHARACTER_COVERAGE:
        lower = (f", or lower tokenizer.character_coverage (not below {MIN_CHARACTER_COVERAGE}) so that rare "
                 "characters are spelled in bytes")  # fmt: skip
    return ConfigError(
        f"tokenizer.vocab_size {size} is smaller than the {required} pieces that {text_path} requires "
        f"(every character covered by tokenizer.character_coverage {character_coverage:g}, plus the byte "
        f"and control pieces): raise tokenizer.vocab_size to at least {required}{lower}"
    )


def auto_character_coverage(text_path: str | os.PathLike, vocab_size: int) -> tuple[float, str]:
    """character_coverage for a training text, and why (for the log).

    An alphabet (fewer than LARGE_ALPHABET distinct characters in the first COVERAGE_SAMPLE_BYTES) gets 1.0:
    every character a piece. A large one (Chinese, Japanese) gets SentencePiece's 0.9995, lowered (not below
    MIN_CHARACTER_COVERAGE) where the characters that covers would take more than half of the vocabulary's
    pieces beyond the byte and control ones, leaving too little room for merges; the rarest characters are
    then spelled in bytes.
    """
    counts: collections.Counter[str] = collections.Counter()
    with open(text_path, encoding="utf-8") as f:
        while block := f.read(1 << 20):
            counts.update(block)
            if f.tell() >= COVERAGE_SAMPLE_BYTES:
                break
    counts.pop("\n", None)
    distinct = len(counts)
    if distinct < LARGE_ALPHABET:
        return 1.0, f"{distinct:,} distinct characters, an alphabet"
    budget = max((vocab_size - 259) // 2, 1)  # 259: <unk>, <s>, </s> and the 256 byte pieces
    frequencies = sorted(counts.values(), reverse=True)
    fits = sum(frequencies[:budget]) / sum(frequencies)  # the share the budget's characters cover
    coverage = max(MIN_CHARACTER_COVERAGE, min(LARGE_ALPHABET_COVERAGE, math.floor(fits * 1e4) / 1e4))
    why = f"{distinct:,} distinct characters, a large alphabet as Chinese or Japanese; SentencePiece advises "
    why += "0.9995"
    if coverage < LARGE_ALPHABET_COVERAGE:
        why += f", lowered so that characters take at most {budget:,} of the {vocab_size:,} pieces"
    return coverage, why


class Tokenizer:
    """A trained SentencePiece model with llama2.c's encode/decode interface."""

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise DataError(f"tokenizer model not found: {self.model_path}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except RuntimeError as err:  # SentencePiece: "could not parse ModelProto from ..."
            raise DataError(f"tokenizer {self.model_path} is not a readable SentencePiece model (damaged, or "
                            "another format): pass the model's own tokenizer; delete a damaged one of the "
                            "pipeline's and rerun snakemake") from err  # fmt: skip
        self.n_words: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()  # -1: the model has no pad token
        self._words_independent: bool | None = None

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        if not isinstance(s, str):
            raise TypeError(f"encode expects a str, got {type(s).__name__}")
        ids = self.sp.encode(s)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_concat(self, texts: Iterable[str], bos: bool, eos: bool, num_threads: int = 1) -> np.ndarray:
        """Encode texts and concatenate the ids (int32): equal to chaining encode(text, bos, eos) over texts.

        Fast path: where spaces are hard boundaries for this model (see words_encode_independently), a text
        splits at its single spaces into words whose encodings concatenate to the text's encoding, so each
        distinct word is encoded once and the rest is numpy gathering. TinyStories reuses a small vocabulary
        of words, so this is several times faster than encoding every story.
        """
        chunks = list(self.encode_stream(texts, bos, eos, num_threads))
        return np.concatenate(chunks) if chunks else np.empty(0, np.int32)

    def encode_stream(
        self, texts: Iterable[str], bos: bool, eos: bool, num_threads: int = 1, batch: int = ENCODE_CHUNK
    ) -> Iterator[np.ndarray]:
        """encode_concat of texts, batch texts at a time (int32 arrays): texts may be a stream of any length.

        The word cache of the fast path lives across batches, so a word is encoded once per stream.
        """
        fast = self.words_encode_independently()
        cache = _WordCache(self.sp, num_threads) if fast else None
        iterator = iter(texts)
        while chunk := list(itertools.islice(iterator, batch)):
            if cache is None:
                pieces = self.sp.encode(chunk, add_bos=bos, add_eos=eos, num_threads=num_threads)
                yield np.fromiter(itertools.chain.from_iterable(pieces), np.int32, sum(map(len, pieces)))
            else:
                yield cache.encode_texts(chunk, self.bos_id if bos else None, self.eos_id if eos else None)

    def words_encode_independently(self) -> bool:
        """Whether encoding a text equals concatenating the encodings of its space-separated words.

        True when a BPE model maps no character but the space (no normalization rules), turns a space into the
        word-boundary mark in front of the next word with a dummy one at the start, and has no piece with that
        mark after its first character: then no BPE merge crosses a space, and a word encoded alone (given its
        dummy prefix) yields exactly the pieces it yields inside the text. Texts the normalizer rewrites
        are never split: those with leading, trailing or repeated spaces, and those holding a literal "▁"
        (the normalizer strips trailing ones, so a lone "▁" word would vanish).
        """
        if self._words_independent is None:
            model_type, charsmap = _model_facts(self.sp.serialized_model_proto())
            self._words_independent = (
                model_type == BPE_MODEL_TYPE
                and not charsmap
                and self.sp.normalize("a b") == f"{WORD_BOUNDARY}a{WORD_BOUNDARY}b"
                and not any(WORD_BOUNDARY in self.sp.id_to_piece(i)[1:] for i in range(self.n_words))
            )
        return self._words_independent

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))


def runc_tokens(tokenizer: Tokenizer) -> tuple[list[bytes], list[float]]:
    """Every token's bytes and score as run.c shows them: BOS/EOS as text lines, "▁" as a space."""
    sp, tokens, scores = tokenizer.sp, [], []
    for i in range(tokenizer.n_words):
        if i == tokenizer.bos_id:
            piece = RUNC_BOS
        elif i == tokenizer.eos_id:
            piece = RUNC_EOS
        else:
            piece = sp.id_to_piece(i)
        tokens.append(piece.replace(WORD_BOUNDARY, " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    return tokens, scores


def export_runc_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> Path:
    """Write the tokenizer in llama2.c run.c's format (tok{V}.bin), atomically.

    Layout, little-endian: int32 max_token_length, then per token float32 score, int32 byte length, bytes.
    """
    path = Path(path)
    tokens, scores = runc_tokens(tokenizer)
    with atomic_output(path) as f:
        f.write(struct.pack("<i", max(map(len, tokens))))
        for token, score in zip(tokens, scores, strict=True):
            f.write(struct.pack("<fi", score, len(token)))
            f.write(token)
    return path


class _WordCache:
    """Token ids of each distinct word seen so far, for Tokenizer.encode_concat's fast path."""

    def __init__(self, sp: spm.SentencePieceProcessor, num_threads: int):
        self.sp = sp
        self.num_threads = num_threads
        self.index: dict[str, int] = {}
        self.tokens = np.empty(0, np.int32)  # every cached word's ids, back to back
        self.starts = np.empty(0, np.int64)  # where each word's ids begin in self.tokens
        self.lengths = np.empty(0, np.int64)

    def _add_new_words(self, known: int) -> None:
        new_words = list(itertools.islice(self.index, known, None))
        if not new_words:
            return
        pieces = self.sp.encode(new_words, num_threads=self.num_threads)
        lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
        tokens = np.fromiter(itertools.chain.from_iterable(pieces), np.int32, int(lengths.sum()))
        self.starts = np.concatenate([self.starts, len(self.tokens) + np.cumsum(lengths) - lengths])
        self.lengths = np.concatenate([self.lengths, lengths])
        self.tokens = np.concatenate([self.tokens, tokens])

    def encode_texts(self, texts: list[str], bos_id: int | None, eos_id: int | None) -> np.ndarray:
        known = len(self.index)
        words_in_order: list[str] = []
        words_per_text = np.empty(len(texts), np.int64)
        for i, text in enumerate(texts):
            words = text.split(" ")
            if "" in words or WORD_BOUNDARY in text:  # see Tokenizer.words_encode_independently
                words = [text]
            words_per_text[i] = len(words)
            words_in_order.extend(words)
        # Per distinct word, not per occurrence: the loops below run in C except over new words.
        for word in dict.fromkeys(words_in_order):
            if word not in self.index:
                self.index[word] = len(self.index)
        word_ids = list(map(self.index.__getitem__, words_in_order))
        self._add_new_words(known)

        ids = np.array(word_ids, dtype=np.int64)
        lengths = self.lengths[ids]
        out_starts = np.cumsum(lengths) - lengths
        body = self.tokens[np.arange(int(lengths.sum())) + np.repeat(self.starts[ids] - out_starts, lengths)]
        if bos_id is None and eos_id is None:
            return body
        text_lengths = (
            np.add.reduceat(lengths, np.cumsum(words_per_text) - words_per_text) if len(texts) else lengths
        )
        per_text = text_lengths + (bos_id is not None) + (eos_id is not None)
        text_starts = np.cumsum(per_text) - per_text
        out = np.empty(int(per_text.sum()), np.int32)
        is_body = np.ones(len(out), bool)
        if bos_id is not None:
            out[text_starts] = bos_id
            is_body[text_starts] = False
        if eos_id is not None:
            out[text_starts + per_text - 1] = eos_id
            is_body[text_starts + per_text - 1] = False
        out[is_body] = body
        return out


# Why a protobuf reader of our own: SentencePieceProcessor (0.2) tells neither the model type nor whether the
# normalizer rewrites characters, and sentencepiece_model_pb2, which does, needs the protobuf package, not a
# dependency here. Probing with normalize() cannot prove that no character is rewritten; the map can.
BPE_MODEL_TYPE = 2  # TrainerSpec.ModelType.BPE in sentencepiece_model.proto


def _model_facts(model_proto: bytes) -> tuple[int, bytes]:
    """(model type, precompiled normalization map) of a serialized SentencePiece ModelProto.

    Reads protobuf's wire format directly (ModelProto field 2 = trainer_spec, whose field 3 = model_type;
    field 3 = normalizer_spec, whose field 2 = precompiled_charsmap) so that protobuf is not needed.
    An absent model_type means the proto default, unigram (1); an empty map means no normalization.
    """
    trainer = _proto_fields(model_proto).get(2, b"")
    normalizer = _proto_fields(model_proto).get(3, b"")
    return _proto_fields(trainer).get(3, 1), _proto_fields(normalizer).get(2, b"")


def _proto_fields(message: bytes) -> dict[int, int | bytes]:
    """The last value of each varint and length-delimited field of a protobuf message, by field number."""
    fields: dict[int, int | bytes] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while True:
            byte = message[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(message):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number] = varint()
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            size = varint()
            fields[number] = message[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    return fields
