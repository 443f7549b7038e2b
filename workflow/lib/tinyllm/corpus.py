"""The corpus: which sources the config names (TinyStories by default), and `prepare`, the one pass over them.

prepare_corpus reads every source once, front to back, strips each document, drops empty ones and (when
data.dedup is on) exact duplicates, sends each to the validation or the training split, and writes them into
shards of about data.shard_size_mb: `val_0000.jsonl`, `train_0000.jsonl`, ... (one `{"text": ...}` per line),
with `corpus.json` beside them, the manifest: every shard and, per split, documents, bytes, duplicates and
empty documents dropped, and the files skipped. Nothing is held but the current document, the open shards and
the duplicate filter (8 bytes per distinct document, at most DEDUP_LIMIT of them), so memory stays bounded
whatever the corpus size; time is linear in it.

The split is stable: by a hash of the document's text (data.validation.fraction), so a document lands in the
same split whatever else changes, and duplicates never straddle the splits; or by source name or file glob.
TinyStories keeps its own layout: one shard per upstream file, data00.json the validation split, no dedup.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path

import numpy as np

from tinyllm import paths
from tinyllm.errors import ConfigError, DataError
from tinyllm.sources import (
    Counter,
    FileStats,
    Source,
    iter_source_documents,
    local_files,
    source_from_dict,
    url_file_name,
)

MANIFEST = "corpus.json"
SPLITS = ("val", "train")
SHARD_SUFFIX = ".jsonl"
DEFAULT_FRACTION = 0.01
DEDUP_LIMIT = 64 << 20  # distinct documents the duplicate filter remembers (8 bytes each: 512 MB)
BATCH = 4096  # documents hashed and looked up together
TINYSTORIES = "tinystories"
FIRST_SHARDS = ("val_0000", "train_0000")  # every prepared corpus has them (prepare refuses an empty split)


def shard_name(split: str, index: int) -> str:
    """ "val_0000", "train_0012": the shard's split and its number in it."""
    return f"{split}_{index:04d}"


# --- what the config asks for -------------------------------------------------------------------------------


@dataclass
class CorpusPlan:
    """The prepare rule's inputs and params, from the config."""

    downloads: dict[str, dict]  # file under results/data -> {url, sha256}
    inputs: list[str]  # files prepare reads: downloads and local files
    settings: dict  # everything that changes prepare's output (the rule's params)


def corpus_plan(config: dict) -> CorpusPlan:
    """What prepare reads and how, from a validated config: TinyStories when data.sources is empty."""
    data = config["data"]
    if not data["sources"]:
        archive = paths.ARCHIVE
        members = [f"data{i:02d}.json" for i in range(data["shards"])]
        source = {"name": TINYSTORIES, "members": members, "format": "json", "text": "story"}
        settings = {
            "sources": [{**source_from_dict(source, 0, location=archive).settings(), "files": [archive]}],
            "validation": {"files": ["data00.json"]},
            "dedup": False if data["dedup"] is None else data["dedup"],
            "shard_bytes": None,  # one shard per upstream file, as llama2.c
        }
        downloads = {Path(archive).name: {"url": data["url"], "sha256": data["sha256"]}}
        return CorpusPlan(downloads, [archive], settings)

    downloads: dict[str, dict] = {}
    by_url: dict[str, str] = {}
    sources, inputs = [], []
    for index, spec in enumerate(data["sources"]):
        key = f"data.sources[{index}]"
        if spec.get("url"):
            url = spec["url"]
            if url in by_url:
                name = by_url[url]
                if downloads[name]["sha256"] != spec.get("sha256") and spec.get("sha256"):
                    raise ConfigError(f"{key}.sha256: differs from an earlier source with the same url")
            else:
                name = f"downloads/{url_file_name(url)}"
                while name in downloads:
                    name = f"downloads/{len(downloads)}-{url_file_name(url)}"
                downloads[name] = {"url": url, "sha256": spec.get("sha256")}
                by_url[url] = name
            location = f"{paths.DATA_DIR}/{name}"
            files = [location]
            source = source_from_dict(spec, index, location=location)
        else:
            files = [str(p) for p in local_files(spec["path"], key)]
            source = source_from_dict(spec, index)
        sources.append({**source.settings(), "files": files})
        inputs += files
    names = [s["name"] for s in sources]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"data.sources: two sources are named {duplicate!r}; give each its own name")
    validation = dict(data["validation"])
    for name in validation.get("sources") or []:
        if name not in names:
            raise ConfigError(
                f"data.validation.sources: no source is named {name!r} (the sources: {', '.join(names)})"
            )
    if not (validation.get("sources") or validation.get("files") or validation.get("fraction")):
        validation["fraction"] = DEFAULT_FRACTION
    settings = {
        "sources": sources,
        "validation": {k: v for k, v in validation.items() if v},
        "dedup": True if data["dedup"] is None else data["dedup"],
        "shard_bytes": None if data["shard_size_mb"] is None else int(data["shard_size_mb"] * 1e6),
    }
    return CorpusPlan(downloads, sorted(set(inputs)), settings)


# --- the duplicate filter -----------------------------------------------------------------------------------


class SeenHashes:
    """64-bit hashes of the documents kept so far: a sorted numpy array plus a set of recent ones.

    8 bytes per distinct document in the array; the set is merged into it every MERGE entries (a linear merge
    of two sorted runs). Past `limit` distinct documents nothing new is remembered (logged once), so memory
    stays bounded; duplicates of later documents are then kept.
    """

    MERGE = 1 << 20

    def __init__(self, limit: int = DEDUP_LIMIT):
        self.sorted = np.empty(0, np.uint64)
        self.recent: set[int] = set()
        self.limit = limit
        self.full = False

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def new_mask(self, hashes: list[int]) -> list[bool]:
        """For each hash, whether it is new (not seen before, nor earlier in the list); remembers the new."""
        array = np.fromiter(hashes, np.uint64, len(hashes))
        if len(self.sorted):
            at = np.minimum(np.searchsorted(self.sorted, array), len(self.sorted) - 1)
            in_sorted = (self.sorted[at] == array).tolist()
        else:
            in_sorted = [False] * len(hashes)
        mask = []
        recent = self.recent
        for h, old in zip(hashes, in_sorted, strict=True):
            if old or h in recent:
                mask.append(False)
                continue
            mask.append(True)
            if not self.full:
                recent.add(h)
        if len(recent) >= self.MERGE:
            merged = np.concatenate([self.sorted, np.fromiter(recent, np.uint64, len(recent))])
            merged.sort(kind="stable")  # two sorted runs: a merge
            self.sorted, self.recent = merged, set()
            if len(self.sorted) >= self.limit and not self.full:
                self.full = True
                print(f"prepare: the duplicate filter holds {len(self.sorted):,} documents, its limit; later "
                      "documents are checked against those only", file=sys.stderr)  # fmt: skip
        return mask


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB (ru_maxrss; the data rules log it)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # kB on Linux, bytes on macOS


def text_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# --- the shards ---------------------------------------------------------------------------------------------


@dataclass
class SplitStats:
    documents: int = 0
    bytes: int = 0
    duplicates: int = 0
    empty: int = 0
    sources: dict[str, int] = field(default_factory=dict)


class ShardWriter:
    """Documents of one split into val_0000.jsonl, val_0001.jsonl, ...: a new shard past shard_bytes, or at
    each new file when shard_bytes is None."""

    def __init__(self, folder: Path, split: str, shard_bytes: int | None):
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.shards: list[dict] = []
        self.out = None
        self.file_label = None

    def write(self, line: bytes, text_bytes: int, file_label: str) -> None:
        if self.out is not None and (
            (self.shard_bytes is None and file_label != self.file_label)
            or (self.shard_bytes is not None and self.file_bytes >= self.shard_bytes)
        ):
            self.close()
        if self.out is None:
            name = shard_name(self.split, len(self.shards))
            self.out = open(self.folder / f"{name}{SHARD_SUFFIX}", "wb", buffering=1 << 20)
            self.shards.append({"name": name, "split": self.split, "documents": 0, "bytes": 0})
            self.file_bytes = 0
            self.file_label = file_label
        self.out.write(line)
        shard = self.shards[-1]
        shard["documents"] += 1
        shard["bytes"] += text_bytes
        self.file_bytes += len(line)

    def close(self) -> None:
        if self.out is not None:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            self.out = None


def document_line(text: str) -> bytes:
    """One shard line: {"text": ...} as JSON, UTF-8, non-ASCII as is."""
    return ('{"text": ' + encode_basestring(text) + "}\n").encode("utf-8")


def iter_shard(path: str | os.PathLike) -> Iterator[str]:
    """The documents of a prepared shard, in order."""
    loads = json.loads
    with open(path, "rb") as f:
        for line in f:
            yield loads(line)["text"]


def read_manifest(corpus_dir: str | os.PathLike) -> dict:
    path = Path(corpus_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; rerun the prepare rule") from None


def shard_names(corpus_dir: str | os.PathLike) -> list[str]:
    """The prepared shards' names, validation first: ["val_0000", "train_0000", ...]."""
    return [shard["name"] for shard in read_manifest(corpus_dir)["shards"]]


# --- prepare ------------------------------------------------------------------------------------------------


class _Splitter:
    """Which split a document goes to: by source name, by file glob, or by a fraction of text hashes."""

    def __init__(self, validation: dict):
        self.sources = set(validation.get("sources") or [])
        self.files = list(validation.get("files") or [])
        fraction = validation.get("fraction")
        self.threshold = None if fraction is None else int(fraction * 2**32)

    def by_origin(self, source: str, file_label: str) -> str | None:
        """The split of every document of this file, or None when the text decides."""
        if self.sources or self.files:
            member = file_label.rsplit(":", 1)[-1]
            names = (member, Path(member).name)
            matches = any(fnmatch.fnmatchcase(n, g) for g in self.files for n in names)
            in_val = source in self.sources or matches
            if in_val or self.threshold is None:
                return "val" if in_val else "train"
        return None

    def by_hash(self, h: int) -> str:
        return "val" if (h >> 32) < self.threshold else "train"


def prepare_corpus(settings: dict, output: str | os.PathLike, progress: bool = True) -> dict:
    """One pass over the sources of settings (CorpusPlan.settings) into shards in the folder output.

    Writes into a temporary folder beside output and renames it into place when whole, so a failure leaves
    nothing that looks done. Returns the manifest (also written as output/corpus.json).
    """
    from tqdm import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    sources = [(Source(**{k: v for k, v in s.items() if k != "files"} | {"members": tuple(s["members"]),
                                                                          "key": f"data.sources[{i}]"}),
                [Path(f) for f in s["files"]]) for i, s in enumerate(settings["sources"])]  # fmt: skip
    total = sum(p.stat().st_size for _, files in sources for p in files)
    splitter = _Splitter(settings["validation"])
    seen = SeenHashes() if settings["dedup"] else None
    writers = {split: ShardWriter(tmp, split, settings["shard_bytes"]) for split in SPLITS}
    stats = {split: SplitStats() for split in SPLITS}
    interactive = sys.stderr.isatty()
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare", file=sys.stderr,
               disable=not progress, mininterval=0.5 if interactive else 10.0)  # fmt: skip
    try:
        manifest = _one_pass(sources, settings, tmp, bar, splitter, seen, writers, stats)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    finally:
        bar.close()
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return manifest


def _one_pass(sources, settings, tmp, bar, splitter, seen, writers, stats) -> dict:
    """Read every source into the shard writers; the manifest, or DataError for a corpus that cannot train."""
    per_source = []
    try:
        for source, files in sources:
            counter = Counter(on_progress=bar.update)
            file_stats = FileStats()
            documents = empty = 0
            docs = iter_source_documents(source, files, counter, file_stats, spool_dir=str(tmp))
            for batch in _batched(docs, BATCH):
                counter.documents += len(batch)
                kept, emptied = _write_batch(batch, source, splitter, seen, writers, stats)
                documents += kept
                empty += emptied
            for skipped in file_stats.skipped:
                print(f"prepare: skipped {skipped.label}: {skipped.reason}", file=sys.stderr)
            if documents == 0:
                skipped = f", {len(file_stats.skipped)} skipped" if file_stats.skipped else ""
                what = "every document is empty or a duplicate" if counter.documents else "no documents"
                raise DataError(
                    f"{source.key} ({source.name}, {source.location}): {what} in its {file_stats.files} "
                    f"file(s) read{skipped}; check its path, members, format and text"
                )
            skipped = [{"file": s.label, "reason": s.reason} for s in file_stats.skipped]
            per_source.append({"name": source.name, "files_read": file_stats.files, "documents": documents,
                               "empty": empty, "skipped": skipped})  # fmt: skip
    finally:
        for writer in writers.values():
            writer.close()
    for split, name in (("val", "validation"), ("train", "training")):
        if stats[split].documents == 0:
            raise DataError(
                f"the {name} split is empty ({_split_rule(settings['validation'])}, "
                f"{stats['val'].documents + stats['train'].documents} documents in all); "
                + ("raise data.validation.fraction or name validation sources" if split == "val" else
                   "the validation setting took every document; lower it")
            )  # fmt: skip
    shards = [shard for split in SPLITS for shard in writers[split].shards]
    manifest = {
        "shards": shards,
        "splits": {split: stats[split].__dict__ for split in SPLITS},
        "sources": per_source,
        "settings": {k: v for k, v in settings.items() if k != "sources"},
        "dedup_remembered": None if seen is None else len(seen),
    }
    return manifest


def _split_rule(validation: dict) -> str:
    if validation.get("fraction"):
        return f"data.validation.fraction {validation['fraction']:g}"
    if validation.get("sources"):
        return f"data.validation.sources {validation['sources']}"
    return f"data.validation.files {validation.get('files')}"


def _batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_batch(batch, source: Source, splitter: _Splitter, seen, writers, stats) -> tuple[int, int]:
    """Strip, hash, split, deduplicate and write one batch of (text, file label, where); (kept, empty)."""
    texts, data, hashes, origins = [], [], [], []
    for text, file_label, where in batch:
        stripped = text.strip()
        try:
            encoded = stripped.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(
                f"{file_label}: {where}: holds {stripped[err.start:err.end]!r}, not valid Unicode (a lone "
                "surrogate from a JSON \\ud800 escape); fix the record"
            ) from None
        texts.append(stripped)
        data.append(encoded)
        hashes.append(text_hash(encoded))
        origins.append(file_label)
    fresh = seen.new_mask(hashes) if seen is not None else [True] * len(texts)
    kept = empty = 0
    for text, encoded, h, origin, is_new in zip(texts, data, hashes, origins, fresh, strict=True):
        split = splitter.by_origin(source.name, origin) or splitter.by_hash(h)
        if not encoded:
            stats[split].empty += 1
            empty += 1
        elif not is_new:
            stats[split].duplicates += 1
        else:
            writers[split].write(document_line(text), len(encoded), origin)
            split_stats = stats[split]
            split_stats.documents += 1
            split_stats.bytes += len(encoded)
            split_stats.sources[source.name] = split_stats.sources.get(source.name, 0) + 1
            kept += 1
    return kept, empty
