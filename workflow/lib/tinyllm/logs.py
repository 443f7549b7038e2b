"""Logging for rule scripts: a job's stderr goes to the rule's log, its failure in one line to the console."""

from __future__ import annotations

import os
import sys
import traceback


def log_stderr_to(log_path: str | os.PathLike) -> None:
    """Route this process's stderr, Python's and native libraries' (SentencePiece), into log_path.

    An uncaught exception's traceback goes to the log; its one-line message also goes to the original
    stderr, so Snakemake's console names the failure rather than only pointing at the log.
    """
    console = os.fdopen(os.dup(2), "w", buffering=1)
    log = open(log_path, "w", buffering=1)  # stays open for the life of the process
    os.dup2(log.fileno(), 2)
    sys.stderr = log

    def report(exc_type, exc, tb):
        traceback.print_exception(exc_type, exc, tb, file=log)
        console.write(" ".join(f"{exc_type.__name__}: {exc}".split()) + "\n")

    sys.excepthook = report
