"""Small corpora of our own making for the corpus tests: Chinese with a large alphabet, as nested JSON; and
the sources, archives and prepared corpora that the source, corpus and data-fault tests read.

Each document mixes simplified and traditional characters, full-width and ASCII punctuation, digits and now
and then a Latin word; a few hundred frequent characters (drawn Zipf-like) and a long tail of rare ones, so
that the alphabet passes 1,000 distinct characters (the tokenizer's large-alphabet threshold) and the rarest
characters end up spelled in bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from pathlib import Path

COMMON = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事"
    "其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主"
    "没公从學這個們來說國時過會後對裡與還點東車門開長問題話電見風鳥魚馬貓狗雲雨書"
)
PUNCTUATION = ["，", "。", "！", "？", "：", "；", "、", "「", "」", "（", "）", ", ", ". ", "!", "?"]
LATIN = ["AI", "Python", "OK", "Tom", "Lily", "3.14", "2026"]


def rare_characters(count: int, seed: int = 0) -> list[str]:
    """count distinct CJK ideographs outside COMMON, from the unified block."""
    rng = random.Random(seed)
    pool = [chr(c) for c in range(0x4E00, 0x9FFF) if chr(c) not in COMMON]
    return rng.sample(pool, count)


def chinese_documents(count: int, seed: int = 0, rare: int = 1500) -> list[str]:
    rng = random.Random(seed)
    common = list(COMMON)
    weights = [1 / (rank + 1) for rank in range(len(common))]
    tail = rare_characters(rare, seed)
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            chars = rng.choices(common, weights, k=rng.randint(6, 20))
            if rng.random() < 0.3:
                chars.insert(rng.randrange(len(chars)), rng.choice(tail))
            if rng.random() < 0.15:
                chars.insert(rng.randrange(len(chars)), f" {rng.choice(LATIN)} ")
            sentences.append("".join(chars) + rng.choice(PUNCTUATION))
        docs.append("".join(sentences).strip())
    return docs


def write_nested_json_corpus(folder: Path, count: int = 1200, seed: int = 0) -> Path:
    """letters-NN.json files: arrays of {"meta": {"subject": ...}, "body": {"lines": [...]}} records."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = chinese_documents(count, seed)
    per_file = 300
    for start in range(0, count, per_file):
        records = [
            {"meta": {"subject": doc[:6], "id": start + i}, "body": {"lines": doc.split("。")}}
            for i, doc in enumerate(docs[start : start + per_file])
        ]
        (folder / f"letters-{start // per_file:02d}.json").write_text(
            json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8"
        )
    return folder


# --- sources as data.sources gives them, read or prepared as the pipeline does -----------------------------

RECORDS = [
    {"title": "Über Katzen", "body": "Eine Katze schläft.", "meta": {"lang": "de", "lines": ["a", "b"]}},
    {"title": "猫について", "body": "猫は寝ている。", "meta": {"lang": "ja", "lines": ["一", "二"]}},
    {"title": "On cats", "body": "A cat sleeps.\n\nIt dreams.", "meta": {"lang": "en", "lines": []}},
]


def jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


# An archive's members: letters (JSON, gzipped JSON Lines) beside files a members glob leaves out.
MEMBERS = {
    "corpus/letters-1.json": json.dumps([{"subject": "Hi", "lines": ["Dear A,", "hello."]}]).encode(),
    "corpus/letters-2.jsonl.gz": gzip.compress(jsonl([{"subject": "Yo", "lines": ["Dear B,"]}])),
    "corpus/other.json": json.dumps([{"subject": "not wanted", "lines": []}]).encode(),
    "corpus/README.md": b"not a letter",
}
LETTERS = ["Hi\nDear A,\nhello.", "Yo\nDear B,"]


def read_source(spec: dict, files=None, index: int = 0):
    """(every document text of a source spec, as data.sources holds it, the file stats)."""
    from tinyllm.sources import Counter, FileStats, iter_source_documents, local_files, source_from_dict

    source = source_from_dict(spec, index)
    stats = FileStats()
    if files is None:
        files = local_files(spec["path"], f"data.sources[{index}]")
    docs = [text for text, _, _ in iter_source_documents(source, [Path(f) for f in files], Counter(), stats)]
    return docs, stats


def plan_for(sources: list[dict], **data):
    """The corpus plan of a config with these data.sources and data settings."""
    from tinyllm.config import validate_config
    from tinyllm.corpus import corpus_plan

    config = validate_config({"data": {"sources": sources, **data}, "tokenizer": {"num_shards": 1}})
    return corpus_plan(config)


def prepare(folder: Path, sources: list[dict], **data):
    """prepare's one pass over sources into folder/corpus: (its manifest, folder/corpus)."""
    from tinyllm.corpus import prepare_corpus

    out = folder / "corpus"
    return prepare_corpus(plan_for(sources, **data).settings, out, progress=False), out
