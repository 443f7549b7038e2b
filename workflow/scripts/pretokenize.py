"""Rule pretokenize: one shard's stories -> uint16 token ids (BOS before each story)."""

import sys

from tinyllm.data import log_stderr_to, pretokenize_shard

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
log_stderr_to(smk.log[0])
tokens = pretokenize_shard(smk.input.shard, smk.input.tokenizer, smk.output[0], num_threads=smk.threads)
print(f"pretokenize: {smk.input.shard} -> {smk.output[0]}: {tokens} tokens", file=sys.stderr)
