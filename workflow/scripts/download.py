"""Rule download: fetch the TinyStories archive (resumable, retried, checked)."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import download_archive, log_stderr_to  # noqa: E402

log_stderr_to(smk.log[0])
print(f"download: {smk.params.url} -> {smk.output[0]}", file=sys.stderr)
download_archive(smk.params.url, smk.output[0], sha256=smk.params.sha256)
