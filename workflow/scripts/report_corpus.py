"""Rule report_corpus: per split, sources, documents, bytes, tokens, drops and lengths -> corpus.md, .html."""

import sys

from _rule import smk
from tinyllm.corpus_report import write_corpus_report

figures = write_corpus_report(
    smk.input.corpus, list(smk.input.shards), smk.input.tokenizer, smk.output.markdown, smk.output.html
)
for split, f in figures["splits"].items():
    print(f"corpus: {split}: {f['documents']:,} documents, {f['bytes']:,} bytes, {f['tokens']:,} tokens",
          file=sys.stderr)  # fmt: skip
