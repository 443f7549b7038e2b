"""Rule pretokenize: one shard's stories -> uint16 token ids (BOS before each story)."""

import sys

from _rule import smk
from tinyllm.shards import pretokenize_shard

tokens = pretokenize_shard(smk.input.shard, smk.input.tokenizer, smk.output[0], num_threads=smk.threads)
print(f"pretokenize: {smk.input.shard} -> {smk.output[0]}: {tokens} tokens", file=sys.stderr)
