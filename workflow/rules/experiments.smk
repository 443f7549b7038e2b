# Experiments: named variants of the main run (config `experiments`), each trained by the train rule's own
# script into results/experiments/NAME/ (its resumable state in NAME/state/), sampled, and compared with the
# main run in compare.png and compare.md. They share the data, tokenizer and shards with the main run.
# Params hold each experiment's merged config, so editing one override reruns that experiment alone.
# Without experiments nothing here is wanted and the DAG is the main run's.

from tinyllm.config import experiment_config

EXPERIMENTS = {name: experiment_config(config, name) for name in config["experiments"]}
EXPERIMENT = "{experiment}"  # the wildcard, in place of a name
EXPERIMENT_TARGETS = (
    [paths.COMPARE_PLOT, paths.COMPARE_TABLE]
    + [paths.samples_file(name) for name in EXPERIMENTS]
    if EXPERIMENTS
    else []
)


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9._-]*",  # the schema's pattern for names


# Reads two small files per run and draws one plot: not worth a cluster job.
localrules:
    compare_experiments,


use rule train as train_experiment with:
    input:
        shards=shard_bins,  # every shard, once the prepare checkpoint has run
        first_shards=FIRST_SHARD_BINS,
        tokenizer=TOK_MODEL,
        init_from=lambda w: EXPERIMENTS[w.experiment]["train"]["init_from"] or [],
    output:
        ckpt=paths.run_file("ckpt", EXPERIMENT),
        best=paths.run_file("best", EXPERIMENT),
        metrics=paths.run_file("metrics", EXPERIMENT),
        plot=report(
            paths.run_file("plot", EXPERIMENT),
            caption="../report/loss.rst",
            category="Experiments",
            subcategory="{experiment}",
        ),
    log:
        "logs/experiments/{experiment}/train.log",
    benchmark:
        "benchmarks/experiments/{experiment}/train.tsv"
    resources:
        gpu=lambda w: EXPERIMENTS[w.experiment]["train"]["gpus"],
    params:
        # The experiment's merged config: only its own edits change these.
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        state_dir=paths.run_file("state", EXPERIMENT),


use rule sample as sample_experiment with:
    input:
        ckpt=paths.run_file("ckpt", EXPERIMENT),
        tokenizer=TOK_MODEL,
    output:
        report(
            paths.samples_file(EXPERIMENT),
            caption="../report/samples.rst",
            category="Experiments",
            subcategory="{experiment}",
        ),
    log:
        "logs/experiments/{experiment}/sample.log",
    benchmark:
        "benchmarks/experiments/{experiment}/sample.tsv"
    params:
        sample=lambda w: EXPERIMENTS[w.experiment]["sample"],


rule compare_experiments:
    input:
        # The main run first: the table's reference.
        metrics=[paths.run_file("metrics", name) for name in [None, *EXPERIMENTS]],
        ckpts=[paths.run_file("ckpt", name) for name in [None, *EXPERIMENTS]],
    output:
        plot=report(
            paths.COMPARE_PLOT, caption="../report/compare.rst", category="Experiments"
        ),
        table=report(
            paths.COMPARE_TABLE,
            caption="../report/compare.rst",
            category="Experiments",
        ),
    log:
        "logs/experiments/compare.log",
    benchmark:
        "benchmarks/experiments/compare.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        experiments=config["experiments"],  # name -> overrides, for the table
        code=library_hash("compare_experiments.py"),
    script:
        "../scripts/compare_experiments.py"
