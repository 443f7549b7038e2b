"""Rule export_hf: the trained model as a Hugging Face Llama folder (weights, config, fast tokenizer)."""

import sys
from pathlib import Path

from _rule import smk
from tinyllm.export_hf import export_hf

folder = Path(smk.output[0]).parent  # every output lies in the one folder
export_hf(smk.input.ckpt, smk.input.tokenizer, folder)
print(f"export_hf: {smk.input.ckpt} -> {folder}/", file=sys.stderr)
