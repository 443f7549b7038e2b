"""Rule tokenizer: train the SentencePiece BPE model on tiny.txt and export it for llama2.c's run.c."""

import sys

from _rule import smk
from tinyllm.corpus import peak_memory_mb
from tinyllm.tokenizer import Tokenizer, export_runc_tokenizer, train_tokenizer

prefix = smk.output.model.removesuffix(".model")
if smk.output.vocab != f"{prefix}.vocab":
    raise ValueError(f"rule tokenizer: vocab output {smk.output.vocab} must be {prefix}.vocab")
train_tokenizer(
    smk.input[0],
    prefix,
    vocab_size=smk.params.vocab_size,
    input_sentence_size=smk.params.input_sentence_size,
    shuffle_input_sentence=smk.params.shuffle_input_sentence,
    character_coverage=smk.params.character_coverage,
    num_threads=smk.threads,
)
export_runc_tokenizer(Tokenizer(smk.output.model), smk.output.runc)
print(f"tokenizer: {prefix}.model/.vocab and {smk.output.runc}", file=sys.stderr)
print(f"tokenizer: peak memory {peak_memory_mb():.0f} MB", file=sys.stderr)
