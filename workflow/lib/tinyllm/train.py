"""Training: pretokenized shards -> a trained Transformer, resumable after a crash, a kill or a signal.

`train` reads top to bottom, as llama2.c's train.py does: setup (check the inputs, build the model and the
optimizer, resume if a matching state exists), then the loop (learning rate, micro-steps, clip, step, log,
evaluate and save), then the outputs (ckpt.pt, best.pt, metrics.csv, loss.png). Under torchrun
(tinyllm.ddp.launch_distributed) it is one data-parallel rank.

The loop never waits for the device between log points: losses stay on the device and are read (and checked
for NaN) every train.log_interval steps and before every save, so a GPU runs ahead of the host.

Training time (metrics.csv's elapsed_s, the time budget, tokens/s) counts the optimizer steps only: not
evaluations, saves, start-up or each process's first step (which compiles and warms up), and it adds up
over resumes. With train.max_minutes the run ends when that time reaches the budget (or at max_iters, if
that comes first) and the learning-rate schedule follows whichever of the two is further along; where such
a run stops depends on the machine's speed, so it is not bitwise reproducible, unlike an iteration-based run.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyllm.batches import (
    PretokDataset,
    check_pretokenized_shard,
    iter_batches,
    split_shards,
    tokens_per_byte,
)
from tinyllm.checkpoint import read_checkpoint, save_checkpoint, weights_checkpoint
from tinyllm.ddp import World, join_world, leave_world, wrap_model
from tinyllm.devices import peak_flops, resolve_dtype
from tinyllm.errors import TrainingDiverged, TrainingStopped
from tinyllm.files import file_digest
from tinyllm.model import ModelArgs, Transformer
from tinyllm.optim import configure_optimizer, get_lr, set_lr
from tinyllm.report import format_duration, plot_losses, write_metrics
from tinyllm.resume import (
    STATE_BEST_FILE,
    STATE_FILE,
    Progress,
    StopSignals,
    find_state,
    restore_state,
    save_state,
)

PROJECTION_STEPS = 20  # timed steps after which the log projects the whole run's length
CPU_WARNING_SECONDS = 3 * 3600  # a CPU run projected past this gets a pointer to configs/cpu.yaml
now = time.perf_counter  # the loop's clock (a test replaces it with a fake one)


@dataclass
class Setup:
    """What the loop works with, built once by `setup`."""

    config: dict
    world: World
    model: Transformer  # the model itself: its weights are what we save
    train_model: torch.nn.Module  # what the loop drives: the model compiled and/or wrapped for DDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: torch.autocast
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]  # this rank's training batches, from the next one
    eval_sets: dict[str, PretokDataset]
    tokens_per_iter: int
    tokens_per_byte: float
    flops_per_token: float
    peak_flops: float
    state_dir: Path
    inputs: dict[str, str]  # the fingerprint of what this run trains on (tinyllm.resume)
    state: dict | None  # the saved state to resume from
    eval_seconds: float = 0.0  # what an evaluation costs (measured on the initial one), for the projection


def setup(config: dict, shards, tokenizer_model, state_dir, world: World, threads) -> tuple[Setup, Progress]:
    """Check the inputs, build the model and optimizer, resume the matching state; log the settings."""
    from tinyllm.tokenizer import Tokenizer

    model_cfg, cfg, device = config["model"], config["train"], world.device
    if threads is not None:
        torch.set_num_threads(max(1, threads // world.size) if device.type == "cpu" else threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype, dtype_note = resolve_dtype(cfg["dtype"], device)

    # Inputs first: a bad shard or init_from fails here, before any state is read or moved.
    tokenizer = Tokenizer(tokenizer_model)
    splits = {split: split_shards(shards, split) for split in ("val", "train")}
    for path in (*splits["val"], *splits["train"]):
        check_pretokenized_shard(path, tokenizer.n_words)
    # What the run trains on, by content: a state saved from other data must not be resumed.
    inputs = {p.name: file_digest(p) for p in (*splits["val"], *splits["train"], Path(tokenizer_model))}
    args = ModelArgs(**model_cfg, vocab_size=tokenizer.n_words)
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    model = Transformer(args).to(device)
    if cfg["init_from"]:
        from tinyllm.foreign import check_matches, load_foreign_checkpoint

        source = load_foreign_checkpoint(cfg["init_from"])
        check_matches(source.model_args, model_cfg, tokenizer.n_words, f"train.init_from {cfg['init_from']}")
        model.load_state_dict(source.state_dict)
        inputs["init_from"] = file_digest(cfg["init_from"])
        world.log(f"train: starting from the weights of {cfg['init_from']} ({source.format})")

    state = find_state(state_dir, config, world, inputs)
    torch.manual_seed(cfg["seed"] + world.rank)  # per-rank dropout streams
    train_model = wrap_model(model, world)
    run = Setup(
        config=config, world=world, model=model, optimizer=configure_optimizer(model, cfg, device),
        train_model=torch.compile(train_model) if cfg["compile"] else train_model,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        autocast=torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
        batches=iter([]),  # once the progress is known, below
        # The train-split estimate draws with another seed, so it is not the first training batches.
        eval_sets={split: PretokDataset(splits[split], split, model_cfg["max_seq_len"],
                                        seed=cfg["seed"] + (split == "train"), batch_size=cfg["batch_size"])
                   for split in ("train", "val")},
        tokens_per_iter=cfg["batch_size"] * model_cfg["max_seq_len"] * cfg["gradient_accumulation_steps"]
        * world.size,
        tokens_per_byte=tokens_per_byte(splits["val"][0], tokenizer), flops_per_token=model.flops_per_token(),
        peak_flops=peak_flops(dtype, device)[0], state_dir=Path(state_dir), inputs=inputs, state=state,
    )  # fmt: skip
    world.log("train: settings\n" + "\n".join(f"  {k}: {v}" for k, v in {
        "model": model_cfg, "train": cfg, "params": f"{model.num_params():,}", "device": device,
        "dtype": str(dtype).removeprefix("torch."), "world_size": world.size,
        "threads_per_rank": torch.get_num_threads(), "tokens_per_iter": run.tokens_per_iter,
        "val_tokens_per_byte": f"{run.tokens_per_byte:.4f}", "peak_flops": f"{run.peak_flops:.3g}",
        "shards": f"{len(splits['val'])} val, {len(splits['train'])} train in {splits['val'][0].parent}",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "torch": torch.__version__,
    }.items()))  # fmt: skip
    if dtype_note:
        world.log(f"train: note: {dtype_note}")
    progress = restore_state(run)
    # This rank's batches from the one after the last consumed: a resumed run sees the same stream.
    run.batches = iter_batches(
        splits["train"], "train", cfg["batch_size"], model_cfg["max_seq_len"], device, seed=cfg["seed"],
        rank=world.rank, world_size=world.size,
        start_batch=progress.iter_num * cfg["gradient_accumulation_steps"],
    )  # fmt: skip
    if progress.iter_num == 0:
        started = now()
        evaluate(run, progress)  # the initial weights: a baseline, not worth saving
        run.eval_seconds = now() - started
    run.train_model.train()
    return run, progress


@torch.no_grad()
def evaluate(run: Setup, progress: Progress) -> bool:
    """Both splits' mean loss over their fixed batches 0..eval_iters-1, shared out across ranks; log them and
    add the eval row. True when the val loss is a new best.

    The batches are the same at every evaluation and for any world size, so evaluations compare like with
    like and a data-parallel run reports what a single process would.
    """
    cfg, world, model = run.config["train"], run.world, run.model
    model.eval()
    totals = torch.zeros(2, 2, dtype=torch.float64, device=world.device)  # per split: loss sum, batches
    for i, dataset in enumerate(run.eval_sets.values()):
        for batch in range(world.rank, cfg["eval_iters"], world.size):
            x, y = (torch.from_numpy(a).to(world.device) for a in dataset.batch_arrays(batch))
            with run.autocast:
                _, loss = model(x, y)
            totals[i, 0] += loss.double()
            totals[i, 1] += 1
    if world.distributed:
        torch.distributed.all_reduce(totals)
    model.train()
    losses = dict(zip(run.eval_sets, (totals[:, 0] / totals[:, 1]).tolist(), strict=True))  # one host sync
    bpb = {split: loss / math.log(2) * run.tokens_per_byte for split, loss in losses.items()}
    it = progress.iter_num
    progress.rows.append({
        "event": "eval", "iter": it, "tokens": it * run.tokens_per_iter, "train_loss": losses["train"],
        "val_loss": losses["val"], "train_bpb": bpb["train"], "val_bpb": bpb["val"],
        "lr": get_lr(max(it - 1, 0), cfg, progress.elapsed_s), "elapsed_s": progress.elapsed_s,
    })  # fmt: skip
    world.log(f"eval at iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
              f"({bpb['val']:.4f} bits/byte)")  # fmt: skip
    progress.val_loss = losses["val"]
    improved = progress.val_loss < progress.best_val_loss
    progress.best_val_loss = min(progress.best_val_loss, progress.val_loss)
    return improved


def log_metrics(run: Setup, progress: Progress, pending: list, lr: float, since: tuple, bar) -> None:
    """Read the losses of the steps since the last log (one host sync; stop on a NaN), add the metrics row.

    since is (iteration, training time) where the throughput window began.
    """
    losses = torch.stack([loss for _, loss in pending])
    if run.world.distributed:
        torch.distributed.all_reduce(losses)
        losses /= run.world.size
    values = losses.tolist()
    for (it, _), value in zip(pending, values, strict=True):
        if not math.isfinite(value):
            state = run.state_dir / STATE_FILE
            kept = (f"the state checkpoint of iteration {progress.saved_iter} ({state}) is kept"
                    if progress.saved_iter else "no state checkpoint was written yet")  # fmt: skip
            raise TrainingDiverged(f"training diverged: loss is {value} at iteration {it}; {kept}. Lower "
                                   "train.learning_rate or raise train.warmup_iters.")  # fmt: skip
    pending.clear()
    it, seconds = progress.iter_num, progress.elapsed_s - since[1]
    tokens_per_s = (it - since[0]) * run.tokens_per_iter / seconds if seconds > 0 else None
    mfu = tokens_per_s and run.flops_per_token * tokens_per_s / (run.peak_flops * run.world.size)
    progress.rows.append({
        "event": "train", "iter": it, "tokens": it * run.tokens_per_iter, "train_loss": values[-1], "lr": lr,
        "tokens_per_s": tokens_per_s, "mfu": mfu, "elapsed_s": progress.elapsed_s,
    })  # fmt: skip
    bar.set_postfix(it=it, loss=f"{values[-1]:.4f}", tok_s=f"{tokens_per_s or 0:,.0f}", mfu=f"{mfu or 0:.1%}",
                    refresh=False)  # fmt: skip


def log_projection(run: Setup, progress: Progress, seconds_per_step: float) -> None:
    """How long the whole run will take (or how far a time budget gets); a long CPU run gets a pointer."""
    cfg, log = run.config["train"], run.world.log
    speed = f"{run.tokens_per_iter / seconds_per_step:,.0f} tokens/s"
    if cfg["max_minutes"]:
        steps = min(cfg["max_iters"], progress.iter_num + (cfg["max_minutes"] * 60 - progress.elapsed_s)
                    / seconds_per_step)  # fmt: skip
        log(f"train: the {cfg['max_minutes']:g}-minute budget reaches about iteration {steps:,.0f} ({speed})")
        return
    steps_left = cfg["max_iters"] - progress.iter_num
    evals_left = steps_left // cfg["eval_interval"] + 1
    total = progress.elapsed_s + steps_left * seconds_per_step + evals_left * run.eval_seconds
    log(f"train: projected wall time {format_duration(total)} for {cfg['max_iters']:,} iterations ({speed})")
    if run.world.device.type == "cpu" and total > CPU_WARNING_SECONDS:
        log(f"train: warning: this recipe runs about {format_duration(total)} on the CPU; for a model in "
            "about 10 minutes use configs/cpu.yaml (snakemake --configfile configs/cpu.yaml)")  # fmt: skip


def write_outputs(run: Setup, progress: Progress, ckpt_path, best_path, metrics_path, plot_path) -> None:
    """The final weights, the best-val weights (kept in the state folder while training, since Snakemake
    deletes a failed job's declared outputs), the metrics and the loss curve."""
    if not run.world.master:
        return
    final = weights_checkpoint(run.model, run.config, progress.iter_num, progress.val_loss)
    save_checkpoint(final, ckpt_path)
    best = read_checkpoint(run.state_dir / STATE_BEST_FILE)
    save_checkpoint(best, best_path)
    write_metrics(progress.rows, metrics_path)
    plot_losses(progress.rows, plot_path, run.tokens_per_iter)
    budget = run.config["train"]["max_minutes"]
    ended_by = f" (the {budget:g}-minute budget)" if budget and progress.elapsed_s >= 60 * budget else ""
    run.world.log(
        f"train: done at iteration {progress.iter_num} after {format_duration(progress.elapsed_s)} of "
        f"training{ended_by}: val loss {progress.val_loss:.4f}, best {progress.best_val_loss:.4f} (iteration "
        f"{best['iter_num']}); wrote {ckpt_path}, {best_path}, {metrics_path}, {plot_path}"
    )


def progress_bar(cfg: dict, progress: Progress, world: World):
    """Rank 0's progress bar, over the optimizer steps or, for a time budget, over its seconds; refreshed
    every 30 s where stderr is a log file."""
    from tqdm import tqdm

    refresh_s = 1 if sys.stderr.isatty() else 30
    total, done, layout = cfg["max_iters"], progress.iter_num, None
    if cfg["max_minutes"]:  # whole seconds of training, which the wall clock overtakes at evaluations
        total = round(60 * cfg["max_minutes"])
        done = min(int(progress.elapsed_s), total)
        layout = "{l_bar}{bar}| {n_fmt}/{total_fmt} s of training [{elapsed}{postfix}]"
    return tqdm(total=total, initial=done, unit="it", disable=not world.master, file=sys.stderr,
                dynamic_ncols=True, mininterval=refresh_s, bar_format=layout)  # fmt: skip


def train(
    config: dict,
    shards: str | os.PathLike | list,  # the pretokenized shards, or a folder of them
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
    cfg = config["train"]
    world = join_world(cfg["device"])
    try:
        run, progress = setup(config, shards, tokenizer_model, state_dir, world, threads)
        model, optimizer, scaler = run.train_model, run.optimizer, run.scaler
        accumulation, budget_s = cfg["gradient_accumulation_steps"], 60 * (cfg["max_minutes"] or math.inf)
        spent_s = progress.elapsed_s  # training time all ranks agree on: the schedule and the budget read it
        pending = []  # (iteration, loss on the device) not yet read by the host
        mark = start = since = None  # step timing (module docstring): last step's end, first timed, window
        x, y = next(run.batches)
        with StopSignals() as signals, progress_bar(cfg, progress, world) as bar:
            while progress.iter_num < cfg["max_iters"] and spent_s < budget_s:
                lr = get_lr(progress.iter_num, cfg, spent_s)
                set_lr(optimizer, lr)
                loss = torch.zeros((), device=world.device)
                for micro_step in range(accumulation):
                    # DDP averages gradients on the last micro-step only; no_sync skips it on the others.
                    last = micro_step == accumulation - 1
                    with contextlib.nullcontext() if last or not world.distributed else model.no_sync():
                        with run.autocast:
                            _, micro_loss = model(x, y)
                        x, y = next(run.batches)  # the host reads the next batch while the device computes
                        scaler.scale(micro_loss / accumulation).backward()
                    loss += micro_loss.detach() / accumulation
                if cfg["grad_clip"] > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                progress.iter_num += 1
                it = progress.iter_num
                pending.append((it, loss))

                # Training time: this step's wall time, unless it was the process's first (compile, warm-up).
                t = now()
                step_s = t - mark if mark is not None else 0.0
                progress.elapsed_s += step_s
                mark, start, since = t, start or (it, progress.elapsed_s), since or (it, progress.elapsed_s)
                bar.update(min(int(progress.elapsed_s), bar.total) - bar.n if cfg["max_minutes"] else 1)
                log_step = it % cfg["log_interval"] == 0
                eval_step = it % cfg["eval_interval"] == 0 or it == cfg["max_iters"]
                if budget_s < math.inf and (log_step or not world.distributed):
                    spent_s = world.max_over_ranks(progress.elapsed_s)  # ranks agree where they sync anyway
                    eval_step |= spent_s >= budget_s  # the budget's last step is evaluated and saved too
                if log_step or eval_step:  # the host waits for the device here, and only here
                    log_metrics(run, progress, pending, lr, since, bar)
                    if start and it - start[0] >= PROJECTION_STEPS:  # once: start is cleared
                        step_s = (progress.elapsed_s - start[1]) / (it - start[0])
                        log_projection(run, progress, step_s)
                        start = False
                    since = (it, progress.elapsed_s)
                stop = signals.requested(world, log_step or eval_step)
                if eval_step or stop:
                    improved = evaluate(run, progress) if eval_step else False
                    save_state(run, progress, improved)
                    progress.saved_iter, mark = it, now()  # evaluating and saving are not training time
                if stop:  # the rule's log and console get this line once (tinyllm.logs)
                    raise TrainingStopped(f"training stopped by {stop} at iteration {it}; rerun to resume")
        write_outputs(run, progress, ckpt_path, best_path, metrics_path, plot_path)
        return {"iter_num": progress.iter_num, "val_loss": progress.val_loss, "elapsed_s": progress.elapsed_s,
                "best_val_loss": progress.best_val_loss, "tokens_per_byte": run.tokens_per_byte}  # fmt: skip
    finally:
        leave_world(world)
