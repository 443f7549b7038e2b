"""tinyllm.tokenizer: training, encode/decode, the batched encoder's exactness, run.c export."""

from __future__ import annotations

import random
import re
import struct

import numpy as np
import pytest
import sentencepiece as spm
from conftest import write_stories_text
from tinyllm.shards import load_stories
from tinyllm.tokenizer import (
    RUNC_BOS,
    RUNC_EOS,
    WORD_BOUNDARY,
    Tokenizer,
    export_runc_tokenizer,
    runc_tokens,
    train_tokenizer,
)

# Texts where splitting at spaces could go wrong: the batched encoder must still match encode() exactly.
AWKWARD_TEXTS = [
    "",
    "Once upon a time, there was a cat.",
    "  leading spaces",
    "trailing spaces  ",
    "double  space and   triple",
    "paragraph one.\n\nParagraph two.\nthree \n four",
    "digits 12345 and 3.14, emoji 🐱🐶 and accents café naïve",
    f"a literal {WORD_BOUNDARY} mark and {WORD_BOUNDARY}{WORD_BOUNDARY}two",
    "tab\tseparated\twords and\u00a0no-break\u3000spaces",
    "“Curly quotes,” she said — ‘yes’…",
]


@pytest.fixture(scope="module")
def tok(small_tokenizer) -> Tokenizer:
    return Tokenizer(small_tokenizer)


def test_train_tokenizer_writes_model_and_vocab_only(shards_dir, tmp_path):
    text = write_stories_text(shards_dir, tmp_path / "tiny.txt")
    model = train_tokenizer(text, tmp_path / "out" / "tok400", 400, input_sentence_size=1000, quiet=True)
    assert model == tmp_path / "out" / "tok400.model"
    assert sorted(p.name for p in model.parent.iterdir()) == ["tok400.model", "tok400.vocab"]
    assert len((tmp_path / "out" / "tok400.vocab").read_text().splitlines()) == 400
    assert Tokenizer(model).n_words == 400


def test_train_tokenizer_uses_llama2c_options(tok):
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id) == (512, 1, 2, -1)
    pieces = [tok.sp.id_to_piece(i) for i in range(tok.n_words)]
    assert pieces[3:259] == [f"<0x{b:02X}>" for b in range(256)]  # byte_fallback
    assert not any(p[1:].isdigit() or (len(p) > 1 and p.isdigit()) for p in pieces)  # split_digits
    # identity rule (no NFKC: the no-break space stays) and runs of spaces kept (remove_extra_whitespaces off)
    assert tok.sp.normalize("A  b\u00a0c") == f"{WORD_BOUNDARY}A{WORD_BOUNDARY * 2}b\u00a0c"
    assert tok.decode(tok.encode("Tom said:  hi.\n\nThe end.", True, False)) == "Tom said:  hi.\n\nThe end."
    assert tok.decode(tok.encode("🐱", False, False)) == "🐱"  # unseen character: bytes, not <unk>


def test_encode_decode_bos_eos(tok, shards_dir):
    story = load_stories(shards_dir / "data00.json")[1]
    ids = tok.encode(story, bos=False, eos=False)
    assert tok.decode(ids) == story
    assert tok.encode(story, bos=True, eos=False) == [tok.bos_id, *ids]
    assert tok.encode(story, bos=True, eos=True) == [tok.bos_id, *ids, tok.eos_id]
    assert tok.encode(story, bos=False, eos=True) == [*ids, tok.eos_id]
    with pytest.raises(TypeError):
        tok.encode(ids, bos=True, eos=False)


def reference_concat(tok: Tokenizer, texts, bos: bool, eos: bool) -> np.ndarray:
    return np.array([i for text in texts for i in tok.encode(text, bos, eos)], dtype=np.int32)


@pytest.mark.parametrize("bos,eos", [(True, False), (False, False), (True, True), (False, True)])
def test_encode_concat_equals_encoding_each_text(tok, bos, eos):
    assert tok.words_encode_independently()  # the fast path is what is under test
    expected = reference_concat(tok, AWKWARD_TEXTS * 2, bos, eos)
    np.testing.assert_array_equal(tok.encode_concat(AWKWARD_TEXTS * 2, bos, eos), expected)


def test_encode_concat_equals_encoding_each_story_on_real_shards(tok, shards_dir):
    stories = load_stories(shards_dir / "data00.json") + load_stories(shards_dir / "data01.json")[:3000]
    expected = reference_concat(tok, stories, True, False)
    np.testing.assert_array_equal(tok.encode_concat(stories, bos=True, eos=False), expected)
    assert len(tok.encode_concat([], True, False)) == 0


def test_encode_concat_equals_encoding_each_text_on_random_texts(tok):
    """Random mixes of words, spaces, newlines, tabs, literal "▁", odd whitespace and unseen characters."""
    rng = random.Random(0)
    pieces = [*"abcXYZ .,!?'\"0123456789", " ", " ", "\n", "\t", "\r", "\x00", WORD_BOUNDARY, "\u00a0"]
    pieces += ["é", "🐱", "the", "Once", "upon", "time", "little", "said", "happy", "Lily"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    np.testing.assert_array_equal(
        tok.encode_concat(texts, True, True), reference_concat(tok, texts, True, True)
    )


@pytest.mark.parametrize(
    "options",
    [
        {"model_type": "bpe", "normalization_rule_name": "nmt_nfkc"},
        {"model_type": "unigram", "normalization_rule_name": "identity"},
    ],
    ids=["bpe-nfkc", "unigram"],
)
def test_other_models_take_the_plain_path_and_stay_exact(options, shards_dir, tmp_path):
    """A normalizing model, or one that is not BPE, is never split at spaces; results stay exact."""
    text = write_stories_text(shards_dir, tmp_path / "tiny.txt")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "other"), vocab_size=400, byte_fallback=True,
        minloglevel=2, **options,
    )  # fmt: skip
    other = Tokenizer(tmp_path / "other.model")
    assert not other.words_encode_independently()
    np.testing.assert_array_equal(
        other.encode_concat(AWKWARD_TEXTS, True, False), reference_concat(other, AWKWARD_TEXTS, True, False)
    )


def parse_runc(path):
    data = path.read_bytes()
    (max_len,), pos = struct.unpack_from("<i", data, 0), 4
    tokens, scores = [], []
    while pos < len(data):
        score, length = struct.unpack_from("<fi", data, pos)
        pos += 8
        tokens.append(data[pos : pos + length])
        scores.append(score)
        pos += length
    return max_len, tokens, scores


def test_export_runc_layout(tok, tmp_path):
    max_len, tokens, scores = parse_runc(export_runc_tokenizer(tok, tmp_path / "tok512.bin"))
    assert len(tokens) == tok.n_words
    assert tokens[tok.bos_id] == RUNC_BOS.encode() == b"\n<s>\n"
    assert tokens[tok.eos_id] == RUNC_EOS.encode() == b"\n</s>\n"
    assert tokens[0] == b"<unk>"
    assert max_len == max(len(t) for t in tokens)
    assert scores == [pytest.approx(tok.sp.get_score(i)) for i in range(tok.n_words)]
    boundary = [i for i in range(tok.n_words) if tok.sp.id_to_piece(i).startswith(WORD_BOUNDARY)]
    assert boundary  # a BPE vocabulary of English words has many "▁word" pieces
    for i in boundary:
        assert tokens[i] == tok.sp.id_to_piece(i).replace(WORD_BOUNDARY, " ").encode()
        assert tokens[i].startswith(b" ")
    assert not any(WORD_BOUNDARY.encode() in t for t in tokens)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok512.bin"]  # written atomically, no temp left


# --- any script: Chinese with a large alphabet --------------------------------------------------------------


@pytest.fixture(scope="module")
def chinese(tmp_path_factory):
    """(tokenizer trained with character_coverage auto on Chinese text, its documents, its training log)."""
    from corpora import chinese_documents

    folder = tmp_path_factory.mktemp("tok_zh")
    docs = chinese_documents(1500)
    text = folder / "tiny.txt"
    text.write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    import contextlib
    import io

    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        model = train_tokenizer(text, folder / "tok700", 700, character_coverage=None, quiet=True)
    return Tokenizer(model), docs, log.getvalue()


def test_large_alphabet_gets_sentencepieces_coverage_or_less_to_fit_the_vocabulary_and_says_so(chinese):
    tok, docs, log = chinese
    assert re.search(r"character_coverage 0\.98\d* \(auto: 1,\d{3} distinct characters, a large", log), log
    assert "lowered so that characters take at most 220 of the 700 pieces" in log
    coverage, why = auto_character_coverage_of("Once upon a time, there was a cat. " * 100, 4096)
    assert (coverage, why) == (1.0, "18 distinct characters, an alphabet")
    coverage, why = auto_character_coverage_of("".join(chinese_documents_text()), 8000)
    assert coverage == 0.9995 and "lowered" not in why  # room enough: SentencePiece's advice as it is


def chinese_documents_text() -> list[str]:
    from corpora import chinese_documents

    return chinese_documents(1500)


def auto_character_coverage_of(text: str, vocab_size: int):
    import tempfile
    from pathlib import Path

    from tinyllm.tokenizer import auto_character_coverage

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.txt"
        path.write_text(text, encoding="utf-8")
        return auto_character_coverage(path, vocab_size)


def test_chinese_round_trips_with_rare_characters_spelled_in_bytes(chinese):
    tok, docs, _ = chinese
    extra = ["從前有一隻小貓。", "全角标点：「你好！」（测试）；半角: (test).", "罕见字：龘靐齉爩"]
    extra += ["𠀀𪚥 emoji 🐉"]
    ids = [tok.encode(t, bos=False, eos=False) for t in docs + extra]
    assert [tok.decode(i) for i in ids] == docs + extra
    byte_ids = {i for seq in ids for i in seq if tok.sp.is_byte(i)}
    assert len(byte_ids) > 20  # the rare characters: each a run of <0xNN> pieces
    np.testing.assert_array_equal(
        tok.encode_concat(docs + extra, True, False), reference_concat(tok, docs + extra, True, False)
    )


def bytes_as_runc_decodes(tok: Tokenizer, ids: list[int]) -> bytes:
    """run.c's decode: a "<0xNN>" piece is that byte; after BOS a leading space is dropped."""
    tokens, _ = runc_tokens(tok)
    out, previous = b"", tok.bos_id
    for i in ids:
        piece = tokens[i]
        if re.fullmatch(rb"<0x[0-9A-F]{2}>", piece):
            piece = bytes([int(piece[3:5], 16)])
        elif previous == tok.bos_id and piece.startswith(b" "):
            piece = piece[1:]
        out += piece
        previous = i
    return out


def test_runc_hf_and_gguf_tokenizers_carry_the_byte_pieces(chinese):
    import gguf
    from tinyllm.export_gguf import token_types

    byte, mark = int(gguf.TokenType.BYTE), WORD_BOUNDARY
    from tinyllm.export_hf import hf_tokenizer

    tok, docs, _ = chinese
    texts = docs[:300] + ["罕见字：龘靐齉爩", "𠀀𪚥 emoji 🐉 and English"]
    fast = hf_tokenizer(tok)
    types = token_types(tok)
    pieces = [tok.sp.id_to_piece(i) for i in range(tok.n_words)]
    for text in texts:
        ids = tok.encode(text, bos=True, eos=False)
        # Hugging Face's fast tokenizer (AutoTokenizer loads it from the export): the same ids and text.
        assert fast.encode(text).ids == ids, text
        assert fast.decode(ids, skip_special_tokens=True) == text
        # run.c reads tok{V}.bin: its decoding of the ids gives the text's UTF-8 bytes.
        assert bytes_as_runc_decodes(tok, ids[1:]).decode("utf-8") == text
        # GGUF: byte pieces are typed BYTE, so llama.cpp turns <0xNN> back into that byte.
        spelled = b"".join(
            bytes([int(pieces[i][3:5], 16)]) if types[i] == byte else pieces[i].replace(mark, " ").encode()
            for i in ids[1:]
        )
        assert spelled.decode("utf-8").removeprefix(" ") == text


def test_bits_per_byte_count_utf8_bytes_of_chinese(chinese, tmp_path):
    """Training's tokens per byte (for bits per byte) counts the UTF-8 bytes of the documents: 3 a character
    here, so figures compare across scripts."""
    from tinyllm.batches import tokens_per_byte
    from tinyllm.corpus import document_line
    from tinyllm.shards import pretokenize_shard

    tok, docs, _ = chinese
    shard = tmp_path / "val_0000.jsonl"
    shard.write_bytes(b"".join(document_line(d) for d in docs[:200]))
    tokens = pretokenize_shard(shard, tok.model_path, tmp_path / "val_0000.bin")
    utf8 = sum(len(d.encode("utf-8")) for d in docs[:200])
    assert utf8 > 2.5 * sum(len(d) for d in docs[:200])  # mostly 3-byte characters
    assert tokens_per_byte(tmp_path / "val_0000.bin", tok) == pytest.approx(tokens / utf8)
