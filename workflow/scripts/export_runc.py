"""Rule export_runc: the trained model in llama2.c run.c's legacy weight format."""

import sys

from tinyllm.data import log_stderr_to
from tinyllm.export import export_runc

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
log_stderr_to(smk.log[0])
export_runc(smk.input.ckpt, smk.output[0])
print(f"export_runc: {smk.input.ckpt} -> {smk.output[0]}", file=sys.stderr)
