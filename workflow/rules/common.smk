# Paths and helpers shared by the stages. Every path comes from tinyllm.paths, which the CLI reads too.

import re

from tinyllm import paths
from tinyllm.codehash import code_hash
from tinyllm.corpus import FIRST_SHARDS, corpus_plan, shard_names
from tinyllm.errors import TinyllmError

VOCAB = config["tokenizer"]["vocab_size"]

# Downloads, local files (what a folder or glob matches now) and prepare's settings.
try:
    CORPUS = corpus_plan(config)
except TinyllmError as err:
    raise WorkflowError(f"invalid config: {err}") from None
CORPUS_DIR = paths.CORPUS_DIR
CORPUS_REPORT = paths.CORPUS_REPORT
CORPUS_REPORT_HTML = paths.CORPUS_REPORT_HTML
TINY_TXT = paths.TINY_TXT
TOK_MODEL = paths.tokenizer_model(VOCAB)
TOK_VOCAB = TOK_MODEL.removesuffix(".model") + ".vocab"
TOK_BIN = TOK_MODEL.removesuffix(".model") + ".bin"
SHARD_BIN = paths.shard_bin(VOCAB)
CKPT = paths.CKPT
SAMPLES = paths.SAMPLES
EXPORT_RUNC = paths.EXPORT_RUNC
EXPORT_HF = [f"{paths.EXPORT_HF}/{name}" for name in paths.HF_EXPORT_FILES]
EXPORT_GGUF = paths.EXPORT_GGUF


FIRST_SHARD_BINS = expand(SHARD_BIN, shard=FIRST_SHARDS)


def shard_bins(wildcards):
    """Every pretokenized shard of the corpus: known once the prepare checkpoint has run. (FIRST_SHARD_BINS,
    which every corpus has, let the DAG show pretokenize before it has.)"""
    corpus = checkpoints.prepare.get().output[0]
    return expand(SHARD_BIN, shard=shard_names(corpus))


wildcard_constraints:
    shard=r"(val|train)_\d{4}",


def library_hash(script):
    """The code a rule runs (its script and every tinyllm module that imports, transitively), as a hash.

    In a rule's params, editing any of that code reruns the rule; Snakemake's own code trigger sees only
    the script. `script` is the file name under workflow/scripts.
    """
    return code_hash(Path(workflow.basedir) / "workflow" / "scripts" / script)
