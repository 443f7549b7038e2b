"""Logging for rule scripts: a job's stderr goes to the rule's log, its failure in one line to the console."""

from __future__ import annotations

import os
import sys
import traceback

from tinyllm.errors import TinyllmError, one_line


def log_stderr_to(log_path: str | os.PathLike) -> None:
    """Route this process's stderr, Python's and native libraries' (SentencePiece), into log_path.

    An expected failure (a TinyllmError) is its one-line message, in the log and on the original stderr,
    with no traceback: the line says what to do; the log also keeps the error it was raised from. So is an
    interrupt (SIGINT: Ctrl-C, or passed on to every running job by the Snakefile's onstart). Any other
    exception is a bug: its traceback goes to the log and a one-line summary to the console, so that
    Snakemake's console names it rather than only pointing at the log.
    """
    console = os.fdopen(os.dup(2), "w", buffering=1)
    log = open(log_path, "w", buffering=1)  # stays open for the life of the process
    os.dup2(log.fileno(), 2)
    sys.stderr = log

    def report(exc_type, exc, tb):
        if issubclass(exc_type, TinyllmError):
            line = f"error: {exc}"
            if exc.__cause__ is not None:  # a library's own words (SentencePiece's, say) stay in the log
                print(f"caused by {type(exc.__cause__).__name__}: {exc.__cause__}", file=log)
            print(line, file=log)
        elif issubclass(exc_type, KeyboardInterrupt):  # SIGINT: Ctrl-C, or passed on by Snakemake's onstart
            line = "error: interrupted by SIGINT; rerun to redo this job"
            print(line, file=log)
        else:
            traceback.print_exception(exc_type, exc, tb, file=log)
            line = one_line(f"{exc_type.__name__}: {exc}") + f" (traceback in {log_path})"
        console.write(line + "\n")

    sys.excepthook = report
