"""Rule export_hf: the trained model as a Hugging Face Llama folder (config, safetensors, tokenizer)."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import log_stderr_to  # noqa: E402
from tinyllm.export import export_hf  # noqa: E402

log_stderr_to(smk.log[0])
folder = Path(smk.output[0]).parent
if {Path(p).parent for p in smk.output} != {folder}:
    raise ValueError(f"rule export_hf: outputs must share one folder, got {list(smk.output)}")
export_hf(smk.input.ckpt, smk.input.tokenizer, folder)
print(f"export_hf: {smk.input.ckpt} -> {folder}/", file=sys.stderr)
