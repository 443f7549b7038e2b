"""Rule tiny_txt: the tokenizer's training text, one stripped story per line."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import log_stderr_to, write_tiny_txt  # noqa: E402

log_stderr_to(smk.log[0])
count = write_tiny_txt(list(smk.input), smk.output[0])
print(f"tiny_txt: {count} stories from {len(smk.input)} shards -> {smk.output[0]}", file=sys.stderr)
