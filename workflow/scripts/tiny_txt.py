"""Rule tiny_txt: the tokenizer's training text, one document per line, from the first prepared shards."""

import sys
from pathlib import Path

from _rule import smk
from tinyllm.corpus import SHARD_SUFFIX, peak_memory_mb, shard_names
from tinyllm.shards import write_tiny_txt

names = shard_names(smk.input[0])[: smk.params.num_shards]
count = write_tiny_txt([Path(smk.input[0]) / f"{name}{SHARD_SUFFIX}" for name in names], smk.output[0])
print(f"tiny_txt: {count} documents from {len(names)} shards -> {smk.output[0]}", file=sys.stderr)
print(f"tiny_txt: peak memory {peak_memory_mb():.0f} MB", file=sys.stderr)
