#!/usr/bin/env bash
# Redraw docs/rulegraph.svg, the rule graph of the default config.yaml (tests/test_lint.py checks it is current).
# Run from anywhere with the project's venv active (or SNAKEMAKE=/path/to/snakemake); needs graphviz's dot.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# An empty working directory: the picture does not depend on what results/ holds here.
"${SNAKEMAKE:-snakemake}" --rulegraph --configfile config.yaml --directory "$tmp" > "$tmp/rulegraph.dot"
dot -Tsvg "$tmp/rulegraph.dot" > "$tmp/rulegraph.svg"
mv "$tmp/rulegraph.svg" docs/rulegraph.svg
