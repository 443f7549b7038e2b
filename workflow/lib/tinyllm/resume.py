"""Resumable training: which saved state a run may resume, the RNGs it restores, and stopping on a signal.

The state checkpoint (results/train/state/state.pt; layout in tinyllm.checkpoint) is taken right after an
optimizer step, where the model, the optimizer, every RNG and the data position (batches are a pure function
of seed, rank and batch index) are all the rest of the run depends on. A run resumes it only when it was
written with the same model and train settings, world size and inputs (the content of every shard, the
tokenizer and train.init_from's weights); otherwise the old state is set aside in state/stale/ and the run
starts fresh, saying what changed.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tinyllm.checkpoint import STATE_FORMAT, read_checkpoint, save_checkpoint, weights_checkpoint
from tinyllm.errors import CheckpointError
from tinyllm.files import remove_stale_temporaries

if TYPE_CHECKING:
    from tinyllm.train import Setup

STATE_FILE = "state.pt"
STATE_BEST_FILE = "best.pt"
STALE_DIR = "stale"  # the last state set aside by a run with other settings or data; one only


@dataclass
class Progress:
    """What the loop has done so far: with the model, optimizer and RNGs, all a resumed run needs."""

    iter_num: int = 0
    best_val_loss: float = math.inf
    val_loss: float | None = None
    elapsed_s: float = 0.0  # training time (tinyllm.train's docstring), summed over resumes
    rows: list[dict] = field(default_factory=list)  # metrics.csv so far
    saved_iter: int = 0  # the iteration of the last state checkpoint (0: none yet)


def save_state(run: Setup, progress: Progress, improved: bool) -> None:
    """The training state (and best.pt when the val loss improved), written atomically by rank 0."""
    rngs = [rng_state()]
    if run.world.distributed:
        rngs = [None] * run.world.size
        torch.distributed.all_gather_object(rngs, rng_state())
    if not run.world.master:
        return
    weights = weights_checkpoint(run.model, run.config, progress.iter_num, progress.val_loss)
    if improved:
        save_checkpoint(weights, run.state_dir / STATE_BEST_FILE)
    save_checkpoint({
        **weights, "format": STATE_FORMAT, "world_size": run.world.size, "inputs": run.inputs,
        "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(), "rng": rngs,
        "best_val_loss": progress.best_val_loss, "elapsed_s": progress.elapsed_s, "metrics": progress.rows,
    }, run.state_dir / STATE_FILE)  # fmt: skip


def restore_state(run: Setup) -> Progress:
    """The progress to start from: run.state's (weights, optimizer, RNGs too), or a fresh one."""
    state = run.state
    if state is None:
        return Progress()
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][run.world.rank])
    return Progress(state["iter_num"], state["best_val_loss"], state["val_loss"], state["elapsed_s"],
                    state["metrics"], saved_iter=state["iter_num"])  # fmt: skip


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
    state_dir: str | os.PathLike, config: dict, world_size: int, inputs: dict
) -> tuple[dict | None, str]:
    """The state checkpoint to resume from (or None) and why, in a line for the log."""
    path = Path(state_dir) / STATE_FILE
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


def find_state(state_dir: str | os.PathLike, config: dict, world, inputs: dict) -> dict | None:
    """The saved state this run resumes, or None, and why in the log (rank 0's).

    inputs is the content of what the run trains on, by file name (tinyllm.files.file_digest). Rank 0 first
    deletes the temporaries a killed save left, and afterwards sets aside a state that belongs to another run.
    """
    if world.master and (removed := remove_stale_temporaries(state_dir)):
        size = sum(size for _, size in removed)
        world.log(f"train: removed {len(removed)} temporary file(s) of {size:,} bytes that a killed run left "
                  f"in {state_dir}")  # fmt: skip
    state, why = load_resumable_state(state_dir, config, world.size, inputs)
    if world.distributed:
        torch.distributed.barrier()  # every rank has read the state before rank 0 may move it
    if state is None and world.master and (moved := set_aside_stale_state(state_dir)):
        why += f"; the old state is kept in {moved}"
    world.log(f"train: {why}")
    return state


def set_aside_stale_state(state_dir: Path) -> Path | None:
    """Move an old run's state files into state_dir/stale/, replacing the one set aside before."""
    state_dir = Path(state_dir)
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


class StopSignals:
    """Catches SIGTERM and SIGINT (SLURM's warning before a kill, Ctrl-C) so the loop can save and stop.

    The loop asks `requested()` after each optimizer step. Data-parallel ranks agree on it at log steps only,
    where they synchronise anyway, so a signal takes effect within train.log_interval steps there.
    """

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}

    def __init__(self):
        self.received: int = 0
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

    def requested(self, world, at_log_step: bool) -> str | None:
        """The name of the signal that asks to stop now (on any rank), or None."""
        if world.distributed and not at_log_step:
            return None
        return self.NAMES.get(int(world.max_over_ranks(self.received)))
