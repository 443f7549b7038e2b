"""tinyllm.logs: a rule script's stderr goes to its log, its failure in one line to the console."""

from __future__ import annotations

import signal
import subprocess
import sys


def run_script(log, failure: str) -> subprocess.CompletedProcess:
    script = (
        "import os, sys\n"
        "from tinyllm.errors import DataError\n"
        "from tinyllm.logs import log_stderr_to\n"
        f"log_stderr_to({str(log)!r})\n"
        "print('python stderr line', file=sys.stderr)\n"
        "os.write(2, b'native stderr line\\n')\n"
        f"{failure}\n"
    )
    # SIGINT as a job gets it from a shell or Snakemake: the default, even where this test process was
    # started with SIGINT ignored (a background job of a non-interactive shell), which its children inherit.
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=restore_sigint
    )


def test_an_expected_error_is_one_line_in_the_log_and_on_the_console_without_a_traceback(tmp_path):
    log = tmp_path / "job.log"
    run = run_script(log, "raise DataError('data01.json: entry 3 has no story,\\n  as the tokenizer needs')")
    assert run.returncode == 1
    line = "error: data01.json: entry 3 has no story, as the tokenizer needs"
    assert run.stderr == line + "\n"
    logged = log.read_text()
    assert "python stderr line" in logged and "native stderr line" in logged
    assert logged.endswith(line + "\n") and "Traceback" not in logged


def test_a_bug_keeps_its_traceback_in_the_log_and_is_one_line_on_the_console(tmp_path):
    log = tmp_path / "job.log"
    run = run_script(log, "raise KeyError('story')")
    assert run.returncode == 1
    assert run.stderr == f"KeyError: 'story' (traceback in {log})\n"
    assert "Traceback" in log.read_text()


def test_an_interrupt_is_one_line_without_a_traceback(tmp_path):
    """SIGINT (Ctrl-C, or passed on by Snakemake to every running job) is no bug: one line, exit non-zero."""
    log = tmp_path / "job.log"
    run = run_script(log, "import signal; os.kill(os.getpid(), signal.SIGINT); import time; time.sleep(5)")
    assert run.returncode != 0
    line = "error: interrupted by SIGINT; rerun to redo this job"
    assert run.stderr == line + "\n"
    assert log.read_text().endswith(line + "\n") and "Traceback" not in log.read_text()
