# The corpus: remote sources downloaded, then prepare (a checkpoint: the number of shards is known only once it
# has run) streams every source once into results/corpus/{val,train}_NNNN.jsonl; tiny.txt, the tokenizer's
# training text, is its first tokenizer.num_shards shards. TinyStories (data.sources empty) is one such corpus.


wildcard_constraints:
    download="|".join(re.escape(name) for name in CORPUS.downloads) or "^$",


rule download:
    output:
        f"{paths.DATA_DIR}/{{download}}",
    log:
        "logs/download/{download}.log",
    benchmark:
        "benchmarks/download/{download}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        url=lambda w: CORPUS.downloads[w.download]["url"],
        sha256=lambda w: CORPUS.downloads[w.download]["sha256"],
    script:
        "../scripts/download.py"


checkpoint prepare:
    input:
        CORPUS.inputs,
    output:
        directory(CORPUS_DIR),
    log:
        "logs/prepare/prepare.log",
    benchmark:
        "benchmarks/prepare/prepare.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        # Sources (with the files a folder or glob matched), split, dedup, shard size: any change reruns it.
        corpus=CORPUS.settings,
        code=library_hash("prepare.py"),
    script:
        "../scripts/prepare.py"


rule tiny_txt:
    input:
        CORPUS_DIR,
    output:
        TINY_TXT,
    log:
        "logs/tiny_txt/tiny_txt.log",
    benchmark:
        "benchmarks/tiny_txt/tiny_txt.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        num_shards=config["tokenizer"]["num_shards"],
        code=library_hash("tiny_txt.py"),
    script:
        "../scripts/tiny_txt.py"


# Per split: sources, documents, bytes, tokens, duplicates and empty documents dropped, lengths in tokens.
rule report_corpus:
    input:
        corpus=CORPUS_DIR,
        tokenizer=TOK_MODEL,
        shards=shard_bins,
    output:
        markdown=CORPUS_REPORT,
        html=report(
            CORPUS_REPORT_HTML, caption="../report/corpus.rst", category="Corpus"
        ),
    log:
        "logs/report/corpus.log",
    benchmark:
        "benchmarks/report/corpus.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=library_hash("report_corpus.py"),
    script:
        "../scripts/report_corpus.py"
