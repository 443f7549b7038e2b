"""Rule report_config: the validated config (every default filled in) as YAML for the report."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Conda envs run without PYTHONPATH: find the library beside this script.
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.data import log_stderr_to  # noqa: E402
from tinyllm.report import write_config  # noqa: E402

log_stderr_to(smk.log[0])
write_config(smk.params.config, smk.output[0])
