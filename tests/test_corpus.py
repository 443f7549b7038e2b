"""tinyllm.corpus: the plan from the config, prepare's one pass (split, dedup, shards, manifest), report."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
from conftest import make_tar_gz
from corpora import plan_for, prepare
from tinyllm import paths
from tinyllm.config import validate_config
from tinyllm.corpus import (
    MANIFEST,
    SeenHashes,
    corpus_plan,
    iter_shard,
    prepare_corpus,
    shard_names,
    text_hash,
)
from tinyllm.corpus_report import corpus_figures, corpus_markdown, write_corpus_report


def shard_texts(out, split: str) -> list[str]:
    names = [name for name in shard_names(out) if name.startswith(split)]
    return [t for name in names for t in iter_shard(out / f"{name}.jsonl")]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["cat", "dog", "sun", "tree", "猫", "木", "soleil"]) for _ in range(n))


# --- the plan -----------------------------------------------------------------------------------------------


def test_tinystories_is_the_default_corpus(tmp_path):
    plan = corpus_plan(validate_config({"data": {"shards": 3}, "tokenizer": {"num_shards": 3}}))
    assert plan.downloads == {"TinyStories_all_data.tar.gz": {
        "url": validate_config({})["data"]["url"], "sha256": None}}  # fmt: skip
    assert plan.inputs == [paths.ARCHIVE]
    (source,) = plan.settings["sources"]
    assert (source["members"], source["text"], source["format"]) == (
        ["data00.json", "data01.json", "data02.json"], "story", "json")  # fmt: skip
    assert plan.settings["validation"] == {"files": ["data00.json"]}
    assert plan.settings["dedup"] is False and plan.settings["shard_bytes"] is None


def test_plan_lists_local_files_and_downloads(tmp_path):
    (tmp_path / "books").mkdir()
    for name in ("b.txt", "a.txt"):
        (tmp_path / "books" / name).write_text("text")
    plan = plan_for([
        {"path": str(tmp_path / "books")},
        {"url": "https://example.org/dumps/forum.jsonl.gz", "sha256": "a" * 64},
        {"url": "http://127.0.0.1:8000/other/forum.jsonl.gz", "name": "mirror"},
    ])  # fmt: skip
    assert plan.downloads == {
        "downloads/forum.jsonl.gz": {"url": "https://example.org/dumps/forum.jsonl.gz", "sha256": "a" * 64},
        "downloads/1-forum.jsonl.gz": {"url": "http://127.0.0.1:8000/other/forum.jsonl.gz", "sha256": None},
    }
    books = [str(tmp_path / "books" / n) for n in ("a.txt", "b.txt")]
    assert plan.settings["sources"][0]["files"] == books  # the rule's params: a new file reruns prepare
    assert [s["name"] for s in plan.settings["sources"]] == ["books", "forum", "mirror"]
    assert plan.inputs == sorted([*books, "results/data/downloads/forum.jsonl.gz",
                                  "results/data/downloads/1-forum.jsonl.gz"])  # fmt: skip
    assert plan.settings["validation"] == {"fraction": 0.01} and plan.settings["dedup"] is True


# --- prepare ------------------------------------------------------------------------------------------------


def test_fraction_split_is_stable_and_keeps_duplicates_together(tmp_path):
    rng = random.Random(0)
    docs = [words(rng, 30) for _ in range(2000)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    manifest, out = prepare(tmp_path, [{"path": str(tmp_path / "a.jsonl")}], validation={"fraction": 0.1})
    val = shard_texts(out, "val")
    assert 140 < len(val) < 260  # about 10% of 2000
    assert set(val).isdisjoint(shard_texts(out, "train"))
    # The split is the text's: the same documents in another order, among others, land where they did.
    reordered = [*reversed(docs), "new"]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in reordered))
    _, out2 = prepare(tmp_path / "x", [{"path": str(tmp_path / "b.jsonl")}], validation={"fraction": 0.1})
    assert set(shard_texts(out2, "val")) - {"new"} == set(val)
    assert manifest["splits"]["val"]["documents"] == len(val)


def test_duplicates_and_empty_documents_are_dropped_and_counted(tmp_path):
    docs = ["alpha", "beta", "  alpha  ", "", "   ", "gamma", "beta", "delta"] * 3
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "v.jsonl").write_text('{"text": "held out"}\n')
    sources = [{"path": str(tmp_path / "a.jsonl")}, {"path": str(tmp_path / "v.jsonl"), "name": "v"}]
    manifest, out = prepare(tmp_path, sources, validation={"sources": ["v"]})
    assert shard_texts(out, "val") == ["held out"]
    assert sorted(shard_texts(out, "train")) == ["alpha", "beta", "delta", "gamma"]  # stripped, each once
    splits = manifest["splits"]
    assert sum(s["duplicates"] for s in splits.values()) == len(docs) - 6 - 4
    assert sum(s["empty"] for s in splits.values()) == 6
    # dedup off keeps them (TinyStories' setting).
    manifest, out = prepare(tmp_path / "nodedup", sources, validation={"sources": ["v"]}, dedup=False)
    assert len(shard_texts(out, "train")) == len(docs) - 6


def test_seen_hashes_across_merges(monkeypatch):
    monkeypatch.setattr(SeenHashes, "MERGE", 8)
    seen = SeenHashes(limit=1000)
    first = seen.new_mask([1, 2, 3, 2, 4, 5, 6, 7, 8, 9, 10])
    assert first == [True, True, True, False] + [True] * 7
    assert len(seen.sorted) == 10 and not seen.recent  # merged into the sorted array
    assert seen.new_mask([10, 11, 1, 11]) == [False, True, False, False]
    assert text_hash(b"x") == text_hash(b"x") != text_hash(b"y")


def test_validation_by_source_name_and_by_file_glob(tmp_path):
    for name in ("train.jsonl", "held.jsonl"):
        (tmp_path / name).write_text(f'{{"text": "{name} one"}}\n{{"text": "{name} two"}}\n')
    held = {"path": str(tmp_path / "held.jsonl"), "name": "held"}
    sources = [{"path": str(tmp_path / "train.jsonl")}, held]
    _, out = prepare(tmp_path / "a", sources, validation={"sources": ["held"]})
    assert shard_texts(out, "val") == ["held.jsonl one", "held.jsonl two"]
    _, out = prepare(tmp_path / "b", sources, validation={"files": ["held*"]})
    assert shard_texts(out, "val") == ["held.jsonl one", "held.jsonl two"]


def test_shards_of_the_configured_size(tmp_path):
    rng = random.Random(1)
    lines = [json.dumps({"text": words(rng, 100)}) + "\n" for _ in range(3000)]
    (tmp_path / "a.jsonl").write_text("".join(lines))
    manifest, out = prepare(tmp_path, [{"path": str(tmp_path / "a.jsonl")}], shard_size_mb=0.2,
                            validation={"fraction": 0.05})  # fmt: skip
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    assert len(train) >= 4 and [s["name"] for s in train][:2] == ["train_0000", "train_0001"]
    sizes = [(out / f"{s['name']}.jsonl").stat().st_size for s in train]
    assert all(200_000 <= size < 201_000 for size in sizes[:-1]), sizes  # closed at the first line past it
    assert shard_names(out)[0] == "val_0000"
    assert sum(s["documents"] for s in manifest["shards"]) == 3000


def test_tinystories_archive_becomes_one_shard_per_file_with_data00_for_validation(shards_dir, tmp_path):
    archive = make_tar_gz(tmp_path / "ts.tar.gz", {n: (shards_dir / n).read_bytes()
                                                   for n in ("data00.json", "data01.json")})  # fmt: skip
    plan = corpus_plan(validate_config({"data": {"shards": 2}, "tokenizer": {"num_shards": 2}}))
    plan.settings["sources"][0]["files"] = [str(archive)]
    manifest = prepare_corpus(plan.settings, tmp_path / "corpus", progress=False)
    assert shard_names(tmp_path / "corpus") == ["val_0000", "train_0000"]
    stories = [s["story"].strip() for s in json.loads((shards_dir / "data00.json").read_text())]
    assert list(iter_shard(tmp_path / "corpus" / "val_0000.jsonl")) == stories
    assert manifest["splits"]["val"]["duplicates"] == 0  # no dedup for TinyStories


# --- the report ---------------------------------------------------------------------------------------------


def test_corpus_report_counts_tokens_and_lengths_per_split(small_tokenizer, tmp_path):
    from tinyllm.shards import pretokenize_shard
    from tinyllm.tokenizer import Tokenizer

    rng = random.Random(2)
    docs = [words(rng, rng.randint(8, 200)) for _ in range(400)] + ["dup"] * 3
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    manifest, out = prepare(tmp_path, [{"path": str(tmp_path / "a.jsonl"), "name": "mine"}],
                            validation={"fraction": 0.2})  # fmt: skip
    bins = [tmp_path / f"{n}.bin" for n in shard_names(out)]
    for name, bin_path in zip(shard_names(out), bins, strict=True):
        pretokenize_shard(out / f"{name}.jsonl", small_tokenizer, bin_path)
    figures = corpus_figures(out, bins, small_tokenizer)
    tok = Tokenizer(small_tokenizer)
    for split in ("val", "train"):
        texts = shard_texts(out, split)
        lengths = [len(tok.encode(t, bos=True, eos=False)) for t in texts]
        f = figures["splits"][split]
        assert f["tokens"] == sum(lengths) and f["documents"] == len(texts)
        assert sum(f["histogram"].values()) == len(texts)
        assert f["histogram"] == dict(Counter(1 << int(np.log2(n)) for n in lengths))  # [2^k, 2^(k+1))
        assert f["sources"] == {"mine": len(texts)}
    assert figures["splits"]["val"]["duplicates"] + figures["splits"]["train"]["duplicates"] == 2
    write_corpus_report(out, bins, small_tokenizer, tmp_path / "corpus.md", tmp_path / "corpus.html")
    text = (tmp_path / "corpus.md").read_text()
    assert "| duplicates dropped |" in text and "## Document length in tokens, validation" in text
    assert f"{figures['splits']['train']['tokens']:,}" in text
    assert "<table id=\"corpus\">" in (tmp_path / "corpus.html").read_text()
    assert corpus_markdown(figures) == text
    assert (out / MANIFEST).is_file()
