"""End to end on a corpus of our own: nested JSON in Chinese, through the same DAG as TinyStories.

A folder of letters-NN.json (records {"meta": {"subject"}, "body": {"lines": [...]}}) and an archive holding
more of them: prepare reads both with a template, splits by a hash of the text, drops duplicates and writes
small shards that pretokenize fans out over; the tokenizer picks its character coverage for a large alphabet;
the model trains, samples a Chinese prompt and is exported. Then what an edit of the corpus reruns.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CONFIG, dry_run_summary, run_snakemake, write_yaml
from corpora import chinese_documents, write_nested_json_corpus
from tinyllm.corpus import iter_shard, read_manifest

pytestmark = pytest.mark.slow

TEMPLATE = "{meta.subject}\n{body.lines}"
PROMPT = "從前有一隻小貓"


def is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef"


@pytest.fixture(scope="module")
def zh_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zh")
    letters = write_nested_json_corpus(root / "letters", count=1200, seed=0)
    # The same records again in the archive (exact duplicates, dropped) and new ones.
    more = write_nested_json_corpus(root / "more", count=600, seed=1)
    shutil.copy(letters / "letters-00.json", more / "letters-09.json")
    with tarfile.open(root / "more.tar.gz", "w:gz") as tar:
        tar.add(more, arcname="more")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"] = {
        "sources": [
            {"path": str(letters / "letters-*.json"), "text": TEMPLATE, "name": "letters"},
            {"path": str(root / "more.tar.gz"), "members": "*/letters-*.json", "text": TEMPLATE},
        ],
        "validation": {"fraction": 0.1},
        "shard_size_mb": 0.1,
    }
    config["tokenizer"] = {"vocab_size": 1024, "num_shards": 3, "input_sentence_size": 0}
    config["sample"]["prompts"] = [PROMPT, ""]
    config_path = write_yaml(root / "zh.yaml", config)
    workdir = root / "run"
    workdir.mkdir()
    run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", configfiles=(config_path,), timeout=900)
    return workdir, config_path, root


def pending_jobs(workdir: Path, *configfiles: Path) -> Counter:
    """Jobs per rule a run would start now (pending outputs, counted once per log file)."""
    rows = [r for r in dry_run_summary(workdir, *configfiles) if r["plan"] == "update pending"]
    return Counter(rule for rule, _ in {(r["rule"], r["log-file(s)"]) for r in rows})


def test_prepare_fans_out_and_drops_the_duplicates(zh_run):
    workdir, _, _ = zh_run
    manifest = read_manifest(workdir / "results/corpus")
    shards = [s["name"] for s in manifest["shards"]]
    assert len(shards) >= 5 and shards[0] == "val_0000"
    bins = sorted(p.stem for p in (workdir / "results/tok1024").glob("*_*.bin"))
    assert bins == sorted(shards)  # one pretokenize job per shard, found after the checkpoint
    splits = manifest["splits"]
    assert splits["val"]["duplicates"] + splits["train"]["duplicates"] == 300  # letters-00 again
    assert set(splits["train"]["sources"]) == {"letters", "more"}
    report = (workdir / "results/report/corpus.md").read_text()
    assert "| duplicates dropped |" in report and "letters (" in report
    log = (workdir / "logs/tokenizer/tok1024.log").read_text()
    assert "character_coverage 0.9" in log and "a large alphabet" in log


def test_every_validation_document_round_trips_and_samples_are_chinese(zh_run):
    from tinyllm.tokenizer import Tokenizer

    workdir, _, _ = zh_run
    tok = Tokenizer(workdir / "results/tok1024/tok1024.model")
    docs = list(iter_shard(workdir / "results/corpus/val_0000.jsonl"))
    assert docs and all(tok.decode(tok.encode(d, False, False)) == d for d in docs)
    samples = (workdir / "results/samples.txt").read_text(encoding="utf-8")
    body = "".join(line for line in samples.splitlines() if not line.startswith("#"))
    letters = [ch for ch in body if not ch.isspace()]
    assert PROMPT in samples
    assert sum(map(is_cjk, letters)) > 0.8 * len(letters), body[:500]


def test_the_hf_export_tokenizer_agrees_on_chinese(zh_run, tmp_path):
    from test_hf import AUTOTOKENIZER, run_without_sentencepiece
    from tinyllm.tokenizer import Tokenizer

    workdir, _, _ = zh_run
    ours = Tokenizer(workdir / "results/tok1024/tok1024.model")
    texts = list(iter_shard(workdir / "results/corpus/val_0000.jsonl"))[:200] + ["罕见字：龘靐齉爩 🐉"]
    (tmp_path / "texts.json").write_text(json.dumps(texts, ensure_ascii=False))
    hf_folder = workdir / "results/export/hf"
    theirs = run_without_sentencepiece(AUTOTOKENIZER, str(hf_folder), str(tmp_path / "texts.json"))
    for text, ids, decoded in zip(texts, theirs["ids"], theirs["decoded"], strict=True):
        assert ids == ours.encode(text, bos=True, eos=False), text
        assert decoded == text


def test_corpus_edits_rerun_prepare_and_what_follows_nothing_before(zh_run):
    workdir, config_path, root = zh_run
    assert pending_jobs(workdir, config_path) == Counter(), "a second run must have nothing to do"
    downstream = {"prepare", "tiny_txt", "tokenizer", "pretokenize", "report_corpus", "train", "sample"}

    # A template change: prepare and everything after it.
    config = yaml.safe_load(config_path.read_text())
    config["data"]["sources"][0]["text"] = "{body.lines}"
    changed = write_yaml(root / "template.yaml", config)
    jobs = pending_jobs(workdir, changed)
    assert downstream <= set(jobs) and "download" not in jobs, jobs

    # A new file in the globbed folder, then an edit of a file already there.
    extra = root / "letters" / "letters-99.json"
    extra.write_text(json.dumps([{"meta": {"subject": "新"}, "body": {"lines": chinese_documents(3, 7)}}],
                                ensure_ascii=False))  # fmt: skip
    try:
        assert downstream <= set(pending_jobs(workdir, config_path))
    finally:
        extra.unlink()
    assert pending_jobs(workdir, config_path) == Counter()
    edited = root / "letters" / "letters-01.json"
    records = json.loads(edited.read_text())
    edited.write_text(json.dumps(records[:-1], ensure_ascii=False))  # one letter fewer
    assert downstream <= set(pending_jobs(workdir, config_path))


def test_the_report_shows_the_corpus(zh_run, tmp_path):
    workdir, config_path, _ = zh_run
    page = tmp_path / "report.html"
    run_snakemake(workdir, "--report", str(page), configfiles=(config_path,))
    text = " ".join(page.read_text(encoding="utf-8").replace("\\n", " ").split())
    assert "a corpus of 2 source(s) (data.sources)" in text
    assert "corpus.html" in text and "duplicates and empty documents dropped" in text
