# Trained model -> samples.txt: num_samples continuations of each prompt.


rule sample:
    input:
        ckpt=CKPT,
        tokenizer=TOK_MODEL,
    output:
        report(SAMPLES, caption="../report/samples.rst", category="Samples"),
    log:
        "logs/sample/sample.log",
    benchmark:
        "benchmarks/sample/sample.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    params:
        sample=config["sample"],
        code=library_hash("sample.py"),
    script:
        "../scripts/sample.py"
