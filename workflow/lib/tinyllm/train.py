"""Training: pretokenized shards -> a trained Transformer, resumable after a crash or a kill at any moment.

`train` is the loop, top to bottom: settings, model, optimizer, resume, then optimizer steps with gradient
accumulation, periodic evaluation and state checkpoints, and finally the outputs (ckpt.pt, best.pt,
metrics.csv, loss.png). Run as `python -m tinyllm.train settings.json` (under torchrun) it trains
data-parallel: each rank reads its own data stream, gradients are averaged on the last micro-step only, and
rank 0 alone logs and writes.

Resume is exact on CPU: the state checkpoint is taken right after an optimizer step, where the model, the
optimizer, every RNG and the data position (batches are a pure function of seed, rank and batch index) are
all that the rest of the run depends on, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tinyllm.batches import PretokDataset, iter_batches, split_shards
from tinyllm.files import atomic_output
from tinyllm.model import ModelArgs, Transformer

STATE_FORMAT = 1  # bump when the state checkpoint's layout changes: older states then start fresh
STATE_FILE = "state.pt"
STATE_BEST_FILE = "best.pt"
METRIC_COLUMNS = (
    "event", "iter", "tokens", "train_loss", "val_loss", "train_bpb", "val_bpb", "lr", "tokens_per_s", "mfu",
)  # fmt: skip
# Nominal dense bf16 tensor-core peaks (FLOP/s) of common GPUs; others get a measured matmul peak.
GPU_BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
TOKENS_PER_BYTE_SAMPLE = 2_000_000  # val tokens decoded for tokens per byte; the ratio is stable by then


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. str() is one line naming the iteration and the checkpoint kept."""


# --- settings -----------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """ "auto" is cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is slow emulation."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str | None]:
    """The autocast dtype to train in, and a note when it differs from the one asked for."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.bfloat16:
        if device.type == "cpu" and not cpu_has_bf16_matmul():
            return torch.float32, "this CPU has no bf16 matmul units (AMX/AVX512-BF16): training in float32"
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float32, "this GPU does not support bf16: training in float32"
    if dtype != torch.float32 and device.type not in ("cpu", "cuda"):
        return torch.float32, f"no mixed precision on {device.type}: training in float32"
    return dtype, None


def get_lr(it: int, train_cfg: dict) -> float:
    """Learning rate of optimizer step `it` (0-based): linear warmup, cosine decay to min_lr at max_iters.

    With decay_lr false the rate is constant. Warmup reaches the peak at step warmup_iters, and step 0 already
    moves the weights (llama2.c's warmup spends it at lr 0).
    """
    peak, min_lr = train_cfg["learning_rate"], train_cfg["min_lr"]
    warmup, total = train_cfg["warmup_iters"], train_cfg["max_iters"]
    if not train_cfg["decay_lr"]:
        return peak
    if it < warmup:
        return peak * (it + 1) / (warmup + 1)
    if it >= total:
        return min_lr
    progress = (it - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - min_lr)


def configure_optimizer(model: torch.nn.Module, train_cfg: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW that decays matrices and embeddings (2+ dimensions) but not norm gains or other vectors."""
    params = [p for p in model.parameters() if p.requires_grad]  # a tied weight appears once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train_cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (one per step, not one per tensor) exists for CUDA and CPU; on CPU it is also faster.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=train_cfg["learning_rate"], betas=(train_cfg["beta1"], train_cfg["beta2"]), fused=fused
    )


# --- speed: FLOPs and peaks ---------------------------------------------------------------------------------


def flops_per_token(args: ModelArgs, num_params: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward matmuls) plus attention.

    Attention counts the two T x T matmuls (scores and weighted values) as dense, 12 * n_layers * dim * T
    per token over forward and backward, as nanoGPT and the PaLM paper do; the causal half is not discounted.
    """
    return 6 * num_params + 12 * args.n_layers * args.dim * args.max_seq_len


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, size: int = 1024, repeats: int = 5) -> float:
    """The best FLOP/s of a size x size matmul in dtype on device, with the current thread count (~0.2 s)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def seconds() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    seconds()  # warms up the kernels
    return 2 * size**3 / min(seconds() for _ in range(repeats))


def peak_flops(dtype: torch.dtype, device: torch.device) -> tuple[float, str]:
    """Peak FLOP/s for MFU and where it comes from: a GPU's nominal bf16 figure when known, else measured."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for model, flops in GPU_BF16_PEAK_FLOPS.items():
            if model in name:
                return flops, f"nominal {model}"
    return matmul_peak_flops(dtype, device), f"measured {str(dtype).removeprefix('torch.')} matmul"


# --- data helpers -------------------------------------------------------------------------------------------


def val_tokens_per_byte(val_bin: str | os.PathLike, tokenizer) -> float:
    """Tokens per UTF-8 byte of the validation text, for bits per byte = nats per token / ln 2 * this.

    Decodes (up to TOKENS_PER_BYTE_SAMPLE tokens of) the shard story by story: tokens count BOS (the model
    predicts it too), bytes are the stories' text without separators.
    """
    ids = np.fromfile(val_bin, dtype="<u2", count=TOKENS_PER_BYTE_SAMPLE).astype(np.int64)
    starts = np.flatnonzero(ids == tokenizer.bos_id)
    if len(ids) == TOKENS_PER_BYTE_SAMPLE and len(starts) > 1:
        ids = ids[: starts[-1]]  # a whole number of stories
        starts = starts[:-1]
    bounds = [0, *starts.tolist(), len(ids)] if not len(starts) or starts[0] else [*starts.tolist(), len(ids)]
    n_bytes = sum(
        len(tokenizer.decode([t for t in ids[a:b].tolist() if t != tokenizer.bos_id]).encode("utf-8"))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    )
    if n_bytes == 0:
        raise ValueError(f"{val_bin}: decodes to no text")
    return len(ids) / n_bytes


def inputs_fingerprint(bin_dir: str | os.PathLike, tokenizer_model: str | os.PathLike) -> dict:
    """What the data looks like: a state trained on other shards or another tokenizer must not be resumed."""
    shards = [*split_shards(bin_dir, "val"), *split_shards(bin_dir, "train")]
    return {
        "shards": {p.name: p.stat().st_size for p in shards},
        "tokenizer_sha256": hashlib.sha256(Path(tokenizer_model).read_bytes()).hexdigest(),
    }


# --- checkpoints --------------------------------------------------------------------------------------------


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save through a temporary file beside path, then rename: a kill never leaves a torn file."""
    with atomic_output(path) as f:
        torch.save(obj, f)


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in float32 on CPU, named as Transformer names them (no compile/DDP prefixes)."""
    state = model.state_dict()
    plain = {}
    for name, tensor in state.items():
        for prefix in ("_orig_mod.", "module."):
            name = name.removeprefix(prefix)
        plain[name] = tensor.detach().float().cpu() if tensor.is_floating_point() else tensor.detach().cpu()
    return plain


def rng_state() -> dict:
    """Every RNG a training step may draw from, as plain tensors and lists (loadable with weights_only)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": [py_version, list(py_internal), py_gauss],
    }  # fmt: skip


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested dicts, as "train.learning_rate: 0.0005 -> 0.001"."""
    differences = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return differences


def load_resumable_state(state_dir: Path, run_identity: dict) -> tuple[dict | None, str]:
    """The state checkpoint to resume from (or None) and why: resumable when its run_identity equals ours.

    run_identity holds the model and train config, the world size and the inputs' fingerprint; any
    difference means the saved state belongs to another run.
    """
    path = state_dir / STATE_FILE
    if not path.exists():
        return None, "no state checkpoint: starting fresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable state is set aside, never fatal
        return None, f"{path} is unreadable ({type(err).__name__}: {err}): starting fresh"
    if state.get("format") != STATE_FORMAT:
        return None, f"{path} has state format {state.get('format')}, this code writes {STATE_FORMAT}"
    differences = config_differences(state["identity"], run_identity)
    if differences:
        return None, f"{path} was trained with other settings ({'; '.join(differences)}): starting fresh"
    return state, f"resuming from {path} at iteration {state['iter_num']}"


def set_aside_stale_state(state_dir: Path) -> Path | None:
    """Move an old run's state files into state_dir/stale-<time>/ rather than overwrite them."""
    stale = [state_dir / name for name in (STATE_FILE, STATE_BEST_FILE) if (state_dir / name).exists()]
    if not stale:
        return None
    folder = state_dir / time.strftime("stale-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    for path in stale:
        os.replace(path, folder / path.name)
    return folder


def weights_checkpoint(model, args: ModelArgs, iter_num: int, val_loss: float | None, settings: dict) -> dict:
    """The dict ckpt.pt and best.pt hold: what load_model, sampling and the exporters read."""
    return {
        "model": plain_state_dict(model),
        "model_args": args.to_dict(),
        "iter_num": iter_num,
        "val_loss": val_loss,
        "config": settings["config"],
        "settings": settings,
    }


# --- metrics ------------------------------------------------------------------------------------------------


def write_metrics_csv(rows: list[dict], path: str | os.PathLike) -> None:
    with atomic_output(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in METRIC_COLUMNS})


def plot_losses(rows: list[dict], path: str | os.PathLike, tokens_per_iter: int) -> None:
    """Train loss at every logged step and the evaluated train/val losses, against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r["event"] == "train"]
    evals = [r for r in rows if r["event"] == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if steps:
        ax.plot([r["tokens"] for r in steps], [r["train_loss"] for r in steps],
                color="tab:blue", alpha=0.35, lw=0.8, label="train (logged steps)")  # fmt: skip
    if evals:
        tokens = [r["tokens"] for r in evals]
        train_estimates = [r["train_loss"] for r in evals]
        ax.plot(tokens, train_estimates, "o-", color="tab:blue", ms=3, label="train (estimate)")
        ax.plot(tokens, [r["val_loss"] for r in evals], "o-", color="tab:orange", ms=3, label="val")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    top = ax.secondary_xaxis("top", functions=(lambda t: t / tokens_per_iter, lambda i: i * tokens_per_iter))
    top.set_xlabel("optimizer steps")
    fig.tight_layout()
    try:
        with atomic_output(path) as f:
            fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


# --- evaluation ---------------------------------------------------------------------------------------------


@torch.no_grad()
def estimate_losses(model, datasets: dict, eval_iters: int, autocast, device, rank: int, world_size: int):
    """Mean loss per split over the fixed batches 0..eval_iters-1, shared out across ranks.

    The batches are the same at every evaluation and for any world size, so evaluations compare like with
    like and a data-parallel run reports what a single process would.
    """
    was_training = model.training
    model.eval()
    losses = {}
    for split, dataset in datasets.items():
        total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, batch count
        for batch in range(rank, eval_iters, world_size):
            x, y = (torch.from_numpy(a).to(device) for a in dataset.batch_arrays(batch))
            with autocast:
                _, loss = model(x, y)
            total += torch.stack((loss.double(), torch.ones((), dtype=torch.float64, device=device)))
        if world_size > 1:
            torch.distributed.all_reduce(total)
        losses[split] = (total[0] / total[1]).item()
    model.train(was_training)
    return losses


# --- the loop -----------------------------------------------------------------------------------------------


def train(
    config: dict,
    bin_dir: str | os.PathLike | list,  # a folder of data*.bin, or the shard files
    tokenizer_model: str | os.PathLike,
    state_dir: str | os.PathLike,
    ckpt_path: str | os.PathLike,
    best_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    plot_path: str | os.PathLike,
    threads: int | None = None,
) -> dict:
    """Train the model of config["model"] as config["train"] says; return a summary of the run.

    Resumes from state_dir/state.pt when it was saved by a run with the same config, world size and inputs.
    Under torchrun (WORLD_SIZE > 1) this is one data-parallel rank.
    """
    from tqdm import tqdm

    from tinyllm.tokenizer import Tokenizer

    # Settings: world, device, precision, threads.
    model_cfg, train_cfg = config["model"], config["train"]
    state_dir = Path(state_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world_size > 1
    device = resolve_device(train_cfg["device"])
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    master = rank == 0

    def log(message: str) -> None:
        if master:
            tqdm.write(message, file=sys.stderr)

    progress = None
    try:
        if threads is not None:
            torch.set_num_threads(max(1, threads // world_size) if device.type == "cpu" else threads)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        dtype, dtype_note = resolve_dtype(train_cfg["dtype"], device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        batch_size, seq_len = train_cfg["batch_size"], model_cfg["max_seq_len"]
        accumulation = train_cfg["gradient_accumulation_steps"]
        tokens_per_iter = batch_size * seq_len * accumulation * world_size
        max_iters, eval_interval = train_cfg["max_iters"], train_cfg["eval_interval"]

        tokenizer = Tokenizer(tokenizer_model)
        args = ModelArgs(**model_cfg, vocab_size=tokenizer.n_words)
        run_identity = {
            "config": {"model": model_cfg, "train": train_cfg},
            "world_size": world_size,
            "inputs": inputs_fingerprint(bin_dir, tokenizer_model),
        }
        state, resume_reason = load_resumable_state(state_dir, run_identity)
        if distributed:
            torch.distributed.barrier()  # every rank has read the state before rank 0 may move it
        if state is None and master:
            moved = set_aside_stale_state(state_dir)
            if moved:
                resume_reason += f"; the old state is kept in {moved}"
        tokens_per_byte = val_tokens_per_byte(split_shards(bin_dir, "val")[0], tokenizer)

        # Model and optimizer: the same initial weights on every rank, then per-rank dropout streams.
        torch.manual_seed(train_cfg["seed"])
        raw_model = Transformer(args).to(device)
        torch.manual_seed(train_cfg["seed"] + rank)
        optimizer = configure_optimizer(raw_model, train_cfg, device)
        num_params = raw_model.num_params()
        peak, peak_source = peak_flops(dtype, device)
        settings = {
            "config": {"model": model_cfg, "train": train_cfg},
            "model_args": args.to_dict(),
            "num_params": num_params,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "world_size": world_size,
            "threads_per_rank": torch.get_num_threads(),
            "tokens_per_iter": tokens_per_iter,
            "val_tokens_per_byte": tokens_per_byte,
            "peak_flops": peak,
            "peak_flops_source": peak_source,
            "bin_dir": str(bin_dir) if isinstance(bin_dir, (str, os.PathLike)) else [str(p) for p in bin_dir],
            # SLURM (and the user) decide which GPUs a job sees; the log shows it.
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "tokenizer_model": str(tokenizer_model),
            "torch": str(torch.__version__),
        }
        log("train: settings\n" + "\n".join(f"  {k}: {v}" for k, v in settings.items()))
        if dtype_note:
            log(f"train: note: {dtype_note}")
        log(f"train: {resume_reason}")

        iter_num, best_val_loss, last_val_loss, rows = 0, float("inf"), None, []
        saved_iter = 0  # iteration of the last state checkpoint written
        if state is not None:
            raw_model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            iter_num, best_val_loss = state["iter_num"], state["best_val_loss"]
            last_val_loss = state["val_loss"]
            rows, saved_iter = state["metrics"], iter_num
            set_rng_state(state["rng"][rank])
        model = torch.compile(raw_model) if train_cfg["compile"] else raw_model
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[local_rank] if device.type == "cuda" else None
            )

        # Data: this rank's training stream from the batch after the last one consumed; fixed eval batches.
        train_batches = iter_batches(
            bin_dir, "train", batch_size, seq_len, device, seed=train_cfg["seed"], rank=rank,
            world_size=world_size, start_batch=iter_num * accumulation,
        )  # fmt: skip
        eval_sets = {
            # The train-split estimate draws with another seed, so it is not the first training batches.
            split: PretokDataset(
                bin_dir, split, seq_len, seed=train_cfg["seed"] + (split == "train"), batch_size=batch_size
            )
            for split in ("train", "val")
        }
        token_flops = flops_per_token(args, num_params)

        def evaluate_and_checkpoint() -> None:
            nonlocal best_val_loss, last_val_loss, saved_iter
            losses = estimate_losses(
                raw_model, eval_sets, train_cfg["eval_iters"], autocast, device, rank, world_size
            )
            bpb = {split: loss / math.log(2) * tokens_per_byte for split, loss in losses.items()}
            rows.append({
                "event": "eval", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                "train_loss": losses["train"], "val_loss": losses["val"],
                "train_bpb": bpb["train"], "val_bpb": bpb["val"],
                "lr": get_lr(max(iter_num - 1, 0), train_cfg),
            })  # fmt: skip
            log(f"eval at iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                f"({bpb['val']:.4f} bits/byte)")  # fmt: skip
            if iter_num == 0:
                return  # the initial weights are neither a result nor worth saving
            last_val_loss, improved = losses["val"], losses["val"] < best_val_loss
            best_val_loss, saved_iter = min(best_val_loss, last_val_loss), iter_num
            rngs = [rng_state()]
            if distributed:
                rngs = [None] * world_size
                torch.distributed.all_gather_object(rngs, rng_state())
            if not master:
                return
            if improved:
                save_atomic(weights_checkpoint(raw_model, args, iter_num, last_val_loss, settings),
                            state_dir / STATE_BEST_FILE)  # fmt: skip
            save_atomic({
                "format": STATE_FORMAT, "identity": run_identity,
                "model": plain_state_dict(raw_model), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "iter_num": iter_num, "best_val_loss": best_val_loss,
                "val_loss": last_val_loss, "model_args": args.to_dict(), "config": settings["config"],
                "settings": settings, "rng": rngs, "data_batch": iter_num * accumulation, "metrics": rows,
            }, state_dir / STATE_FILE)  # fmt: skip

        if iter_num == 0:
            evaluate_and_checkpoint()
        interactive = sys.stderr.isatty()
        progress = tqdm(
            total=max_iters, initial=iter_num, unit="it", disable=not master, file=sys.stderr,
            mininterval=1.0 if interactive else 30.0, dynamic_ncols=True,
        )  # fmt: skip
        interval_seconds, interval_tokens = 0.0, 0
        model.train()
        while iter_num < max_iters:
            # One optimizer step: accumulate gradients over micro-batches, syncing ranks on the last only.
            started = time.perf_counter()
            lr = get_lr(iter_num, train_cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro_step in range(accumulation):
                x, y = next(train_batches)
                last_micro_step = micro_step == accumulation - 1
                no_sync = model.no_sync() if distributed and not last_micro_step else contextlib.nullcontext()
                with no_sync:
                    with autocast:
                        _, loss = model(x, y)
                    loss = loss / accumulation
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if distributed:
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= world_size
            step_loss = loss_sum.item()
            if not math.isfinite(step_loss):
                kept = (f"the state checkpoint of iteration {saved_iter} ({state_dir / STATE_FILE}) is kept"
                        if saved_iter else "no state checkpoint was written yet")  # fmt: skip
                raise TrainingDiverged(
                    f"training diverged: loss is {step_loss} at iteration {iter_num + 1}; {kept}. "
                    "Lower train.learning_rate or raise train.warmup_iters."
                )
            if train_cfg["grad_clip"] > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), train_cfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            iter_num += 1
            interval_seconds += time.perf_counter() - started
            interval_tokens += tokens_per_iter

            if iter_num % train_cfg["log_interval"] == 0 or iter_num == max_iters:
                tokens_per_s = interval_tokens / interval_seconds
                mfu = token_flops * tokens_per_s / (peak * world_size)
                rows.append({
                    "event": "train", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                    "train_loss": step_loss, "lr": lr, "tokens_per_s": tokens_per_s, "mfu": mfu,
                })  # fmt: skip
                progress.set_postfix(
                    loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{mfu:.1%}", refresh=False
                )
                interval_seconds, interval_tokens = 0.0, 0
            progress.update(1)
            if iter_num % eval_interval == 0 or iter_num == max_iters:
                evaluate_and_checkpoint()
        progress.close()

        # Outputs: the final weights, the best-val weights (kept in the state folder while training, since
        # Snakemake deletes a failed job's declared outputs), the metrics and the loss curve.
        if master:
            save_atomic(weights_checkpoint(raw_model, args, iter_num, last_val_loss, settings), ckpt_path)
            best = torch.load(state_dir / STATE_BEST_FILE, map_location="cpu", weights_only=True)
            save_atomic(best, best_path)
            write_metrics_csv(rows, metrics_path)
            plot_losses(rows, plot_path, tokens_per_iter)
            log(
                f"train: done at iteration {iter_num}: val loss {last_val_loss:.4f}, "
                f"best {best_val_loss:.4f} (iteration {best['iter_num']}); "
                f"wrote {ckpt_path}, {best_path}, {metrics_path}, {plot_path}"
            )
        return {"iter_num": iter_num, "val_loss": last_val_loss, "best_val_loss": best_val_loss,
                "tokens_per_byte": tokens_per_byte, "settings": settings}  # fmt: skip
    finally:
        if progress is not None:  # on an exception too; an unclosed bar is printed again at exit
            progress.close()
        if distributed:
            torch.distributed.destroy_process_group()


# --- data-parallel launch -----------------------------------------------------------------------------------


def launch_distributed(settings: dict, nproc: int, settings_path: str | os.PathLike, stdout=None) -> None:
    """Run train(**settings) on nproc data-parallel ranks with torchrun; raise if any rank fails.

    The settings travel as JSON in settings_path (in the state folder). torchrun is invoked as
    `python -m torch.distributed.run` of this interpreter, so it is the torch this process imports.
    """
    settings_path = Path(settings_path)
    settings_path.parent.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=1, default=str))
    library = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (library, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=python_path)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (settings.get("threads") or 1) // nproc)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "tinyllm.train", str(settings_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, stdout=stdout, check=False)
    if result.returncode:
        raise RuntimeError(f"data-parallel training failed (torchrun exit status {result.returncode}); "
                           "the ranks' errors are in the log above")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tinyllm.train SETTINGS.json  (normally started by torchrun)", file=sys.stderr)
        return 2
    train(**json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
