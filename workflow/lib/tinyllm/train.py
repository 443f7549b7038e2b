"""Training: pretokenized shards -> a trained Transformer, resumable after a crash, a kill or a signal.

`train` reads top to bottom: check the inputs, set up the model and optimizer, resume if a matching state
exists, then the loop (learning rate, micro-steps, clip, step, log, evaluate and save), then the outputs
(ckpt.pt, best.pt, metrics.csv, loss.png). Run as `python -m tinyllm.train settings.json` (under torchrun)
it is one data-parallel rank: each rank reads its own data stream, gradients are averaged on the last
micro-step only, and rank 0 alone logs and writes.

Resume is exact on CPU: the state checkpoint (layout in tinyllm.checkpoint) is taken right after an
optimizer step, where the model, the optimizer, every RNG and the data position (batches are a pure
function of seed, rank and batch index) are all that the rest of the run depends on.

The loop never waits for the device between log points: losses stay on the device and are read (and checked
for NaN) every train.log_interval steps and before every save, so a GPU runs ahead of the host.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tinyllm.batches import PretokDataset, check_pretokenized_shard, iter_batches, split_shards
from tinyllm.checkpoint import STATE_FORMAT, read_checkpoint, save_checkpoint, weights_checkpoint
from tinyllm.devices import peak_flops, resolve_device, resolve_dtype, synchronize
from tinyllm.errors import CheckpointError, DataError, TinyllmError, TrainingDiverged, TrainingStopped
from tinyllm.model import ModelArgs, Transformer
from tinyllm.optim import configure_optimizer, get_lr, set_lr

STATE_FILE = "state.pt"
STATE_BEST_FILE = "best.pt"
STALE_DIR = "stale"  # the last state set aside by a run with other settings or data; one only
METRIC_COLUMNS = (
    "event", "iter", "tokens", "train_loss", "val_loss", "train_bpb", "val_bpb", "lr", "tokens_per_s", "mfu",
    "elapsed_s",
)  # fmt: skip
TOKENS_PER_BYTE_SAMPLE = 2_000_000  # val tokens decoded for tokens per byte; the ratio is stable by then
PROJECTION_STEPS = 20  # optimizer steps timed (after the first, which compiles) to project the run's length
CPU_WARNING_SECONDS = 3 * 3600  # a CPU run projected past this gets a pointer to configs/cpu.yaml


# --- the run's world: ranks, device, signals ----------------------------------------------------------------


@dataclass
class World:
    """This process's place in a (possibly data-parallel) run."""

    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def log(self, message: str) -> None:
        if self.master:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)


def join_world(device_name: str) -> World:
    """The rank and device from torchrun's environment (one process without it); joins the process group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank, local_rank, size, device)


class StopSignals:
    """Catches SIGTERM and SIGINT (SLURM's warning before a kill, Ctrl-C) so the loop can save and stop.

    The loop asks `requested()` after each optimizer step. Data-parallel ranks agree on it at log steps only,
    where they synchronise anyway, so a signal takes effect within train.log_interval steps there.
    """

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python allows handlers there only
            for signum in self.NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def requested(self, world: World, at_log_step: bool) -> str | None:
        """The name of the signal that asks to stop now, or None."""
        if not world.distributed:
            return self.NAMES.get(self.received)
        if not at_log_step:
            return None
        flag = torch.tensor([self.received or 0], device=world.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return self.NAMES.get(int(flag.item()))


# --- inputs: checked before any state is touched ------------------------------------------------------------


def check_inputs(bin_dir, tokenizer) -> dict[str, list[Path]]:
    """Every shard of both splits, checked (even size, ids below the vocabulary): {split: shards}."""
    shards = {split: split_shards(bin_dir, split) for split in ("val", "train")}
    for path in (*shards["val"], *shards["train"]):
        check_pretokenized_shard(path, tokenizer.n_words)
    return shards


def file_digest(path: str | os.PathLike) -> str:
    """blake2b of a file's content (of every file in a folder): about 1 s per GB, small beside training."""
    path = Path(path)
    if path.is_dir():
        parts = (f"{p.relative_to(path)}:{file_digest(p)}" for p in sorted(path.rglob("*")) if p.is_file())
        return hashlib.blake2b("\n".join(parts).encode()).hexdigest()[:32]
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()[:32]


def inputs_fingerprint(shards: dict[str, list[Path]], tokenizer_model: str | os.PathLike) -> dict:
    """The content of the data and tokenizer: a state trained on other data must not be resumed."""
    files = [*shards["val"], *shards["train"], Path(tokenizer_model)]
    return {path.name: file_digest(path) for path in files}


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
        raise DataError(f"{val_bin}: decodes to no text")
    return len(ids) / n_bytes


# --- the training state -------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the loop has done so far: with the model, optimizer and RNGs, all a resumed run needs."""

    iter_num: int = 0
    best_val_loss: float = math.inf
    val_loss: float | None = None
    elapsed_s: float = 0.0  # wall-clock seconds in the loop, summed over resumes
    rows: list[dict] = field(default_factory=list)  # metrics.csv so far


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


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested dicts, as "train.learning_rate: 0.0005 -> 0.001"."""
    found = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


def state_mismatch(state: dict, config: dict, world_size: int, inputs: dict) -> str | None:
    """Why a saved state belongs to another run, in one line, or None when it is ours to resume."""
    if state.get("format") != STATE_FORMAT:
        return f"it has state format {state.get('format')}, this code writes {STATE_FORMAT}"
    changed = differences(state["config"], config)
    if state["world_size"] != world_size:
        changed.append(f"world size: {state['world_size']} -> {world_size}")
    for name in sorted(set(state["inputs"]) | set(inputs)):
        if name not in inputs:
            changed.append(f"{name} is no longer an input")
        elif name not in state["inputs"]:
            changed.append(f"{name} is a new input")
        elif state["inputs"][name] != inputs[name]:
            changed.append(f"{name} changed content")
    return f"it was trained with other settings or data ({'; '.join(changed)})" if changed else None


def load_resumable_state(
    state_dir: Path, config: dict, world_size: int, inputs: dict
) -> tuple[dict | None, str]:
    """The state checkpoint to resume from (or None) and why."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None, "no state checkpoint: starting fresh"
    try:
        state = read_checkpoint(path)
    except CheckpointError as err:  # an unreadable state is set aside, never fatal
        return None, f"{err}: starting fresh"
    mismatch = state_mismatch(state, config, world_size, inputs)
    if mismatch:
        return None, f"{path}: {mismatch}: starting fresh"
    return state, f"resuming from {path} at iteration {state['iter_num']}"


def set_aside_stale_state(state_dir: Path) -> Path | None:
    """Move an old run's state files into state_dir/stale/, replacing the one set aside before."""
    stale = [state_dir / name for name in (STATE_FILE, STATE_BEST_FILE) if (state_dir / name).exists()]
    if not stale:
        return None
    folder = state_dir / STALE_DIR
    for old in folder.glob("*.pt"):
        old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for path in stale:
        os.replace(path, folder / path.name)
    return folder


# --- speed, evaluation, metrics -----------------------------------------------------------------------------


def flops_per_token(args: ModelArgs, num_params: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward matmuls) plus attention.

    Attention counts the two T x T matmuls (scores and weighted values) as dense, 12 * n_layers * dim * T
    per token over forward and backward, as nanoGPT and the PaLM paper do; the causal half is not discounted.
    """
    return 6 * num_params + 12 * args.n_layers * args.dim * args.max_seq_len


@torch.no_grad()
def estimate_losses(model, datasets: dict, eval_iters: int, autocast, world: World) -> dict[str, float]:
    """Mean loss per split over the fixed batches 0..eval_iters-1, shared out across ranks.

    The batches are the same at every evaluation and for any world size, so evaluations compare like with
    like and a data-parallel run reports what a single process would.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(datasets), 2, dtype=torch.float64, device=world.device)  # loss sum, batches
    for i, dataset in enumerate(datasets.values()):
        for batch in range(world.rank, eval_iters, world.size):
            x, y = (torch.from_numpy(a).to(world.device) for a in dataset.batch_arrays(batch))
            with autocast:
                _, loss = model(x, y)
            totals[i, 0] += loss.double()
            totals[i, 1] += 1
    if world.distributed:
        torch.distributed.all_reduce(totals)
    model.train(was_training)
    means = (totals[:, 0] / totals[:, 1]).tolist()  # one host sync for every split
    return dict(zip(datasets, means, strict=True))


def write_metrics_csv(rows: list[dict], path: str | os.PathLike) -> None:
    from tinyllm.files import atomic_output

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

    from tinyllm.files import atomic_output

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


def format_duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# --- the run ------------------------------------------------------------------------------------------------


class Run:
    """One training run's fixed parts (settings, model, optimizer, data) and the helpers the loop calls.

    The loop itself is `train` below; this class only keeps it short: `evaluate`, `save_state`,
    `check_losses` and `write_outputs` are the steps it names.
    """

    def __init__(self, config: dict, bin_dir, tokenizer_model, state_dir, world: World, threads: int | None):
        from tinyllm.tokenizer import Tokenizer

        self.config, self.world = config, world
        model_cfg, cfg = config["model"], config["train"]
        self.cfg, self.state_dir = cfg, Path(state_dir)
        device = world.device
        if threads is not None:
            torch.set_num_threads(max(1, threads // world.size) if device.type == "cpu" else threads)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype, dtype_note = resolve_dtype(cfg["dtype"], device)
        self.autocast = torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.accumulation = cfg["gradient_accumulation_steps"]
        self.tokens_per_iter = cfg["batch_size"] * model_cfg["max_seq_len"] * self.accumulation * world.size

        # Inputs first: a bad shard fails here, before any state is read or moved.
        tokenizer = Tokenizer(tokenizer_model)
        self.shards = check_inputs(bin_dir, tokenizer)
        inputs = inputs_fingerprint(self.shards, tokenizer_model)
        self.tokens_per_byte = val_tokens_per_byte(self.shards["val"][0], tokenizer)
        self.args = ModelArgs(**model_cfg, vocab_size=tokenizer.n_words)
        self.init_weights = None  # train.init_from's weights: an input too, read and checked up front
        if cfg["init_from"]:
            from tinyllm.foreign import check_matches, load_foreign_checkpoint

            source = load_foreign_checkpoint(cfg["init_from"])
            where = f"train.init_from {cfg['init_from']}"
            check_matches(source.model_args, model_cfg, tokenizer.n_words, where)
            self.init_weights = source.state_dict
            inputs["init_from"] = file_digest(cfg["init_from"])
            world.log(f"train: starting from the weights of {cfg['init_from']} ({source.format})")

        self.state, resume_reason = load_resumable_state(self.state_dir, config, world.size, inputs)
        if world.distributed:
            torch.distributed.barrier()  # every rank has read the state before rank 0 may move it
        if self.state is None and world.master:
            moved = set_aside_stale_state(self.state_dir)
            if moved:
                resume_reason += f"; the old state is kept in {moved}"
        self.identity = {"world_size": world.size, "inputs": inputs}
        self.saved_iter = self.state["iter_num"] if self.state else 0  # the last state checkpoint's iteration

        # Model and optimizer: the same initial weights on every rank, then per-rank dropout streams.
        torch.manual_seed(cfg["seed"])
        self.raw_model = Transformer(self.args).to(device)
        if self.init_weights is not None:
            self.raw_model.load_state_dict(self.init_weights)
        torch.manual_seed(cfg["seed"] + world.rank)
        self.optimizer = configure_optimizer(self.raw_model, cfg, device)
        self.num_params = self.raw_model.num_params()
        self.peak, peak_source = peak_flops(self.dtype, device)
        self.token_flops = flops_per_token(self.args, self.num_params)
        self.eval_sets = {
            # The train-split estimate draws with another seed, so it is not the first training batches.
            split: PretokDataset(self.shards[split], split, model_cfg["max_seq_len"],
                                 seed=cfg["seed"] + (split == "train"), batch_size=cfg["batch_size"])
            for split in ("train", "val")
        }  # fmt: skip

        world.log("train: settings\n" + "\n".join(f"  {k}: {v}" for k, v in {
            "model": model_cfg, "train": cfg, "params": f"{self.num_params:,}", "device": device,
            "dtype": str(self.dtype).removeprefix("torch."), "world_size": world.size,
            "threads_per_rank": torch.get_num_threads(), "tokens_per_iter": self.tokens_per_iter,
            "val_tokens_per_byte": f"{self.tokens_per_byte:.4f}",
            "peak_flops": f"{self.peak:.3g} ({peak_source})",
            "shards": f"{len(self.shards['val'])} val, {len(self.shards['train'])} train in "
                      f"{self.shards['val'][0].parent}",
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "torch": torch.__version__,
        }.items()))  # fmt: skip
        if dtype_note:
            world.log(f"train: note: {dtype_note}")
        world.log(f"train: {resume_reason}")

    def restore(self) -> Progress:
        """The progress to start from: the saved state's (weights, optimizer, RNGs too) or a fresh one."""
        state = self.state
        if state is None:
            return Progress()
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.world.rank])
        return Progress(state["iter_num"], state["best_val_loss"], state["val_loss"], state["elapsed_s"],
                        state["metrics"])  # fmt: skip

    def evaluate(self, progress: Progress) -> dict[str, float]:
        """Estimate both splits' losses, log them and append the eval row; returns {split: loss}."""
        eval_iters = self.cfg["eval_iters"]
        losses = estimate_losses(self.raw_model, self.eval_sets, eval_iters, self.autocast, self.world)
        bpb = {split: loss / math.log(2) * self.tokens_per_byte for split, loss in losses.items()}
        it = progress.iter_num
        progress.rows.append({
            "event": "eval", "iter": it, "tokens": it * self.tokens_per_iter,
            "train_loss": losses["train"], "val_loss": losses["val"], "train_bpb": bpb["train"],
            "val_bpb": bpb["val"], "lr": get_lr(max(it - 1, 0), self.cfg), "elapsed_s": progress.elapsed_s,
        })  # fmt: skip
        self.world.log(f"eval at iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                       f"({bpb['val']:.4f} bits/byte)")  # fmt: skip
        return losses

    def save_state(self, progress: Progress, improved: bool) -> None:
        """The training state (and best.pt when the val loss improved), written atomically by rank 0."""
        rngs = [rng_state()]
        if self.world.distributed:
            rngs = [None] * self.world.size
            torch.distributed.all_gather_object(rngs, rng_state())
        if not self.world.master:
            return
        weights = weights_checkpoint(self.raw_model, self.config, progress.iter_num, progress.val_loss)
        if improved:
            save_checkpoint(weights, self.state_dir / STATE_BEST_FILE)
        save_checkpoint({
            **weights, "format": STATE_FORMAT, **self.identity, "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rngs, "best_val_loss": progress.best_val_loss,
            "elapsed_s": progress.elapsed_s, "metrics": progress.rows,
        }, self.state_dir / STATE_FILE)  # fmt: skip

    def read_losses(self, pending: list[tuple[int, torch.Tensor]]) -> list[float]:
        """Read (and clear) the losses of the steps since the last read, in one host sync; stop on a NaN."""
        if not pending:
            return []
        losses = torch.stack([loss for _, loss in pending])
        if self.world.distributed:
            torch.distributed.all_reduce(losses)
            losses /= self.world.size
        values = losses.tolist()
        for (it, _), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                state = self.state_dir / STATE_FILE
                kept = (f"the state checkpoint of iteration {self.saved_iter} ({state}) is kept"
                        if self.saved_iter else "no state checkpoint was written yet")  # fmt: skip
                raise TrainingDiverged(
                    f"training diverged: loss is {value} at iteration {it}; {kept}. "
                    "Lower train.learning_rate or raise train.warmup_iters."
                )
        pending.clear()
        return values

    def log_step(self, progress: Progress, losses: list[float], lr: float, clock, bar) -> None:
        """A metrics row and the progress bar's figures for the step just taken."""
        tokens_per_s = clock.tokens_per_s(progress.iter_num)
        mfu = self.token_flops * tokens_per_s / (self.peak * self.world.size)
        progress.rows.append({
            "event": "train", "iter": progress.iter_num, "tokens": progress.iter_num * self.tokens_per_iter,
            "train_loss": losses[-1], "lr": lr, "tokens_per_s": tokens_per_s, "mfu": mfu,
            "elapsed_s": clock.elapsed(),
        })  # fmt: skip
        bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{mfu:.1%}",
                        refresh=False)  # fmt: skip

    def checkpoint(self, progress: Progress, evaluate: bool, elapsed_s: float) -> None:
        """Evaluate (at eval steps) and save the training state; best.pt too when the val loss improved."""
        progress.elapsed_s = elapsed_s
        improved = False
        if evaluate:
            progress.val_loss = self.evaluate(progress)["val"]
            improved = progress.val_loss < progress.best_val_loss
            progress.best_val_loss = min(progress.best_val_loss, progress.val_loss)
        self.save_state(progress, improved)
        self.saved_iter = progress.iter_num

    def write_outputs(self, progress: Progress, ckpt_path, best_path, metrics_path, plot_path) -> None:
        """The final weights, the best-val weights (kept in the state folder while training, since Snakemake
        deletes a failed job's declared outputs), the metrics and the loss curve."""
        if not self.world.master:
            return
        save_checkpoint(
            weights_checkpoint(self.raw_model, self.config, progress.iter_num, progress.val_loss), ckpt_path
        )
        best = read_checkpoint(self.state_dir / STATE_BEST_FILE)
        save_checkpoint(best, best_path)
        write_metrics_csv(progress.rows, metrics_path)
        plot_losses(progress.rows, plot_path, self.tokens_per_iter)
        self.world.log(
            f"train: done at iteration {progress.iter_num}: val loss {progress.val_loss:.4f}, best "
            f"{progress.best_val_loss:.4f} (iteration {best['iter_num']}); wrote {ckpt_path}, {best_path}, "
            f"{metrics_path}, {plot_path}"
        )

    def project(self, progress: Progress, seconds_per_step: float, eval_seconds: float) -> None:
        """Log how long the whole run will take, and point a long CPU run at the CPU preset."""
        cfg = self.cfg
        steps_left = cfg["max_iters"] - progress.iter_num
        evals_left = steps_left // cfg["eval_interval"] + 1
        total = progress.elapsed_s + steps_left * seconds_per_step + evals_left * eval_seconds
        self.world.log(
            f"train: projected wall time {format_duration(total)} for {cfg['max_iters']:,} iterations "
            f"({self.tokens_per_iter / seconds_per_step:,.0f} tokens/s)"
        )
        if self.world.device.type == "cpu" and total > CPU_WARNING_SECONDS:
            self.world.log(
                f"train: warning: this recipe runs about {format_duration(total)} on the CPU; for a model in "
                "about 10 minutes use configs/cpu.yaml (snakemake --configfile configs/cpu.yaml)"
            )


class Clock:
    """The loop's wall-clock bookkeeping: elapsed time over resumes, tokens/s between log steps (evaluations
    left out), and one projection of the whole run's length from the steps after the first (which compiles).
    """

    def __init__(self, run: Run, progress: Progress, eval_seconds: float):
        self.run, self.eval_seconds = run, eval_seconds
        self.start, self.elapsed_before = time.perf_counter(), progress.elapsed_s
        self.interval_start, self.interval_iter = self.start, progress.iter_num
        self.first_iter, self.projection_start = progress.iter_num, None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def tokens_per_s(self, it: int) -> float:
        """Throughput since the last call (call it where the host has just waited for the device)."""
        now = time.perf_counter()
        speed = (it - self.interval_iter) * self.run.tokens_per_iter / max(now - self.interval_start, 1e-9)
        self.interval_start, self.interval_iter = now, it
        return speed

    def paused(self, seconds: float) -> None:
        """Time spent outside training steps (an evaluation): not throughput."""
        self.interval_start += seconds
        if self.projection_start is not None:
            self.projection_start += seconds

    def after_step(self, progress: Progress) -> None:
        it = progress.iter_num
        if it == self.first_iter + 1:
            synchronize(self.run.world.device)
            self.projection_start = time.perf_counter()
        elif self.projection_start is not None and it == self.first_iter + 1 + PROJECTION_STEPS:
            synchronize(self.run.world.device)
            seconds_per_step = (time.perf_counter() - self.projection_start) / PROJECTION_STEPS
            self.run.project(progress, seconds_per_step, self.eval_seconds)
            self.projection_start = None


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

    world = join_world(config["train"]["device"])
    bar = None
    try:
        run = Run(config, bin_dir, tokenizer_model, state_dir, world, threads)
        cfg, optimizer, scaler = run.cfg, run.optimizer, run.scaler
        progress = run.restore()
        model = torch.compile(run.raw_model) if cfg["compile"] else run.raw_model
        if world.distributed:
            device_ids = [world.local_rank] if world.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        # This rank's batches from the one after the last consumed: a resumed run sees the same stream.
        batches = iter_batches(
            run.shards["train"], "train", cfg["batch_size"], config["model"]["max_seq_len"], world.device,
            seed=cfg["seed"], rank=world.rank, world_size=world.size,
            start_batch=progress.iter_num * run.accumulation,
        )  # fmt: skip
        eval_start = time.perf_counter()
        if progress.iter_num == 0:
            run.evaluate(progress)  # the initial weights: a baseline, not worth saving
        clock = Clock(run, progress, eval_seconds=time.perf_counter() - eval_start)
        bar = tqdm(total=cfg["max_iters"], initial=progress.iter_num, unit="it", disable=not world.master,
                   file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        pending = []  # (iteration, loss on the device) not yet read by the host
        x, y = next(batches)
        model.train()
        with StopSignals() as signals:
            while progress.iter_num < cfg["max_iters"]:
                lr = get_lr(progress.iter_num, cfg)
                set_lr(optimizer, lr)
                loss = torch.zeros((), device=world.device)
                for micro_step in range(run.accumulation):
                    # DDP averages gradients on the last micro-step only; no_sync skips it on the others.
                    last = micro_step == run.accumulation - 1
                    with contextlib.nullcontext() if last or not world.distributed else model.no_sync():
                        with run.autocast:
                            _, micro_loss = model(x, y)
                        x, y = next(batches)  # the host prepares the next batch while the device computes
                        micro_loss = micro_loss / run.accumulation
                        scaler.scale(micro_loss).backward()
                    loss += micro_loss.detach()
                if cfg["grad_clip"] > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                progress.iter_num += 1
                it = progress.iter_num
                pending.append((it, loss))
                bar.update(1)

                eval_step = it % cfg["eval_interval"] == 0 or it == cfg["max_iters"]
                log_step = it % cfg["log_interval"] == 0 or eval_step
                if log_step:
                    run.log_step(progress, run.read_losses(pending), lr, clock, bar)
                clock.after_step(progress)
                stop = signals.requested(world, log_step)
                if eval_step or stop:
                    run.read_losses(pending)  # nothing non-finite gets saved
                    started = time.perf_counter()
                    run.checkpoint(progress, evaluate=eval_step, elapsed_s=clock.elapsed())
                    clock.paused(time.perf_counter() - started)
                if stop:
                    world.log(f"train: stopped by {stop} at iteration {it}; rerun to resume")
                    raise TrainingStopped(f"training stopped by {stop} at iteration {it}; rerun to resume")
        bar.close()
        run.write_outputs(progress, ckpt_path, best_path, metrics_path, plot_path)
        return {"iter_num": progress.iter_num, "val_loss": progress.val_loss,
                "best_val_loss": progress.best_val_loss, "tokens_per_byte": run.tokens_per_byte}  # fmt: skip
    finally:
        if bar is not None:  # on an exception too; an unclosed bar is printed again at exit
            bar.close()
        if world.distributed:
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
        raise TinyllmError(f"data-parallel training failed (torchrun exit status {result.returncode}); "
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
