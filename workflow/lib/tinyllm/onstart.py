"""What the Snakefile's `onstart:` runs in the Snakemake process, once the DAG is built and before any job.

- Every output, log and benchmark of the jobs about to run must be writable. Snakemake creates their
  folders and deletes their old versions itself before a job starts, and a file where a folder belongs or a
  read-only results/ ends there in a 60-line traceback; checked here first, it is one line naming the path.
- Temporaries that atomic_path left beside those outputs when a writer was killed are deleted.
- A SIGTERM or SIGINT sent to a local Snakemake alone (`kill`, a `timeout` wrapper, a container stop) is
  passed on to the running jobs' scripts. Snakemake's own handlers only stop scheduling (SIGTERM: "Will exit
  after finishing currently running jobs") or wait for the jobs to end (SIGINT), and never tell them, so a
  training ran to its end. Told, training saves its state and stops with "stopped by SIGTERM at iteration N;
  rerun to resume", as under SLURM, and Snakemake then exits.

It reads the workflow through `workflow.dag.needrun_jobs()` and `workflow.local_exec` (Snakemake 9).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tinyllm.files import check_writable, remove_stale_temporaries

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHELLS = {"sh", "bash", "dash", "zsh", "ksh"}  # a job's shell wrapper; its children run the job


def on_start(workflow) -> None:
    """Check and tidy the outputs of the jobs about to run; pass stop signals on to local jobs."""
    outputs = [
        Path(str(path))
        for job in workflow.dag.needrun_jobs()
        for path in (*job.output, *job.log, *([job.benchmark] if job.benchmark else []))
    ]
    for path in outputs:
        check_writable(path)
    by_folder = {}
    for path in outputs:
        by_folder.setdefault(path.parent, set()).add(path.name)
    for folder, names in by_folder.items():
        remove_stale_temporaries(folder, names)
    if workflow.local_exec:
        forward_stop_signals()


def forward_stop_signals() -> None:
    """From now on SIGTERM and SIGINT to this process reach its jobs' scripts too, then its own handlers."""
    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN or previous is None:
            continue
        signal.signal(signum, _forwarder(previous))


def _forwarder(previous):
    def forward(signum, frame):
        signal_job_scripts(signum)
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: what the signal would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return forward


def signal_job_scripts(signum: int, parent: int | None = None) -> list[int]:
    """Send signum to the processes that run parent's jobs (default: this process's): each child, or a
    shell wrapper's children in its place (the shell would die of it and leave the script running).
    Returns their pids."""
    import psutil  # a dependency of Snakemake, the only caller

    sent = []
    try:
        children = psutil.Process(parent).children()
    except psutil.Error:
        return sent
    for child in children:
        try:
            targets = child.children() if child.name() in SHELLS else [child]
        except psutil.Error:
            continue
        for target in targets:
            try:
                target.send_signal(signum)
                sent.append(target.pid)
            except psutil.Error:
                pass
    return sent
