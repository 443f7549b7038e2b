"""Rule train: pretokenized shards + tokenizer -> ckpt.pt, best.pt, metrics.csv, loss.png (resumable)."""

import sys
from pathlib import Path

from _rule import smk
from tinyllm.train import launch_distributed, train

settings = {
    "config": {"model": dict(smk.params.model), "train": dict(smk.params.train)},
    # The rule's shards exactly: the folder may hold more from a run with a larger data.shards.
    "bin_dir": list(smk.input.shards),
    "tokenizer_model": smk.input.tokenizer,
    "state_dir": smk.params.state_dir,
    "ckpt_path": smk.output.ckpt,
    "best_path": smk.output.best,
    "metrics_path": smk.output.metrics,
    "plot_path": smk.output.plot,
    "threads": smk.threads,
}
gpus = settings["config"]["train"]["gpus"]
if gpus > 1:
    launch_distributed(settings, gpus, Path(smk.params.state_dir) / "launch.json", stdout=sys.stderr)
else:
    train(**settings)
