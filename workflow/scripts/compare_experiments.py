"""Rule compare_experiments: every run's metrics.csv and ckpt.pt -> compare.png and compare.md."""

import sys

from _rule import smk
from tinyllm.compare import MAIN_RUN, write_comparison

names = [MAIN_RUN, *smk.params.experiments]
overrides = [{}, *smk.params.experiments.values()]
runs = [
    {"name": name, "overrides": changed, "metrics": metrics, "checkpoint": ckpt}
    for name, changed, metrics, ckpt in zip(names, overrides, smk.input.metrics, smk.input.ckpts, strict=True)
]
results = write_comparison(runs, smk.output.plot, smk.output.table)
for result in results:
    print(f"compare: {result.name}: final val {result.final_val_bpb} bits/byte", file=sys.stderr)
