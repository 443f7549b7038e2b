# TinyStories archive -> one JSON file per shard -> tiny.txt (the tokenizer's training text).


rule download:
    output:
        ARCHIVE,
    log:
        "logs/download/download.log",
    benchmark:
        "benchmarks/download/download.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        url=config["data"]["url"],
        sha256=config["data"]["sha256"],
    script:
        "../scripts/download.py"


rule extract:
    input:
        ARCHIVE,
    output:
        SHARD_JSON,
    log:
        "logs/extract/data{shard}.log",
    benchmark:
        "benchmarks/extract/data{shard}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=library_hash("extract.py"),
    script:
        "../scripts/extract.py"


rule tiny_txt:
    input:
        expand(SHARD_JSON, shard=SHARDS[: config["tokenizer"]["num_shards"]]),
    output:
        TINY_TXT,
    log:
        "logs/tiny_txt/tiny_txt.log",
    benchmark:
        "benchmarks/tiny_txt/tiny_txt.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=library_hash("tiny_txt.py"),
    script:
        "../scripts/tiny_txt.py"
