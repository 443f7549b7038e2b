"""Small corpora of our own making for the corpus tests: Chinese with a large alphabet, as nested JSON.

Each document mixes simplified and traditional characters, full-width and ASCII punctuation, digits and now
and then a Latin word; a few hundred frequent characters (drawn Zipf-like) and a long tail of rare ones, so
that the alphabet passes 1,000 distinct characters (the tokenizer's large-alphabet threshold) and the rarest
characters end up spelled in bytes.
"""

from __future__ import annotations

import json
import random
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
