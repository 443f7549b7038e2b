"""Rule export_runc: the trained model in llama2.c run.c's legacy weight format."""

import sys

from _rule import smk
from tinyllm.export_runc import export_runc

export_runc(smk.input.ckpt, smk.output[0])
print(f"export_runc: {smk.input.ckpt} -> {smk.output[0]}", file=sys.stderr)
