"""Rule sample: num_samples continuations of each configured prompt from the trained model."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

import torch  # noqa: E402
from tinyllm.data import log_stderr_to  # noqa: E402
from tinyllm.generate import resolve_device, write_samples  # noqa: E402

log_stderr_to(smk.log[0])
torch.set_num_threads(smk.threads)
device = resolve_device("auto")
settings = dict(smk.params.sample)
print(f"sample: {smk.input.ckpt} on {device}, {smk.threads} thread(s), {settings}", file=sys.stderr)
write_samples(smk.input.ckpt, smk.input.tokenizer, smk.output[0], settings, device=device)
print(f"sample: wrote {smk.output[0]}", file=sys.stderr)
