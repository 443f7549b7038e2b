"""Rule report_summary: metrics.csv -> the final train/val loss as a small HTML page for the report."""

import sys

from _rule import smk
from tinyllm.report import write_summary

summary = write_summary(smk.input.metrics, smk.output[0])
print(f"final losses: {summary}", file=sys.stderr)
