"""Rule tokenizer: train the SentencePiece BPE model on tiny.txt and export it for llama2.c's run.c."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import log_stderr_to  # noqa: E402
from tinyllm.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

log_stderr_to(smk.log[0])  # also catches SentencePiece's own (native) log lines
prefix = smk.output.model.removesuffix(".model")
if smk.output.vocab != f"{prefix}.vocab":
    raise ValueError(f"rule tokenizer: vocab output {smk.output.vocab} must be {prefix}.vocab")
train_tokenizer(
    smk.input[0],
    prefix,
    vocab_size=smk.params.vocab_size,
    input_sentence_size=smk.params.input_sentence_size,
    shuffle_input_sentence=smk.params.shuffle_input_sentence,
    num_threads=smk.threads,
)
Tokenizer(smk.output.model).export_runc(smk.output.runc)
print(f"tokenizer: {prefix}.model/.vocab and {smk.output.runc}", file=sys.stderr)
