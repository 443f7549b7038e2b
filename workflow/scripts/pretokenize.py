"""Rule pretokenize: one prepared shard's documents -> uint16 token ids (BOS before each document)."""

import sys
from pathlib import Path

from _rule import smk
from tinyllm.corpus import SHARD_SUFFIX, peak_memory_mb
from tinyllm.shards import pretokenize_shard

shard = Path(smk.input.corpus) / f"{smk.wildcards.shard}{SHARD_SUFFIX}"
tokens = pretokenize_shard(shard, smk.input.tokenizer, smk.output[0], num_threads=smk.threads)
print(f"pretokenize: {shard} -> {smk.output[0]}: {tokens} tokens", file=sys.stderr)
print(f"pretokenize: peak memory {peak_memory_mb():.0f} MB", file=sys.stderr)
