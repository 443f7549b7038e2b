# Trained model -> samples.txt: num_samples continuations of each prompt.


rule sample:
    input:
        ckpt=CKPT,
        tokenizer=TOK_MODEL,
    output:
        report(SAMPLES, caption="../report/samples.rst", category="Samples"),
    params:
        sample=config["sample"],
        code=library_hash("model.py", "generate.py", "tokenizer.py"),
    threads: 2
    log:
        "logs/sample/sample.log",
    benchmark:
        "benchmarks/sample/sample.tsv"
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/sample.py"
