# Trained model -> llama2.c run.c weights (read with the tokenizer's tok{V}.bin), a Hugging Face folder
# (transformers), and one GGUF file (llama.cpp, llama-cpp-python, ollama).


rule export_runc:
    input:
        ckpt=CKPT,
    output:
        EXPORT_RUNC,
    log:
        "logs/export/runc.log",
    benchmark:
        "benchmarks/export/runc.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        code=library_hash("export_runc.py"),
    script:
        "../scripts/export_runc.py"


rule export_hf:
    input:
        ckpt=CKPT,
        tokenizer=TOK_MODEL,
    output:
        EXPORT_HF,
    log:
        "logs/export/hf.log",
    benchmark:
        "benchmarks/export/hf.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        code=library_hash("export_hf.py"),
    script:
        "../scripts/export_hf.py"


rule export_gguf:
    input:
        ckpt=CKPT,
        tokenizer=TOK_MODEL,
    output:
        EXPORT_GGUF,
    log:
        "logs/export/gguf.log",
    benchmark:
        "benchmarks/export/gguf.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        code=library_hash("export_gguf.py"),
    script:
        "../scripts/export_gguf.py"
