"""Rule report_config: the validated config (every default filled in) as YAML for the report."""

from _rule import smk
from tinyllm.report import write_config

write_config(smk.params.config, smk.output[0])
