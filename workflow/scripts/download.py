"""Rule download: fetch a remote corpus source, the TinyStories archive by default (resumable, retried,
checked)."""

import sys

from _rule import smk
from tinyllm.download import download_archive

print(f"download: {smk.params.url} -> {smk.output[0]}", file=sys.stderr)
download_archive(smk.params.url, smk.output[0], sha256=smk.params.sha256)
