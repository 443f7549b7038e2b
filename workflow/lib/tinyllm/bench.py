"""`tinyllm bench`: speed figures for pretokenization, training and sampling.

Each group is a function that takes the thread count and returns {figure_name: value}. Figures that compare a
fast path with a reference path (for example sampling with and without a KV cache) are measured in the same
run and reported together with their ratio.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyllm.errors import ConfigError, DataError, one_line

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
    """tinyllm.shards.pretokenize_shard against llama2.c's per-story loop (process_shard), on data01.json.

    Both time the whole job: read the JSON, encode, write the .bin. The reference encodes one story per call
    and collects a Python list, as llama2.c's tinystories.py does; its output must equal ours.
    """
    import json
    import tempfile

    import numpy as np

    from tinyllm.shards import pretokenize_shard
    from tinyllm.tokenizer import Tokenizer

    shard = DEFAULT_BENCH_DATA / "data01.json"
    if not shard.is_file():
        raise DataError(f"no {shard}: set TINYLLM_TEST_DATA to a folder of the shards")
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
            raise RuntimeError("pretokenize_shard's output differs from the reference loop's")
        tokens = ours_bin.stat().st_size // 2
    return {
        "pretokenize_tokens": float(tokens),
        "pretokenize_tokens_per_s": tokens / ours_s,
        "pretokenize_reference_tokens_per_s": tokens / reference_s,
        "pretokenize_speedup": reference_s / ours_s,
    }


# --- train --------------------------------------------------------------------------------------------------

GRAD_COSINE_MIN = 0.99  # a CUDA path whose gradient points elsewhere than fp32 eager's is wrong, however fast


def recipe() -> dict:
    """The reference recipe: the config schema's defaults (config.yaml)."""
    from tinyllm.config import validate_config

    return validate_config({})


def recipe_tokens() -> int:
    """Tokens the reference recipe trains on: max_iters x batch_size x accumulation x seq_len."""
    config = recipe()
    train = config["train"]
    steps = train["max_iters"] * train["gradient_accumulation_steps"]
    return steps * train["batch_size"] * config["model"]["max_seq_len"]


def _reference_args():
    from tinyllm.model import ModelArgs

    config = recipe()
    return ModelArgs(**config["model"], vocab_size=config["tokenizer"]["vocab_size"])


@group("train")
def bench_train(threads: int) -> dict[str, float]:
    """Training throughput, forward + backward + AdamW step, at the reference config on random tokens.

    dim 288, 8 layers, 8/4 heads, vocab 4096, seq 256. On CUDA when torch sees it (bench_train_cuda), else on
    the CPU at batch 8 x 256 tokens, one micro-step per optimizer step: float32 eager (llama2.c's path), bf16
    autocast eager, and bf16 autocast compiled (when the CPU multiplies bf16 in hardware), timed in
    alternating rounds, best round kept, so background load hits them alike. MFU = (6 N + 12 n_layers dim T)
    tokens/s / the matmul peak of the path's dtype measured here (tinyllm.devices.peak_flops); attention is
    counted dense (not halved for causality), as nanoGPT does. train_recipe_minutes projects the reference
    recipe (0.82B tokens) at the fastest path's speed.
    """
    from tinyllm.devices import cpu_has_bf16_matmul, peak_flops
    from tinyllm.model import Transformer
    from tinyllm.optim import configure_optimizer

    if torch.cuda.is_available():
        return bench_train_cuda(torch.device("cuda"))
    device = torch.device("cpu")
    args = _reference_args()
    batch, rounds, steps_per_round = 8, 4, 2
    optimizer_cfg = recipe()["train"]
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, args.vocab_size, (batch, args.max_seq_len), generator=generator) for _ in "xy")
    paths = {"fp32_eager": (torch.float32, False)}
    if cpu_has_bf16_matmul():
        paths |= {"bf16_eager": (torch.bfloat16, False), "bf16_compiled": (torch.bfloat16, True)}

    steps, figures = {}, {}
    for name, (dtype, compiled) in paths.items():
        torch.manual_seed(0)
        model = Transformer(args)
        optimizer = configure_optimizer(model, optimizer_cfg, device)
        forward = torch.compile(model) if compiled else model

        def step(forward=forward, optimizer=optimizer, dtype=dtype):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                _, loss = forward(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

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

    flops = Transformer(args).flops_per_token()
    speed = {name: batch * args.max_seq_len / seconds for name, seconds in best.items()}
    mfu = {name: flops * speed[name] / peaks[paths[name][0]] for name in paths}
    fastest = max(speed, key=speed.get)
    figures |= {
        "train_device": "cpu",
        "train_tokens_per_s": speed[fastest],
        "train_mfu": mfu[fastest],
        "train_fastest_path": fastest,
        "train_speedup_vs_fp32_eager": speed[fastest] / speed["fp32_eager"],
        "train_recipe_minutes": recipe_tokens() / speed[fastest] / 60,
        **{f"train_tokens_per_s_{name}": speed[name] for name in paths},
        **{f"train_mfu_{name}": mfu[name] for name in paths},
        "matmul_peak_gflops_fp32": peaks[torch.float32] / 1e9,
        "matmul_peak_gflops_bf16": peaks[torch.bfloat16] / 1e9,
    }
    return figures


@dataclass(frozen=True)
class CudaPath:
    """One way to run an optimizer step of 32 x 256 tokens on CUDA."""

    name: str
    batch_size: int  # sequences per micro-step
    accumulation: int  # micro-steps per optimizer step
    dtype: torch.dtype
    compile_mode: str | None = None  # None: eager; else torch.compile's mode
    fused_adamw: bool = True  # configure_optimizer's fused AdamW; False: the multi-tensor (foreach) one


CUDA_PATHS = (
    # The recipe's batch (config.yaml): 8 x 256 tokens per micro-step, 4 micro-steps per optimizer step.
    CudaPath("fp32_eager", 8, 4, torch.float32),
    CudaPath("bf16_eager", 8, 4, torch.bfloat16),
    CudaPath("bf16_compiled", 8, 4, torch.bfloat16, "default"),
    CudaPath("bf16_cudagraphs", 8, 4, torch.bfloat16, "reduce-overhead"),
    # The GPU preset's batch (configs/gpu.yaml): the same 32 x 256 tokens per optimizer step, one micro-step.
    CudaPath("gpu_preset_bf16_eager", 32, 1, torch.bfloat16),
    CudaPath("gpu_preset_bf16_compiled", 32, 1, torch.bfloat16, "default"),
    CudaPath("gpu_preset_bf16_compiled_foreach_adamw", 32, 1, torch.bfloat16, "default", fused_adamw=False),
    CudaPath("gpu_preset_bf16_cudagraphs", 32, 1, torch.bfloat16, "reduce-overhead"),
    # Last: autotuning the matmul kernels takes minutes.
    CudaPath("gpu_preset_bf16_max_autotune", 32, 1, torch.bfloat16, "max-autotune-no-cudagraphs"),
)


def bench_train_cuda(
    device: torch.device, paths: tuple[CudaPath, ...] = CUDA_PATHS, args=None
) -> dict[str, float]:
    """Training throughput on CUDA for each of paths, measured one after another, and attention kernels.

    Every path trains the same model from the same initial weights on the same 32 x 256 random tokens per
    optimizer step, with the recipe's gradient clipping, and is timed over whole optimizer steps with one
    synchronisation per round (a step never waits for the host). For each path the figures are tokens/s
    (best of the rounds), MFU against the GPU's nominal bf16 peak (a measured TF32 matmul peak for float32),
    the peak GPU memory of training (weights, AdamW state, gradients, activations: torch.cuda's
    max_memory_allocated over the timed steps, less what was allocated before the path was built), the
    compile time, and the cosine between its gradient and float32 eager's on the same weights: a path below
    GRAD_COSINE_MIN computes something else and is never the fastest. A path that fails prints one line and
    is left out. Progress goes to stderr, so a run cut short still shows the paths it finished.
    """
    import gc
    import sys

    from tinyllm.devices import peak_flops
    from tinyllm.model import Transformer

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as training sets them
    args = args or _reference_args()
    tokens_per_step = 32 * args.max_seq_len
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, args.vocab_size, (32, args.max_seq_len), generator=generator) for _ in "xy")
    x, y = x.to(device), y.to(device)
    flops = Transformer(args).flops_per_token()
    peaks = {dtype: peak_flops(dtype, device) for dtype in {path.dtype for path in paths}}
    figures: dict[str, float | str] = {
        "train_device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        **{f"train_peak_flops_source_{_dtype_name(dtype)}": source for dtype, (_, source) in peaks.items()},
        **{f"matmul_peak_gflops_{_dtype_name(dtype)}": peak / 1e9 for dtype, (peak, _) in peaks.items()},
    }
    speed, correct = {}, set()
    for path in paths:
        try:
            measured = _measure_cuda_path(path, args, x, y, device)
        except Exception as err:  # noqa: BLE001 - one path failing (a compile mode, say) must not end the bench
            print(f"bench train: {path.name} failed: {' '.join(str(err).split())[:300]}", file=sys.stderr)
            continue
        finally:
            torch._dynamo.reset()  # drops the compiled graphs (and their CUDA graphs) before the next path
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        seconds, peak_bytes, compile_s, cosine = measured
        speed[path.name] = tokens_per_step / seconds
        mfu = flops * speed[path.name] / peaks[path.dtype][0]
        if cosine >= GRAD_COSINE_MIN:
            correct.add(path.name)
        figures |= {
            f"train_tokens_per_s_{path.name}": speed[path.name],
            f"train_mfu_{path.name}": mfu,
            f"train_peak_mem_mib_{path.name}": peak_bytes / 2**20,
            f"train_grad_cosine_{path.name}": cosine,
        }
        if path.compile_mode:
            figures[f"train_compile_s_{path.name}"] = compile_s
        compiled = f", compiled in {compile_s:.0f} s" if path.compile_mode else ""
        print(f"bench train: {path.name}: {speed[path.name]:,.0f} tokens/s, MFU {mfu:.1%}, "
              f"peak {peak_bytes / 2**20:,.0f} MiB, gradient cosine {cosine:.5f}{compiled}",
              file=sys.stderr)  # fmt: skip

    if "bf16_compiled" in speed:
        figures["train_compile_s"] = figures["train_compile_s_bf16_compiled"]
    if correct:
        fastest = max(correct, key=speed.get)
        figures |= {
            "train_tokens_per_s": speed[fastest],
            "train_mfu": figures[f"train_mfu_{fastest}"],
            "train_peak_mem_mib": figures[f"train_peak_mem_mib_{fastest}"],
            "train_fastest_path": fastest,
            "train_recipe_minutes": recipe_tokens() / speed[fastest] / 60,
        }
        if "fp32_eager" in speed:
            figures["train_speedup_vs_fp32_eager"] = speed[fastest] / speed["fp32_eager"]
    return figures | attention_kernels_ms(args, device)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _measure_cuda_path(path: CudaPath, args, x, y, device, rounds: int = 5, steps: int = 10) -> tuple:
    """(best seconds per optimizer step, peak bytes, seconds of the first step, gradient cosine) of a path."""
    from tinyllm.devices import synchronize
    from tinyllm.model import Transformer
    from tinyllm.optim import configure_optimizer

    optimizer_cfg = recipe()["train"]
    on_cuda = device.type == "cuda"  # the CPU runs this only in tests, with no memory figures
    allocated_before = torch.cuda.memory_allocated(device) if on_cuda else 0
    torch.manual_seed(0)
    model = Transformer(args).to(device)
    optimizer = configure_optimizer(model, optimizer_cfg, device)
    if not path.fused_adamw:
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        betas = (optimizer_cfg["beta1"], optimizer_cfg["beta2"])
        optimizer = torch.optim.AdamW(groups, lr=optimizer_cfg["learning_rate"], betas=betas, foreach=True)
    forward = torch.compile(model, mode=path.compile_mode) if path.compile_mode else model
    micro_batches = list(zip(x.split(path.batch_size), y.split(path.batch_size), strict=True))
    assert len(micro_batches) == path.accumulation, "batch_size x accumulation must be the 32 sequences"

    def accumulate_gradients(dtype=path.dtype) -> None:
        for xb, yb in micro_batches:
            if path.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                _, loss = forward(xb, yb)
            (loss / path.accumulation).backward()

    def optimizer_step() -> None:
        accumulate_gradients()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def seconds(n: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            optimizer_step()
        synchronize(device)
        return (time.perf_counter() - start) / n

    compile_s = seconds(1)  # the first step compiles, for a compiled path
    seconds(3)  # warm-up: CUDA graphs are recorded on the second and third calls
    cosine = _gradient_cosine(model, accumulate_gradients, args, micro_batches, device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    best = min(seconds(steps) for _ in range(rounds))
    peak = torch.cuda.max_memory_allocated(device) - allocated_before if on_cuda else 0
    return best, peak, compile_s, cosine


def _gradient_cosine(model, accumulate_gradients, args, micro_batches, device) -> float:
    """Cosine between the gradient a path accumulates and float32 eager's (no TF32) on the same weights."""
    from tinyllm.model import Transformer

    model.zero_grad(set_to_none=True)
    accumulate_gradients()
    reference = Transformer(args).to(device)
    reference.load_state_dict(model.state_dict())
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for xb, yb in micro_batches:
            (reference(xb, yb)[1] / len(micro_batches)).backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    ours = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
    theirs = torch.cat([p.grad.flatten() for p in reference.parameters()]).double()
    model.zero_grad(set_to_none=True)
    return float(ours @ theirs / (ours.norm() * theirs.norm()))


def attention_kernels_ms(args, device: torch.device, batch: int = 32, repeats: int = 20) -> dict[str, float]:
    """Milliseconds of causal attention forward + backward in bf16 at the reference shapes, per SDPA kernel.

    At head_dim 36 (288 / 8) some fused kernels refuse to run (they want a multiple of 8); padding q, k
    and v to 40 with zeros (and scaling by 36 ** -0.5) gives the same result, so head_dim 40 is timed too
    (without the padding's own cost). Keys attention_ms_<kernel>_d<head_dim>; "_repeat_kv" where the kernel
    needs the key/value heads repeated to the query heads (no grouped-query support), the repeat timed in.
    A kernel that refuses both forms is left out, with one line on stderr.
    """
    import sys

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tinyllm.devices import synchronize

    kernels = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}  # fmt: skip
    group = args.n_heads // args.n_kv_heads
    figures = {}
    for head_dim in sorted({args.head_dim, -(-args.head_dim // 8) * 8}):
        q, k, v = (
            torch.randn(batch, heads, args.max_seq_len, head_dim, device=device, dtype=torch.bfloat16)
            for heads in (args.n_heads, args.n_kv_heads, args.n_kv_heads)
        )
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        grad = torch.randn_like(q)

        def attention(repeat_kv: bool, q=q, k=k, v=v, grad=grad) -> None:
            keys, values = (t.repeat_interleave(group, dim=1) for t in (k, v)) if repeat_kv else (k, v)
            out = F.scaled_dot_product_attention(
                q, keys, values, is_causal=True, scale=args.head_dim**-0.5, enable_gqa=not repeat_kv
            )
            out.backward(grad)

        for name, kernel in kernels.items():
            for repeat_kv in (False, True):
                context = sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext()
                try:
                    with context:
                        attention(repeat_kv)  # warm-up, and the check that the kernel takes these inputs
                        synchronize(device)
                        start = time.perf_counter()
                        for _ in range(repeats):
                            attention(repeat_kv)
                        synchronize(device)
                except RuntimeError as err:
                    if repeat_kv:
                        reason = one_line(err, 200)
                        print(f"bench train: attention kernel {name} refuses head_dim {head_dim}: {reason}",
                              file=sys.stderr)  # fmt: skip
                    continue
                key = f"attention_ms_{name}_d{head_dim}" + ("_repeat_kv" if repeat_kv else "")
                figures[key] = (time.perf_counter() - start) / repeats * 1e3
                break
    return figures


# --- sample -------------------------------------------------------------------------------------------------


@group("sample")
def bench_sample(threads: int) -> dict[str, float]:
    """Tokens/s sampling 256 new tokens at batch 1: the KV-cached decoder in float32 and with int8 weights,
    and the no-cache reference.

    Reference model config (dim 288, 8 layers, 8 heads, 4 KV heads, vocab 4096, seq 256) with random
    weights, the pipeline's sampling settings (temperature 1, top-k 300), a 4-token prompt. Each cached path
    reuses one decoder, as `tinyllm sample` and `tinyllm serve` do; building it (the weight layout; int8
    quantizes too) is timed apart (sample_decoder_build_s, sample_int8_build_s). The paths alternate and each
    keeps its best run, so a burst of load from other processes hits them alike.
    """
    from tinyllm.generate import Decoder, generate
    from tinyllm.model import ModelArgs, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelArgs()).eval()
    prompt, new_tokens = [1, 403, 29, 871], 256
    figures = {
        "sample_decoder_build_s": timed(Decoder, model, 1, repeat=3),
        "sample_int8_build_s": timed(Decoder, model, 1, int8=True, repeat=3),
    }
    paths = {"kv": {"decoder": Decoder(model, 1)}, "int8": {"decoder": Decoder(model, 1, int8=True)}}
    paths["nokv"] = {"use_cache": False}

    def sample(options: dict) -> None:
        generate(model, prompt, new_tokens, temperature=1.0, top_k=300, seed=1337, **options)

    sample(paths["kv"])  # warm-up: first-call allocations and kernel selection
    sample(paths["int8"])
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(2):
        for name, options in paths.items():
            best[name] = min(best[name], timed(sample, options, repeat=1 if name == "nokv" else 3))
    figures.update({f"sample_tokens_per_s_{name}": new_tokens / seconds for name, seconds in best.items()})
    figures["sample_kv_speedup"] = best["nokv"] / best["kv"]
    figures["sample_int8_speedup"] = best["kv"] / best["int8"]
    return figures


@group("data")
def bench_data(threads: int) -> dict[str, float]:
    """The data stage on a synthetic JSON Lines corpus of TINYLLM_BENCH_DATA_GB (default 2) on `threads`
    cores, and prepare and pretokenize per process against TinyStories' old path (tinyllm.databench)."""
    from tinyllm.databench import bench_data as run_data_bench

    return run_data_bench(threads)


HEAVY = {"data"}  # writes gigabytes and runs minutes: only when named


@group("serve")
def bench_serve(threads: int) -> dict[str, float]:
    """Load test of `tinyllm serve` (tinyllm.loadtest) on 127.0.0.1, server and clients on this machine.

    The server (a child process, `threads` torch threads, 32 rows, 16 waiting) serves the reference config
    with random weights and the bench tokenizer; each completion streams up to 128 tokens from "Once upon a
    time" at temperature 1 (top-k 300). Aggregate tokens/s and time to first token with 1, 8 and 32
    concurrent clients (3, 2 and 2 completions each; the loads alternate twice, each keeps its best run),
    the same at 32 with int8 weights (one run); 33 clients of which every third hangs up after 16 tokens;
    a burst of 80 at once, past 32 rows + 16 waiting, where each request must be answered or refused with
    429 ("failed" counts the rest).
    """
    import tempfile

    from tinyllm.checkpoint import save_checkpoint, weights_checkpoint
    from tinyllm.loadtest import ServerProcess, run_clients, summary
    from tinyllm.model import ModelArgs, Transformer

    shard = DEFAULT_BENCH_DATA / "data01.json"
    if not shard.is_file():
        raise DataError(f"no {shard}: set TINYLLM_TEST_DATA to a folder of the shards")
    tokenizer = _bench_tokenizer(DEFAULT_BENCH_DATA)
    body = {"prompt": "Once upon a time", "max_tokens": 128, "temperature": 1.0}
    limits = ("--max-batch", "32", "--max-queue", "16")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        checkpoint = Path(folder) / "ckpt.pt"
        save_checkpoint(weights_checkpoint(Transformer(ModelArgs()), None), checkpoint)
        with ServerProcess(checkpoint, tokenizer, threads, limits) as server:
            run_clients(server.port, 2, 1, body)  # warm-up
            for _ in range(2):  # alternate the three loads; each keeps its best run (bursts of other load)
                for clients, rounds in ((1, 3), (8, 2), (32, 2)):
                    run = summary(*run_clients(server.port, clients, rounds, body), f"serve_{clients}")
                    if run[f"serve_{clients}_tokens_per_s"] > figures.get(f"serve_{clients}_tokens_per_s", 0):
                        figures.update(run)
            figures.update(summary(*run_clients(server.port, 33, 1, body, hang_up_every=3), "serve_hangup"))
            figures.update(summary(*run_clients(server.port, 80, 1, body), "serve_burst"))
            figures.update(summary(*run_clients(server.port, 1, 1, body), "serve_after_burst"))
        with ServerProcess(checkpoint, tokenizer, threads, (*limits, "--int8")) as server:
            run_clients(server.port, 2, 1, body)
            figures.update(summary(*run_clients(server.port, 32, 2, body), "serve_int8_32"))
    figures["serve_32_vs_single"] = figures["serve_32_tokens_per_s"] / figures["serve_1_tokens_per_s"]
    return figures


def run(groups: list[str], threads: int) -> dict[str, float]:
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ConfigError(f"unknown bench group {unknown[0]!r}; choose from {', '.join(GROUPS)}")
    torch.set_num_threads(threads)
    figures: dict[str, float] = {}
    for name in groups or [g for g in GROUPS if g not in HEAVY]:
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
