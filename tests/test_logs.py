"""tinyllm.logs: a rule script's stderr goes to its log, its failure in one line to the console."""

from __future__ import annotations

import subprocess
import sys


def test_log_stderr_to_sends_traceback_to_log_and_one_line_to_console(tmp_path):
    log = tmp_path / "job.log"
    script = (
        "import os, sys\n"
        "from tinyllm.logs import log_stderr_to\n"
        f"log_stderr_to({str(log)!r})\n"
        "print('python stderr line', file=sys.stderr)\n"
        "os.write(2, b'native stderr line\\n')\n"
        "raise ValueError('data01.json: entry 3 has no story,\\n  as the tokenizer needs')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr == "ValueError: data01.json: entry 3 has no story, as the tokenizer needs\n"
    logged = log.read_text()
    assert "python stderr line" in logged and "native stderr line" in logged and "Traceback" in logged
