# Paths and helpers shared by the stages. Paths derive from the validated config only.

import hashlib
import os

LIB_DIR = Path(workflow.basedir) / "workflow" / "lib"
# Rule scripts import tinyllm from this checkout whether or not it is pip-installed (conda envs, cluster jobs).
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(LIB_DIR), os.environ.get("PYTHONPATH")) if p
)

SHARDS = [f"{i:02d}" for i in range(config["data"]["shards"])]
VOCAB = config["tokenizer"]["vocab_size"]

ARCHIVE = "results/data/TinyStories_all_data.tar.gz"
SHARD_JSON = "results/data/TinyStories_all_data/data{shard}.json"
TINY_TXT = "results/data/tiny.txt"
TOK_DIR = f"results/tok{VOCAB}"
TOK_MODEL = f"{TOK_DIR}/tok{VOCAB}.model"
TOK_VOCAB = f"{TOK_DIR}/tok{VOCAB}.vocab"
TOK_BIN = f"{TOK_DIR}/tok{VOCAB}.bin"
SHARD_BIN = TOK_DIR + "/data{shard}.bin"
TRAIN_DIR = "results/train"
CKPT = f"{TRAIN_DIR}/ckpt.pt"
SAMPLES = "results/samples.txt"
EXPORT_RUNC = "results/export/model.bin"
EXPORT_HF = expand(
    "results/export/hf/{name}", name=["config.json", "model.safetensors", "tokenizer.model"]
)


wildcard_constraints:
    shard=r"\d{2}",


def library_hash(*modules):
    """sha256 over tinyllm modules a rule runs: in params, an edit to them reruns the rule.

    Snakemake's code trigger sees only the rule's own script, not the library it imports.
    """
    digest = hashlib.sha256()
    for name in modules:
        digest.update((LIB_DIR / "tinyllm" / name).read_bytes())
    return digest.hexdigest()[:16]
