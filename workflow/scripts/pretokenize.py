"""Rule pretokenize: one shard's stories -> uint16 token ids (BOS before each story)."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import log_stderr_to, pretokenize_shard  # noqa: E402

log_stderr_to(smk.log[0])
tokens = pretokenize_shard(smk.input.shard, smk.input.tokenizer, smk.output[0], num_threads=smk.threads)
print(f"pretokenize: {smk.input.shard} -> {smk.output[0]}: {tokens} tokens", file=sys.stderr)
