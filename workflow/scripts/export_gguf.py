"""Rule export_gguf: the trained model and its tokenizer as one GGUF file for llama.cpp and ollama."""

import sys

from _rule import smk
from tinyllm.export_gguf import export_gguf

export_gguf(smk.input.ckpt, smk.input.tokenizer, smk.output[0])
print(f"export_gguf: {smk.input.ckpt} + {smk.input.tokenizer} -> {smk.output[0]}", file=sys.stderr)
