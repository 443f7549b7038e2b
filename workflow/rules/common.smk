# Paths and helpers shared by the stages. Every path comes from tinyllm.paths, which the CLI reads too.

from tinyllm import paths
from tinyllm.codehash import code_hash

SHARDS = [f"{i:02d}" for i in range(config["data"]["shards"])]
VOCAB = config["tokenizer"]["vocab_size"]

ARCHIVE = paths.ARCHIVE
SHARD_JSON = paths.SHARD_JSON
TINY_TXT = paths.TINY_TXT
TOK_DIR = paths.tokenizer_dir(VOCAB)
TOK_MODEL = paths.tokenizer_model(VOCAB)
TOK_VOCAB = TOK_MODEL.removesuffix(".model") + ".vocab"
TOK_BIN = TOK_MODEL.removesuffix(".model") + ".bin"
SHARD_BIN = paths.shard_bin(VOCAB)
TRAIN_DIR = paths.TRAIN_DIR
CKPT = paths.CKPT
SAMPLES = paths.SAMPLES
EXPORT_RUNC = paths.EXPORT_RUNC
EXPORT_HF = [f"{paths.EXPORT_HF}/{name}" for name in paths.HF_EXPORT_FILES]
EXPORT_GGUF = paths.EXPORT_GGUF


wildcard_constraints:
    shard=r"\d{2}",


def library_hash(script):
    """The code a rule runs (its script and every tinyllm module that imports, transitively), as a hash.

    In a rule's params, editing any of that code reruns the rule; Snakemake's own code trigger sees only
    the script. `script` is the file name under workflow/scripts.
    """
    return code_hash(Path(workflow.basedir) / "workflow" / "scripts" / script)
