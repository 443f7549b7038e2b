# Paths and helpers shared by the stages. Paths derive from the validated config only.

import hashlib

LIB_DIR = Path(workflow.basedir) / "workflow" / "lib"

SHARDS = [f"{i:02d}" for i in range(config["data"]["shards"])]
VOCAB = config["tokenizer"]["vocab_size"]

ARCHIVE = "results/data/TinyStories_all_data.tar.gz"
SHARD_JSON = "results/data/TinyStories_all_data/data{shard}.json"
TINY_TXT = "results/data/tiny.txt"
TOK_DIR = f"results/tok{VOCAB}"
TOK_MODEL = f"{TOK_DIR}/tok{VOCAB}.model"
TOK_VOCAB = f"{TOK_DIR}/tok{VOCAB}.vocab"
TOK_BIN = f"{TOK_DIR}/tok{VOCAB}.bin"
SHARD_BIN = f"{TOK_DIR}/data{{shard}}.bin"
TRAIN_DIR = "results/train"
CKPT = f"{TRAIN_DIR}/ckpt.pt"
SAMPLES = "results/samples.txt"
EXPORT_RUNC = "results/export/model.bin"
EXPORT_HF = expand(
    "results/export/hf/{name}",
    name=["config.json", "model.safetensors", "tokenizer.model"],
)


wildcard_constraints:
    shard=r"\d{2}",


def library_hash(*modules):
    """sha256 over the tinyllm modules that a rule imports; in its params, editing them reruns it.

    Snakemake's code trigger sees only the rule's own script, not the library it imports.
    """
    digest = hashlib.sha256()
    for name in modules:
        digest.update((LIB_DIR / "tinyllm" / name).read_bytes())
    return digest.hexdigest()[:16]
