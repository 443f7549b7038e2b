"""tinyllm.shards: reading TinyStories stories and prepared shards, tiny.txt and pretokenization. Malformed
shards: tests/faults/test_data.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_json
from tinyllm import shards
from tinyllm.corpus import document_line
from tinyllm.shards import (
    pretokenize_shard,
    split_long_line,
    write_tiny_txt,
)
from tinyllm.tokenizer import MAX_SENTENCE_LENGTH, Tokenizer, train_tokenizer

# --- stories and tiny.txt -----------------------------------------------------------------------------------


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


# --- prepared shards ----------------------------------------------------------------------------------------


def write_prepared(path, texts):
    path.write_bytes(b"".join(document_line(t) for t in texts))
    return path


CHINESE = ["從前有一隻小貓，牠叫咪咪。", "小明說：「你好！」然后他走了。", "天氣很好，我們去公園玩吧？"]


def test_tiny_txt_and_pretokenize_read_prepared_shards(small_tokenizer, tmp_path):
    texts = ["First doc.\nSecond line.", "quotes \" and \\ backslashes", *CHINESE, "tab\tand emoji 🐱"]
    shard = write_prepared(tmp_path / "val_0000.jsonl", texts)
    assert write_tiny_txt([shard], tmp_path / "tiny.txt") == len(texts)
    assert (tmp_path / "tiny.txt").read_text(encoding="utf-8") == "".join(t + "\n" for t in texts)
    count = pretokenize_shard(shard, small_tokenizer, tmp_path / "val_0000.bin")
    tok = Tokenizer(small_tokenizer)
    expected = [i for t in texts for i in tok.encode(t, bos=True, eos=False)]
    assert count == len(expected)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "val_0000.bin", dtype="<u2"), expected)


def test_pretokenize_streams_in_batches_and_equals_one_pass(small_tokenizer, tmp_path, monkeypatch):
    texts = [f"story number {i}: once upon a time" for i in range(50)]
    shard = write_prepared(tmp_path / "train_0000.jsonl", texts)
    monkeypatch.setattr(shards, "ENCODE_BATCH", 7)  # many batches, one word cache across them
    pretokenize_shard(shard, small_tokenizer, tmp_path / "small_batches.bin")
    tok = Tokenizer(small_tokenizer)
    expected = tok.encode_concat(texts, bos=True, eos=False)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "small_batches.bin", dtype="<u2"), expected)


@pytest.mark.parametrize("text", ["a b " * 40_000, "中文" * 30_000, "word" * 20_000 + " tail"])
def test_long_lines_are_cut_at_spaces_or_characters_within_the_limit(text):
    pieces = split_long_line(text)
    assert "".join(pieces) == text
    assert len(pieces) > 1 and all(len(p.encode()) <= MAX_SENTENCE_LENGTH for p in pieces)
    if " " in text[: MAX_SENTENCE_LENGTH // 2]:
        assert all(p.endswith(" ") for p in pieces[:-1])  # cut after a space, where there is one near
    assert split_long_line("short") == ["short"]


def test_corpus_of_only_very_long_documents_trains_a_tokenizer(tmp_path, capfd):
    """Two 5 MB documents without newlines: SentencePiece alone skips them all ("too long line") and fails
    with `!sentences_.empty()`; tiny.txt cuts them, says how many, and training succeeds."""
    words = ["once", "upon", "a", "time", "there", "was", "cat", "dog", "play", "park", "happy", "sun"]
    doc = " ".join(words[(i * 7) % len(words)] for i in range(1_200_000))[:5_000_000]
    shard = write_prepared(tmp_path / "val_0000.jsonl", [doc, doc[::-1]])
    write_tiny_txt([shard], tmp_path / "tiny.txt")
    err = capfd.readouterr().err
    assert "cut 2 lines longer than 65536 bytes" in err, err
    lines = (tmp_path / "tiny.txt").read_text().splitlines()
    assert max(len(line.encode()) for line in lines) <= MAX_SENTENCE_LENGTH and len(lines) > 100
    text = tmp_path / "tiny.txt"
    model = train_tokenizer(text, tmp_path / "tok300", 300, input_sentence_size=0, quiet=True)
    tok = Tokenizer(model)
    assert tok.decode(tok.encode(doc[:1000], False, False)) == doc[:1000]
