"""Data-parallel training: this process's place among the ranks, and launching the ranks with torchrun.

Each rank reads its own data stream and averages gradients on the last micro-step only; rank 0 alone logs
and writes. One process without torchrun is a world of size 1, and nothing here costs it anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyllm.devices import resolve_device
from tinyllm.errors import TinyllmError, TrainingStopped


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
        """A line in the log, from rank 0 only (above the progress bar, which it does not break)."""
        if self.master:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def max_over_ranks(self, value: float) -> float:
        """The largest of every rank's value (a collective: every rank must call it at the same step)."""
        if not self.distributed:
            return value
        flag = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag.item()


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


def leave_world(world: World) -> None:
    if world.distributed:
        torch.distributed.destroy_process_group()


def wrap_model(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The model as the loop drives it: DistributedDataParallel across ranks, the model itself alone."""
    if not world.distributed:
        return model
    device_ids = [world.local_rank] if world.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def launch_distributed(train_kwargs: dict, nproc: int, kwargs_path: str | os.PathLike, stdout=None) -> None:
    """Run tinyllm.train.train(**train_kwargs) on nproc data-parallel ranks with torchrun; raise if one fails.

    The keyword arguments travel as JSON in kwargs_path (in the state folder). torchrun is invoked as
    `python -m torch.distributed.run` of this interpreter, so it is the torch this process imports. A SIGTERM
    or SIGINT sent to this process goes on to torchrun, which passes it to every rank: they save the state
    and stop at the next log step, as one process does.
    """
    kwargs_path = Path(kwargs_path)
    kwargs_path.parent.mkdir(parents=True, exist_ok=True)
    kwargs_path.write_text(json.dumps(train_kwargs, indent=1, default=str))
    library = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (library, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=python_path)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (train_kwargs.get("threads") or 1) // nproc)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "tinyllm.ddp", str(kwargs_path),
    ]  # fmt: skip
    torchrun = subprocess.Popen(command, env=env, stdout=stdout)
    received = []

    def forward(signum, frame):
        received.append(signal.Signals(signum).name)
        torchrun.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = torchrun.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status and received:
        raise TrainingStopped(f"data-parallel training stopped by {received[0]}; rerun to resume")
    if status:
        raise TinyllmError(f"data-parallel training failed (torchrun exit status {status}); "
                           "the ranks' errors are in the log above")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`python -m tinyllm.ddp KWARGS.json`: one rank of tinyllm.train.train (torchrun starts it).

    An expected failure is one line from rank 0 (tinyllm.logs' format) and exit status 1, not a traceback
    from every rank.
    """
    from tinyllm.train import train

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tinyllm.ddp KWARGS.json  (started by torchrun)", file=sys.stderr)
        return 2
    try:
        train(**json.loads(Path(argv[0]).read_text()))
    except TinyllmError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
