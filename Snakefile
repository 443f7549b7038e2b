# Tiny-LLM: TinyStories archive -> shards -> tokenizer -> pretokenized shards -> model -> samples, exports.
# This file only reads and checks the config, includes the stages, and names the final targets.

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "lib"))
from tinyllm.config import check_config_files, validate_config
from tinyllm.errors import ConfigError, TinyllmError
from tinyllm.onstart import on_start

# The repository's config.yaml is the base wherever Snakemake runs (--directory too); --configfile and
# --config go on top. Each file is read strictly first: a tab, a syntax error or a key given twice is one line.
CONFIG_YAML = str(Path(workflow.basedir) / "config.yaml")
try:
    check_config_files([CONFIG_YAML, *workflow.overwrite_configfiles])
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None


configfile: CONFIG_YAML


report: "workflow/report/workflow.rst"


try:
    validate_config(config)  # fills defaults from workflow/schemas/config.schema.yaml
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/experiments.smk"


# Before the first job: every output writable (one line naming the path in the way), a killed writer's
# temporaries gone, and SIGTERM/SIGINT sent to Snakemake alone passed on to the running jobs.
onstart:
    try:
        on_start(workflow)
    except TinyllmError as err:
        raise WorkflowError(str(err)) from None


# Light rules run on the submit host under a cluster executor (profiles/slurm); download needs its internet.
localrules:
    download,
    tiny_txt,


rule all:
    default_target: True
    input:
        SAMPLES,
        EXPORT_RUNC,
        EXPORT_HF,
        EXPORT_GGUF,
        REPORT_SUMMARY,
        REPORT_CONFIG,
        CORPUS_REPORT,
        EXPERIMENT_TARGETS,
