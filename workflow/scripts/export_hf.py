"""Rule export_hf: the trained model as a Hugging Face Llama folder (config, safetensors, tokenizer)."""

import sys
from pathlib import Path

from _rule import smk
from tinyllm.export import export_hf

folder = Path(smk.output[0]).parent
if {Path(p).parent for p in smk.output} != {folder}:
    raise ValueError(f"rule export_hf: outputs must share one folder, got {list(smk.output)}")
export_hf(smk.input.ckpt, smk.input.tokenizer, folder)
print(f"export_hf: {smk.input.ckpt} -> {folder}/", file=sys.stderr)
