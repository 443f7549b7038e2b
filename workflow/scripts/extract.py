"""Rule extract: copy one shard's JSON out of the archive (safely, atomically)."""

import sys

from _rule import smk
from tinyllm.shards import extract_shard, shard_file_name

member = shard_file_name(smk.wildcards.shard)
extract_shard(smk.input[0], member, smk.output[0])
print(f"extract: {member} from {smk.input[0]} -> {smk.output[0]}", file=sys.stderr)
