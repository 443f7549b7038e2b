"""`tinyllm bench`: speed figures for pretokenization, training and sampling.

Each group is a function that takes the thread count and returns {figure_name: value}. Figures that compare a
fast path with a reference path (for example sampling with and without a KV cache) are measured in the same
run and reported together with their ratio.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BENCH_DATA = Path(
    os.environ.get("TINYLLM_TEST_DATA", REPO.parent / "shared" / "data" / "tinystories")
)

GROUPS: dict[str, Callable[[int], dict[str, float]]] = {}


def group(name: str):
    def register(fn):
        GROUPS[name] = fn
        return fn

    return register


def timed(fn, *args, repeat: int = 1, **kwargs) -> float:
    """Best wall time of fn(*args) over repeat runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


# --- pretokenize --------------------------------------------------------------------------------------------


def _bench_tokenizer(shard_dir: Path, vocab_size: int = 4096) -> Path:
    """A BPE tokenizer trained on the bench shards, cached under ~/.cache/tinyllm/bench by their content."""
    import hashlib

    from tinyllm.shards import write_tiny_txt
    from tinyllm.tokenizer import train_tokenizer

    shards = sorted(shard_dir.glob("data*.json"))
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(shard.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinyllm" / "bench"
    prefix = cache / f"tok{vocab_size}-{digest.hexdigest()[:12]}"
    model = prefix.with_name(prefix.name + ".model")
    if not model.is_file():
        text = prefix.with_name(prefix.name + ".txt")
        write_tiny_txt(shards, text)
        train_tokenizer(text, prefix, vocab_size, num_threads=os.cpu_count() or 1, quiet=True)
        text.unlink()
    return model


@group("pretokenize")
def bench_pretokenize(threads: int) -> dict[str, float]:
    """tinyllm.data.pretokenize_shard against llama2.c's per-story loop (process_shard), on data01.json.

    Both time the whole job: read the JSON, encode, write the .bin. The reference encodes one story per call
    and collects a Python list, as llama2.c's tinystories.py does; its output must equal ours.
    """
    import json
    import tempfile

    import numpy as np

    from tinyllm.shards import pretokenize_shard
    from tinyllm.tokenizer import Tokenizer

    shard = DEFAULT_BENCH_DATA / "data01.json"
    model = _bench_tokenizer(DEFAULT_BENCH_DATA)

    def reference(out: Path) -> None:
        enc = Tokenizer(model)
        with open(shard) as f:
            data = json.load(f)
        all_tokens = []
        for example in data:
            all_tokens.extend(enc.encode(example["story"].strip(), bos=True, eos=False))
        np.array(all_tokens, dtype=np.uint16).tofile(out)

    with tempfile.TemporaryDirectory() as tmp:
        ours_bin, reference_bin = Path(tmp) / "ours.bin", Path(tmp) / "reference.bin"
        ours_s = reference_s = float("inf")
        for _ in range(3):  # alternate, so that a burst of load on a shared machine hits both alike
            ours_s = min(ours_s, timed(pretokenize_shard, shard, model, ours_bin, num_threads=threads))
            reference_s = min(reference_s, timed(reference, reference_bin))
        if ours_bin.read_bytes() != reference_bin.read_bytes():
            raise AssertionError("pretokenize_shard's output differs from the reference loop's")
        tokens = ours_bin.stat().st_size // 2
    return {
        "pretokenize_tokens": float(tokens),
        "pretokenize_tokens_per_s": tokens / ours_s,
        "pretokenize_reference_tokens_per_s": tokens / reference_s,
        "pretokenize_speedup": reference_s / ours_s,
    }


# --- train --------------------------------------------------------------------------------------------------


@group("train")
def bench_train(threads: int) -> dict[str, float]:
    """Training throughput, forward + backward + AdamW step, at the reference config on random tokens.

    dim 288, 8 layers, 8/4 heads, vocab 4096, batch 8 x 256 tokens, one micro-step per optimizer step, on
    CUDA when available, else the CPU. Paths: float32 eager (llama2.c's), bf16 autocast eager, and bf16
    autocast compiled (when the device multiplies bf16 in hardware); they are timed in alternating rounds,
    best round kept, so background load hits them alike. MFU = (6 N + 12 n_layers dim T) tokens/s / the peak
    for the path's dtype: on the CPU the matmul peak measured here, on known GPUs their nominal bf16 peak
    (tinyllm.train.peak_flops). Attention is counted dense (not halved for causality), as nanoGPT does.
    """
    from tinyllm.model import ModelArgs, Transformer
    from tinyllm.train import configure_optimizer, cpu_has_bf16_matmul, flops_per_token, peak_flops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    args = ModelArgs(dim=288, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=4096, max_seq_len=256)
    batch, rounds, steps_per_round = 8, 4, 2
    optimizer_cfg = {"learning_rate": 5e-4, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95}
    generator = torch.Generator().manual_seed(0)
    x, y = (
        torch.randint(0, args.vocab_size, (batch, args.max_seq_len), generator=generator).to(device)
        for _ in "xy"
    )
    paths = {"fp32_eager": (torch.float32, False)}
    if torch.cuda.is_bf16_supported() if on_cuda else cpu_has_bf16_matmul():
        paths |= {"bf16_eager": (torch.bfloat16, False), "bf16_compiled": (torch.bfloat16, True)}

    steps, figures = {}, {}
    for name, (dtype, compiled) in paths.items():
        torch.manual_seed(0)
        model = Transformer(args).to(device)
        optimizer = configure_optimizer(model, optimizer_cfg, device)
        forward = torch.compile(model) if compiled else model

        def step(forward=forward, optimizer=optimizer, dtype=dtype):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                _, loss = forward(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if on_cuda:  # time the work, not its queueing
                torch.cuda.synchronize(device)

        first = timed(step)  # compiles, for the compiled path
        if compiled:
            figures["train_compile_s"] = first
        step()  # warm-up, not timed
        steps[name] = step
    # The peaks are measured in every round too: on a shared CPU they vary with load as much as the steps do.
    best = dict.fromkeys(paths, float("inf"))
    peaks = dict.fromkeys((torch.float32, torch.bfloat16), 0.0)
    for _ in range(rounds):
        for name, step in steps.items():
            best[name] = min(best[name], timed(step, repeat=steps_per_round))
        for dtype in peaks:
            peaks[dtype] = max(peaks[dtype], peak_flops(dtype, device)[0])

    flops = flops_per_token(args, Transformer(args).num_params())
    speed = {name: batch * args.max_seq_len / seconds for name, seconds in best.items()}
    mfu = {name: flops * speed[name] / peaks[paths[name][0]] for name in paths}
    fastest = max(speed, key=speed.get)
    figures |= {
        "train_device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "train_tokens_per_s": speed[fastest],
        "train_mfu": mfu[fastest],
        "train_fastest_path": fastest,
        "train_speedup_vs_fp32_eager": speed[fastest] / speed["fp32_eager"],
        **{f"train_tokens_per_s_{name}": speed[name] for name in paths},
        **{f"train_mfu_{name}": mfu[name] for name in paths},
        "matmul_peak_gflops_fp32": peaks[torch.float32] / 1e9,
        "matmul_peak_gflops_bf16": peaks[torch.bfloat16] / 1e9,
    }
    return figures


# --- sample -------------------------------------------------------------------------------------------------


@group("sample")
def bench_sample(threads: int) -> dict[str, float]:
    """Tokens/s sampling 256 new tokens at batch 1, with the KV-cached decoder and the no-cache reference.

    Reference model config (dim 288, 8 layers, 8 heads, 4 KV heads, vocab 4096, seq 256) with random
    weights, the pipeline's sampling settings (temperature 1, top-k 300), a 4-token prompt. The two paths
    alternate and each keeps its best run, so a burst of load from other processes hits both alike. The
    cached path's one-time decoder setup is reported apart (sample_decoder_build_s), as a warm-up.
    """
    from tinyllm.generate import Decoder, generate
    from tinyllm.model import ModelArgs, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelArgs()).eval()
    prompt, new_tokens = [1, 403, 29, 871], 256

    def sample(use_cache: bool) -> None:
        generate(model, prompt, new_tokens, temperature=1.0, top_k=300, seed=1337, use_cache=use_cache)

    # The decoder's one-time setup (weight layout, cache views), which generate() then reuses.
    build_s = timed(Decoder, model, 1, repeat=3)
    sample(True)  # warm-up: builds the reused decoder, first-call allocations and kernel selection
    best_kv = best_nokv = float("inf")
    for _ in range(2):
        best_nokv = min(best_nokv, timed(sample, False))
        best_kv = min(best_kv, timed(sample, True, repeat=3))
    return {
        "sample_tokens_per_s_kv": new_tokens / best_kv,
        "sample_tokens_per_s_nokv": new_tokens / best_nokv,
        "sample_kv_speedup": best_nokv / best_kv,
        "sample_decoder_build_s": build_s,
    }


def run(groups: list[str], threads: int) -> dict[str, float]:
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"tinyllm bench: unknown group {unknown[0]!r}; choose from {', '.join(GROUPS)}")
    torch.set_num_threads(threads)
    figures: dict[str, float] = {}
    for name in groups or list(GROUPS):
        figures.update(GROUPS[name](threads))
    return figures


def main(groups: list[str], threads: int, as_json: bool) -> None:
    figures = run(groups, threads)
    if as_json:
        print(json.dumps(figures))
        return
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread(s)")
    for name, value in figures.items():
        print(f"{name:40s} {value:,.4g}" if isinstance(value, float) else f"{name:40s} {value}")
