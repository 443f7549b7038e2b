# tiny.txt -> SentencePiece BPE tokenizer -> per-shard uint16 token files (val_0000.bin, train_0000.bin, ...).


rule tokenizer:
    input:
        TINY_TXT,
    output:
        model=TOK_MODEL,
        vocab=TOK_VOCAB,
        runc=TOK_BIN,
    log:
        f"logs/tokenizer/tok{VOCAB}.log",
    benchmark:
        f"benchmarks/tokenizer/tok{VOCAB}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 8
    params:
        vocab_size=VOCAB,
        input_sentence_size=config["tokenizer"]["input_sentence_size"],
        shuffle_input_sentence=config["tokenizer"]["shuffle_input_sentence"],
        character_coverage=config["tokenizer"]["character_coverage"],
        code=library_hash("tokenizer.py"),
    script:
        "../scripts/tokenizer.py"


# One job per prepared shard, fanned out once the prepare checkpoint has said how many there are.
rule pretokenize:
    input:
        corpus=CORPUS_DIR,
        tokenizer=TOK_MODEL,
    output:
        SHARD_BIN,
    log:
        f"logs/pretokenize/tok{VOCAB}/{{shard}}.log",
    benchmark:
        f"benchmarks/pretokenize/tok{VOCAB}/{{shard}}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=library_hash("pretokenize.py"),
    script:
        "../scripts/pretokenize.py"
