"""Rule extract: copy one shard's JSON out of the archive (safely, atomically)."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import extract_shard, log_stderr_to, shard_file_name  # noqa: E402

log_stderr_to(smk.log[0])
member = shard_file_name(smk.wildcards.shard)
extract_shard(smk.input[0], member, smk.output[0])
print(f"extract: {member} from {smk.input[0]} -> {smk.output[0]}", file=sys.stderr)
