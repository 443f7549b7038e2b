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
DEFAULT_BENCH_DATA = Path(os.environ.get("TINYLLM_TEST_DATA", REPO.parent / "shared" / "data" / "tinystories"))

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


# --- pretokenize -------------------------------------------------------------------------------------------


# --- train ---------------------------------------------------------------------------------------------------


# --- sample --------------------------------------------------------------------------------------------------


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
