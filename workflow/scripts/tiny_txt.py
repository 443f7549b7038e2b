"""Rule tiny_txt: the tokenizer's training text, one stripped story per line."""

import sys

from _rule import smk
from tinyllm.shards import write_tiny_txt

count = write_tiny_txt(list(smk.input), smk.output[0])
print(f"tiny_txt: {count} stories from {len(smk.input)} shards -> {smk.output[0]}", file=sys.stderr)
