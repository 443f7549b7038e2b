"""What every rule script does first: `from _rule import smk`.

Snakemake runs a rule's script as __main__ with the `snakemake` object injected, and puts this folder on
sys.path. Importing this module exposes that object as `smk`, puts workflow/lib on sys.path (conda envs run
without PYTHONPATH) and routes the job's stderr, native libraries' included, into the rule's log.
"""

import sys
from pathlib import Path

import __main__

smk = __main__.snakemake
sys.path.insert(0, str(Path(smk.scriptdir).parent / "lib"))

from tinyllm.logs import log_stderr_to  # noqa: E402

log_stderr_to(smk.log[0])
