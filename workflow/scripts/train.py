"""Rule train: pretokenized shards + tokenizer -> ckpt.pt, best.pt, metrics.csv, loss.png (resumable)."""

import sys
from pathlib import Path

from _rule import smk
from tinyllm.ddp import launch_distributed
from tinyllm.train import train

kwargs = {
    "config": {"model": dict(smk.params.model), "train": dict(smk.params.train)},
    # The rule's shards exactly: the folder may hold more from a run with a larger data.shards.
    "shards": list(smk.input.shards),
    "tokenizer_model": smk.input.tokenizer,
    "state_dir": smk.params.state_dir,
    "ckpt_path": smk.output.ckpt,
    "best_path": smk.output.best,
    "metrics_path": smk.output.metrics,
    "plot_path": smk.output.plot,
    "threads": smk.threads,
}
gpus = kwargs["config"]["train"]["gpus"]
if gpus > 1:
    launch_distributed(kwargs, gpus, Path(smk.params.state_dir) / "launch.json", stdout=sys.stderr)
else:
    train(**kwargs)
