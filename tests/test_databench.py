"""tinyllm.databench (`tinyllm bench data`) at a small scale: its corpus, its comparisons, its stage run."""

from __future__ import annotations

import json

import pytest
from tinyllm import databench


@pytest.fixture
def small_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return databench.synthetic_corpus(0.002)


def test_synthetic_corpus_is_json_lines_of_the_size_asked_with_some_duplicates(small_corpus):
    lines = small_corpus.read_text().splitlines()
    assert 2e6 <= small_corpus.stat().st_size < 4e6  # written 1,000 records at a time
    texts = [json.loads(line)["text"] for line in lines]
    assert 0 < len(texts) - len(set(texts)) < 0.05 * len(texts)
    assert databench.synthetic_corpus(0.002) == small_corpus  # cached


def test_compare_paths_measures_both_ways_on_the_same_documents(small_corpus, small_tokenizer, tmp_path):
    figures = databench.compare_paths(small_corpus, 1, small_tokenizer, tmp_path)
    for key in ("prepare_mb_per_s", "prepare_tinystories_archive_mb_per_s", "extract_reference_mb_per_s",
                "pretokenize_stream_tokens_per_s", "pretokenize_old_path_tokens_per_s"):  # fmt: skip
        assert figures[key] > 0, key
    assert 0.9 <= figures["data_slice_mb"] < 1.1  # the first 1 MB of records, without their ids
    # The old path's output equals ours (compare_paths raises otherwise), and it is the shard's tokens.
    assert figures["pretokenize_shard_tokens"] == (tmp_path / "ours.bin").stat().st_size // 2


def test_machine_names_the_cpu_and_its_vector_units():
    info = databench.machine()
    assert info["cpus"] >= 1 and "load_before" in info
    if "cpu" in info:
        assert isinstance(info["vector_units"], str)


@pytest.mark.slow
def test_the_stage_runs_the_pipelines_data_rules_and_reads_their_peaks(small_corpus, tmp_path):
    figures = databench.run_stage(small_corpus, 2, tmp_path)
    assert figures["data_shards"] >= 2 and figures["data_tokens"] > 0
    for rule in ("prepare", "tiny_txt", "tokenizer", "pretokenize"):
        assert figures[f"data_{rule}_s"] >= 0 and 10 < figures[f"data_{rule}_peak_mb"] < 1024, rule
