"""Rule extract: copy one shard's JSON out of the archive (safely, atomically)."""

import sys

from tinyllm.data import extract_shard, log_stderr_to, shard_file_name

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
log_stderr_to(smk.log[0])
member = shard_file_name(smk.wildcards.shard)
extract_shard(smk.input[0], member, smk.output[0])
print(f"extract: {member} from {smk.input[0]} -> {smk.output[0]}", file=sys.stderr)
