"""Rule export_runc: the trained model in llama2.c run.c's legacy weight format."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import log_stderr_to  # noqa: E402
from tinyllm.export import export_runc  # noqa: E402

log_stderr_to(smk.log[0])
export_runc(smk.input.ckpt, smk.output[0])
print(f"export_runc: {smk.input.ckpt} -> {smk.output[0]}", file=sys.stderr)
