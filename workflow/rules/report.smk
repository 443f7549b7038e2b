# Report pieces that are not outputs of another stage: the final losses and the config a run used.
# `snakemake --report report.html` gathers them with loss.png, samples.txt and the rule graph.

REPORT_SUMMARY = paths.REPORT_SUMMARY
REPORT_CONFIG = paths.REPORT_CONFIG


# Both read a few kB and write less: not worth a cluster job.
localrules:
    report_summary,
    report_config,


rule report_summary:
    input:
        metrics=paths.run_file("metrics"),
    output:
        report(REPORT_SUMMARY, caption="../report/summary.rst", category="Training"),
    log:
        "logs/report/summary.log",
    benchmark:
        "benchmarks/report/summary.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=library_hash("report_summary.py"),
    script:
        "../scripts/report_summary.py"


rule report_config:
    output:
        report(REPORT_CONFIG, caption="../report/config.rst", category="Configuration"),
    log:
        "logs/report/config.log",
    benchmark:
        "benchmarks/report/config.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        # The whole validated config: any edit rewrites this file.
        config=config,
        code=library_hash("report_config.py"),
    script:
        "../scripts/report_config.py"
