"""`tinyllm bench data`: the data stage at scale, and prepare and pretokenize against TinyStories' old path.

1. The stage: a synthetic JSON Lines corpus (TINYLLM_BENCH_DATA_GB, default 2 GB; cached under
   ~/.cache/tinyllm/bench) goes through the pipeline's own rules, `snakemake --cores N` up to the corpus
   report: prepare, tiny_txt, tokenizer (vocab 4096), one pretokenize job per 100 MB shard. Figures: the
   stage's wall time (the report's own job left out), each rule's time from Snakemake's benchmark files,
   and each job's peak memory as its log states it (the data scripts log ru_maxrss).
2. Per process, on the same bytes (the first TINYLLM_BENCH_DATA_SLICE_MB of the corpus, default 200):
   prepare's MB/s reading the JSONL and reading the same documents as a TinyStories archive, against the old
   extract path (one job per shard, each decompressing the archive up to its shard: quadratic); pretokenize's
   tokens/s on a prepared shard (streamed) against the old path (json.load of a TinyStories shard, then
   encode_concat of every story), whose output must be identical.
The machine is described too: CPU model and vector units (lscpu), cores, load before and after.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from tinyllm import paths

REPO = Path(__file__).resolve().parents[3]
SHARD_MB = 100
VOCAB = 4096
SLICE_SHARDS = 10  # the TinyStories-format archive of the slice holds this many shards


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinyllm" / "bench"


def machine() -> dict:
    """CPU model and vector units (lscpu), cores and the load average."""
    info = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return info
    model = re.search(r"Model name:\s*(.+)", text)
    flags = re.search(r"Flags:\s*(.+)", text)
    info["cpu"] = model.group(1).strip() if model else "?"
    wanted = re.compile(r"^(avx2|avx512f|avx512_bf16|avx512_vnni|amx_\w+)$")
    info["vector_units"] = " ".join(f for f in (flags.group(1).split() if flags else []) if wanted.match(f))
    return info


# --- the synthetic corpus -----------------------------------------------------------------------------------


def synthetic_corpus(size_gb: float, seed: int = 0) -> Path:
    """A JSON Lines corpus of about size_gb GB ({"id", "text"} records of 100 to 400 words drawn Zipf-like
    from 30,000 made-up words, 1% exact duplicates), cached by size and seed."""
    path = cache_dir() / f"synthetic-{size_gb:g}GB-{seed}.jsonl"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    syllables = "ka lo mi ne su ta ri po an el ur is ba do fe gu".split()
    words = np.array(sorted({"".join(rng.choice(syllables, rng.integers(1, 4))) + str(i % 7 or "")
                             for i in range(30_000)}))  # fmt: skip
    ranks = np.arange(1, len(words) + 1)
    p = 1 / ranks
    p /= p.sum()
    target = int(size_gb * 1e9)
    tmp = path.with_suffix(".tmp")
    written, index, recent = 0, 0, []
    with open(tmp, "w", encoding="utf-8") as out:
        while written < target:
            draws = rng.choice(len(words), size=(1000, 400), p=p)
            lengths = rng.integers(100, 400, size=1000)
            lines = []
            for row, n in zip(draws, lengths, strict=True):
                text = " ".join(words[row[:n]]).capitalize() + "."
                if recent and rng.random() < 0.01:
                    text = recent[int(rng.integers(len(recent)))]
                recent = recent[-99:] + [text]
                lines.append(json.dumps({"id": index, "text": text}) + "\n")
                index += 1
            chunk = "".join(lines)
            out.write(chunk)
            written += len(chunk)
    os.replace(tmp, path)
    return path


# --- 1. the stage, through the pipeline's rules -------------------------------------------------------------


def run_stage(corpus: Path, cores: int, workdir: Path) -> dict:
    """Snakemake on the data rules of a config whose one source is corpus; figures of the run."""
    import yaml

    config = {
        "data": {"sources": [{"path": str(corpus), "name": "synthetic"}], "shard_size_mb": SHARD_MB},
        "tokenizer": {"vocab_size": VOCAB, "num_shards": 2},
    }
    (workdir / "bench.yaml").write_text(yaml.safe_dump(config))
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake) if snakemake.exists() else "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(workdir / "bench.yaml"), "--cores", str(cores),
           paths.CORPUS_REPORT]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"bench data: snakemake failed:\n{(done.stdout + done.stderr)[-3000:]}")
    seconds: dict[str, float] = {}
    for tsv in (workdir / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "benchmarks").parts[0]
        rule = "report_corpus" if tsv.name == "corpus.tsv" else rule
        seconds[rule] = seconds.get(rule, 0.0) + float(tsv.read_text().splitlines()[1].split("\t")[0])
    peaks: dict[str, float] = {}
    for log in (workdir / "logs").rglob("*.log"):
        found = re.findall(r"peak memory ([\d.]+) MB", log.read_text(errors="replace"))
        if found:
            rule = log.relative_to(workdir / "logs").parts[0]
            peaks[rule] = max(peaks.get(rule, 0.0), max(map(float, found)))
    manifest = json.loads((workdir / paths.CORPUS_DIR / "corpus.json").read_text())
    tokens = sum(os.path.getsize(p) // 2 for p in (workdir / paths.tokenizer_dir(VOCAB)).glob("*_*.bin"))
    figures = {
        "data_corpus_gb": corpus.stat().st_size / 1e9,
        "data_stage_s": wall - seconds.get("report_corpus", 0.0),
        "data_shards": float(len(manifest["shards"])),
        "data_tokens": float(tokens),
        "data_duplicates_dropped": float(sum(s["duplicates"] for s in manifest["splits"].values())),
    }
    for rule in ("prepare", "tiny_txt", "tokenizer", "pretokenize"):
        figures[f"data_{rule}_s"] = seconds.get(rule, float("nan"))
        figures[f"data_{rule}_peak_mb"] = peaks.get(rule, float("nan"))
    figures["data_peak_mb"] = max(peaks.values(), default=float("nan"))
    return figures


# --- 2. per process, against the old TinyStories path -------------------------------------------------------


def _old_extract(archive: Path, member: str, output: Path) -> None:
    """The removed extract rule's work: decompress the archive up to one member and copy it out."""
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar:
            if info.name == member:
                with open(output, "wb") as out:
                    shutil.copyfileobj(tar.extractfile(info), out, 1 << 20)
                return
    raise RuntimeError(f"{member} not in {archive}")


def _old_pretokenize(shard_json: Path, tokenizer_model: Path, output: Path) -> None:
    """The old pretokenize: json.load of the whole shard, every story stripped, encode_concat of the list."""
    from tinyllm.tokenizer import Tokenizer

    with open(shard_json, encoding="utf-8") as f:
        stories = [entry["story"].strip() for entry in json.load(f)]
    ids = Tokenizer(tokenizer_model).encode_concat(stories, bos=True, eos=False)
    output.write_bytes(ids.astype("<u2").tobytes())


def compare_paths(corpus: Path, slice_mb: int, tokenizer_model: Path, folder: Path) -> dict:
    from tinyllm.corpus import document_line, prepare_corpus
    from tinyllm.shards import pretokenize_shard

    texts = []
    with open(corpus, "rb") as f:
        size = 0
        for line in f:
            size += len(line)
            texts.append(json.loads(line)["text"])
            if size >= slice_mb * 1e6:
                break
    jsonl = folder / "slice.jsonl"
    jsonl.write_bytes(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts))
    # The same documents as TinyStories lays them out: SLICE_SHARDS JSON arrays of {"story"} in a tar.gz.
    per = -(-len(texts) // SLICE_SHARDS)
    archive = folder / "slice.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        for k in range(SLICE_SHARDS):
            body = json.dumps([{"story": t} for t in texts[k * per : (k + 1) * per]]).encode()
            info = tarfile.TarInfo(f"data{k:02d}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    settings = {
        "sources": [{"name": "slice", "location": str(jsonl), "members": [], "format": "auto", "text": "text",
                     "documents": "file", "missing": "error", "is_glob": False, "files": [str(jsonl)]}],
        "validation": {"fraction": 0.01}, "dedup": True, "shard_bytes": SHARD_MB * 10**6,
    }  # fmt: skip
    mb = jsonl.stat().st_size / 1e6
    start = time.perf_counter()
    prepare_corpus(settings, folder / "corpus-jsonl", progress=False)
    prepare_jsonl_s = time.perf_counter() - start
    tinystories = {**settings, "dedup": False, "shard_bytes": None, "validation": {"files": ["data00.json"]},
                   "sources": [{**settings["sources"][0], "location": str(archive), "files": [str(archive)],
                                "format": "json", "text": "story"}]}  # fmt: skip
    start = time.perf_counter()
    prepare_corpus(tinystories, folder / "corpus-tinystories", progress=False)
    prepare_archive_s = time.perf_counter() - start
    start = time.perf_counter()
    for k in range(SLICE_SHARDS):
        _old_extract(archive, f"data{k:02d}.json", folder / f"data{k:02d}.json")
    extract_s = time.perf_counter() - start

    # pretokenize one shard both ways: the same documents, the same ids.
    shard_json = folder / "data01.json"
    prepared = folder / "one_shard.jsonl"
    with open(shard_json, encoding="utf-8") as f:
        prepared.write_bytes(b"".join(document_line(entry["story"].strip()) for entry in json.load(f)))
    ours_s = reference_s = float("inf")
    for _ in range(2):  # alternate, so that a burst of load hits both alike
        start = time.perf_counter()
        pretokenize_shard(prepared, tokenizer_model, folder / "ours.bin")
        ours_s = min(ours_s, time.perf_counter() - start)
        start = time.perf_counter()
        _old_pretokenize(shard_json, tokenizer_model, folder / "reference.bin")
        reference_s = min(reference_s, time.perf_counter() - start)
    if (folder / "ours.bin").read_bytes() != (folder / "reference.bin").read_bytes():
        raise RuntimeError("pretokenize_shard's output differs from the old path's")
    tokens = (folder / "ours.bin").stat().st_size // 2
    return {
        "data_slice_mb": mb,
        "prepare_mb_per_s": mb / prepare_jsonl_s,
        "prepare_tinystories_archive_mb_per_s": mb / prepare_archive_s,
        "extract_reference_mb_per_s": mb / extract_s,
        "pretokenize_shard_tokens": float(tokens),
        "pretokenize_stream_tokens_per_s": tokens / ours_s,
        "pretokenize_old_path_tokens_per_s": tokens / reference_s,
    }


def bench_data(threads: int) -> dict:
    """The data stage at TINYLLM_BENCH_DATA_GB on `threads` cores, then the per-process comparison."""
    size_gb = float(os.environ.get("TINYLLM_BENCH_DATA_GB", "2"))
    slice_mb = int(os.environ.get("TINYLLM_BENCH_DATA_SLICE_MB", "200"))
    figures: dict = machine()
    start = time.perf_counter()
    corpus = synthetic_corpus(size_gb)
    figures["data_corpus_build_s"] = time.perf_counter() - start
    print(f"bench data: corpus {corpus} ({corpus.stat().st_size / 1e9:.2f} GB)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        figures |= run_stage(corpus, threads, stage)
        print(f"bench data: stage {figures['data_stage_s']:.0f} s", file=sys.stderr)
        model = stage / paths.tokenizer_model(VOCAB)
        shutil.rmtree(stage / paths.CORPUS_DIR)  # room on the disk for the slice
        slice_dir = Path(tmp) / "slice"
        slice_dir.mkdir()
        figures |= compare_paths(corpus, slice_mb, model, slice_dir)
    figures["prepare_speedup_vs_extract"] = (
        figures["prepare_mb_per_s"] / figures["extract_reference_mb_per_s"]
    )
    figures["pretokenize_speedup_vs_old_path"] = (
        figures["pretokenize_stream_tokens_per_s"] / figures["pretokenize_old_path_tokens_per_s"]
    )
    figures["load_after"] = os.getloadavg()[0]
    return figures
