# Trained model -> llama2.c run.c weights (read with the tokenizer's tok{V}.bin) and a Hugging Face folder.


rule export_runc:
    input:
        ckpt=CKPT,
    output:
        EXPORT_RUNC,
    params:
        code=library_hash("model.py", "export.py"),
    log:
        "logs/export/runc.log",
    benchmark:
        "benchmarks/export/runc.tsv"
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/export_runc.py"


rule export_hf:
    input:
        ckpt=CKPT,
        tokenizer=TOK_MODEL,
    output:
        EXPORT_HF,
    params:
        code=library_hash("model.py", "export.py"),
    log:
        "logs/export/hf.log",
    benchmark:
        "benchmarks/export/hf.tsv"
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/export_hf.py"
