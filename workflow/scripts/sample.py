"""Rule sample: num_samples continuations of each configured prompt from the trained model."""

import sys

import torch
from _rule import smk
from tinyllm.devices import resolve_device
from tinyllm.sample import write_samples

torch.set_num_threads(smk.threads)
device = resolve_device("auto")
settings = dict(smk.params.sample)
print(f"sample: {smk.input.ckpt} on {device}, {smk.threads} thread(s), {settings}", file=sys.stderr)
write_samples(smk.input.ckpt, smk.input.tokenizer, smk.output[0], settings, device=device)
print(f"sample: wrote {smk.output[0]}", file=sys.stderr)
