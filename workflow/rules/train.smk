# Pretokenized shards -> a trained model (final and best-val weights, metrics, loss curve).
# Resumable: the training state lives in results/train/state/, which is not a declared output, so
# Snakemake keeps it when a job fails or is killed and the next run picks it up.
# With train.gpus > 1 the script starts torchrun with that many data-parallel ranks on this node.


rule train:
    input:
        shards=shard_bins,  # every shard, once the prepare checkpoint has run
        first_shards=FIRST_SHARD_BINS,
        tokenizer=TOK_MODEL,
        init_from=config["train"]["init_from"] or [],
    output:
        ckpt=CKPT,
        best=paths.run_file("best"),
        metrics=paths.run_file("metrics"),
        plot=report(
            paths.run_file("plot"),
            caption="../report/loss.rst",
            category="Training",
        ),
    log:
        "logs/train/train.log",
    benchmark:
        "benchmarks/train/train.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 8
    resources:
        gpu=config["train"]["gpus"],
    params:
        model=config["model"],
        train=config["train"],
        state_dir=paths.run_file("state"),
        code=library_hash("train.py"),
    script:
        "../scripts/train.py"
