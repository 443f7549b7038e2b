"""Rule report_summary: metrics.csv -> the final train/val loss as a small HTML page for the report."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import log_stderr_to  # noqa: E402
from tinyllm.report import write_summary  # noqa: E402

log_stderr_to(smk.log[0])
summary = write_summary(smk.input.metrics, smk.output[0])
print(f"final losses: {summary}", file=sys.stderr)
