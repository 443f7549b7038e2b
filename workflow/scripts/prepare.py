"""Rule prepare: one pass over the corpus sources into validation and training shards (a checkpoint)."""

import sys

from _rule import smk
from tinyllm.corpus import peak_memory_mb, prepare_corpus

manifest = prepare_corpus(smk.params.corpus, smk.output[0])
for split, figures in manifest["splits"].items():
    print(f"prepare: {split}: {figures['documents']:,} documents, {figures['bytes']:,} bytes; dropped "
          f"{figures['duplicates']:,} duplicates and {figures['empty']:,} empty",
          file=sys.stderr)  # fmt: skip
print(f"prepare: {len(manifest['shards'])} shards -> {smk.output[0]}", file=sys.stderr)
print(f"prepare: peak memory {peak_memory_mb():.0f} MB", file=sys.stderr)
