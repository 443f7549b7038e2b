"""The corpus in figures, per split: sources, documents, bytes, tokens, duplicates and empty documents
dropped, and a histogram of document length in tokens; as corpus.md (to read) and corpus.html (the report).

Token counts come from the pretokenized shards: each document starts with BOS, so the gaps between BOS
positions are the documents' lengths (BOS included, as training sees them).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from tinyllm.batches import TOKEN_DTYPE, shard_split
from tinyllm.corpus import SPLITS, read_manifest
from tinyllm.files import atomic_output
from tinyllm.tokenizer import Tokenizer

# Histogram buckets of document length in tokens: [1, 2), [2, 4), ... [2^k, 2^(k+1)), powers of two.
MAX_BUCKET = 24


def document_lengths(shard: str | os.PathLike, bos_id: int) -> np.ndarray:
    """Lengths in tokens of the documents of a pretokenized shard (each starts with BOS)."""
    ids = np.fromfile(shard, dtype=TOKEN_DTYPE)
    starts = np.flatnonzero(ids == bos_id)
    return np.diff(np.append(starts, len(ids)))


def corpus_figures(corpus_dir: str | os.PathLike, shards: list[str | os.PathLike], tokenizer_model) -> dict:
    """Per split: the manifest's figures plus tokens and the length histogram {bucket start: documents}."""
    manifest = read_manifest(corpus_dir)
    bos = Tokenizer(tokenizer_model).bos_id
    figures = {split: dict(manifest["splits"][split]) for split in SPLITS}
    for split in SPLITS:
        lengths = [document_lengths(p, bos) for p in shards if shard_split(p) == split]
        lengths = np.concatenate(lengths) if lengths else np.empty(0, np.int64)
        buckets = np.minimum(np.log2(np.maximum(lengths, 1)).astype(np.int64), MAX_BUCKET)
        counts = np.bincount(buckets, minlength=MAX_BUCKET + 1)
        figures[split] |= {
            "tokens": int(lengths.sum()),
            "shards": sum(1 for s in manifest["shards"] if s["split"] == split),
            "median_tokens": float(np.median(lengths)) if len(lengths) else 0.0,
            "max_tokens": int(lengths.max()) if len(lengths) else 0,
            "histogram": {1 << b: int(c) for b, c in enumerate(counts) if c},
        }
    skipped = [s for source in manifest["sources"] for s in source["skipped"]]
    return {"splits": figures, "sources": manifest["sources"], "skipped": skipped}


def _rows(figures: dict) -> list[tuple[str, str, str]]:
    val, train = figures["splits"]["val"], figures["splits"]["train"]

    def sources(split):
        return ", ".join(f"{name} ({n:,})" for name, n in split["sources"].items())

    return [
        ("sources (documents)", sources(val), sources(train)),
        ("shards", f"{val['shards']:,}", f"{train['shards']:,}"),
        ("documents", f"{val['documents']:,}", f"{train['documents']:,}"),
        ("bytes (UTF-8)", f"{val['bytes']:,}", f"{train['bytes']:,}"),
        ("tokens (BOS included)", f"{val['tokens']:,}", f"{train['tokens']:,}"),
        ("bytes per token", *(f"{s['bytes'] / max(s['tokens'], 1):.2f}" for s in (val, train))),
        ("median / longest document, tokens", *(f"{s['median_tokens']:,.0f} / {s['max_tokens']:,}"
                                                for s in (val, train))),  # fmt: skip
        ("duplicates dropped", f"{val['duplicates']:,}", f"{train['duplicates']:,}"),
        ("empty documents dropped", f"{val['empty']:,}", f"{train['empty']:,}"),
    ]


def _histogram_lines(split: dict, width: int = 40) -> list[tuple[str, int, str]]:
    histogram = {int(k): v for k, v in split["histogram"].items()}
    if not histogram:
        return []
    most = max(histogram.values())
    return [(f"{start:,}-{2 * start - 1:,}", n, "#" * max(1, round(width * n / most)))
            for start, n in sorted(histogram.items())]  # fmt: skip


def corpus_markdown(figures: dict) -> str:
    lines = ["# Corpus", "", "| | validation | training |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _rows(figures)]
    for split, title in (("val", "validation"), ("train", "training")):
        lines += ["", f"## Document length in tokens, {title}", "", "```"]
        histogram = _histogram_lines(figures["splits"][split])
        lines += [f"{label:>15} {n:>10,} {bar}" for label, n, bar in histogram]
        lines += ["```"]
    if figures["skipped"]:
        lines += ["", "## Files skipped", ""]
        lines += [f"- `{s['file']}`: {s['reason']}" for s in figures["skipped"]]
    return "\n".join(lines) + "\n"


def corpus_html(figures: dict) -> str:
    e = html.escape
    rows = "\n".join(f"<tr><th>{e(a)}</th><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in _rows(figures))
    parts = []
    for split, title in (("val", "validation"), ("train", "training")):
        bars = "\n".join(
            f"<tr><td>{e(label)}</td><td>{n:,}</td><td><span class=bar style='width:{len(bar) * 6}px'></span>"
            f"</td></tr>" for label, n, bar in _histogram_lines(figures["splits"][split])
        )  # fmt: skip
        parts.append(f"<h4>Document length in tokens, {title}</h4>\n<table>\n<tr><th>tokens</th><th>documents"
                     f"</th><th></th></tr>\n{bars}\n</table>")  # fmt: skip
    skipped = "".join(f"<li><code>{e(s['file'])}</code>: {e(s['reason'])}</li>" for s in figures["skipped"])
    skipped = f"<h4>Files skipped</h4><ul>{skipped}</ul>" if skipped else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Corpus</title>
<style>body{{font-family:sans-serif}} td,th{{padding:3px 10px;text-align:right}}
.bar{{display:inline-block;height:10px;background:#4a7ab5}}</style></head>
<body>
<h3>Corpus</h3>
<table id="corpus">
<tr><th></th><th>validation</th><th>training</th></tr>
{rows}
</table>
{"".join(parts)}
{skipped}
</body></html>
"""


def write_corpus_report(corpus_dir, shards, tokenizer_model, markdown_path, html_path) -> dict:
    """Write corpus.md and corpus.html (atomically); return the figures."""
    figures = corpus_figures(corpus_dir, [Path(p) for p in shards], tokenizer_model)
    with atomic_output(markdown_path, "w", encoding="utf-8") as f:
        f.write(corpus_markdown(figures))
    with atomic_output(html_path, "w", encoding="utf-8") as f:
        f.write(corpus_html(figures))
    return figures
