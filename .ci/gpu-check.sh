#!/usr/bin/env bash
# The GPU check: the CUDA test suite (`pytest -m gpu`, tests/gpu) and the CUDA training bench
# (`tinyllm bench train --json`), in about 8 minutes on one GPU. Everything goes to $OUT: gpu-check.log (all
# output), gpu-tests.xml (JUnit), bench-train.json (the figures). Exits non-zero when either part fails.
#
# The GPU machine needs Python with torch (CUDA), numpy, sentencepiece, tqdm, matplotlib and pytest, and no
# internet. Two things travel with the checkout, both ignored by git; prepare them where pip works:
#   /work/shared/gpu/snakemake-wheels.sh   # snakemake 9.27.1 + jsonschema in .whl/ (tinyllm.config, the DAG)
#   python3 -m pip download -q --no-deps --only-binary=:all: -d .whl gguf==0.19.0   # the DAG's GGUF export
#   mkdir -p .gpu-data && cp ../shared/data/tinystories/data0[01].json .gpu-data/
# Then, through this workplace's device tool (a working tree of at most 64 MiB, $OUT set by the tool):
#   run(command="bash .ci/gpu-check.sh", carry=[".whl", ".gpu-data"], timeout_s=540)
# On any other GPU machine: `bash .ci/gpu-check.sh` (outputs in a new /tmp/gpu-check.* unless OUT is set).
# Without .whl the DAG test is skipped where snakemake is not installed; without .gpu-data the tests look
# for the sample at $TINYLLM_TEST_DATA (default ../shared/data/tinystories).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
PYTHON=${PYTHON:-python3}
TEST_SECONDS=${GPU_CHECK_TEST_SECONDS:-270} # the suite: ~1 min of compiling, 4 short trainings, the tiny DAG
BENCH_SECONDS=${GPU_CHECK_BENCH_SECONDS:-210} # the bench: 9 training paths (6 compiled) and attention kernels
mkdir -p "$OUT"

check() {
  echo "== gpu-check: $(date -u +%FT%TZ) on $(hostname), outputs in $OUT"
  if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
  fi
  export PYTHONPATH=$PWD/workflow/lib${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  [ -d .gpu-data ] && export TINYLLM_TEST_DATA=$PWD/.gpu-data
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "devices:",
    [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
  "$PYTHON" -c 'import snakemake; print("snakemake", snakemake.__version__)' 2>/dev/null ||
    echo "snakemake: not importable (no .whl): the DAG test will skip"

  local tests=0 bench=0
  echo "== pytest -m gpu (at most ${TEST_SECONDS} s)"
  timeout -s INT -k 15 "$TEST_SECONDS" "$PYTHON" -m pytest -m gpu -v -p no:cacheprovider tests/gpu \
    --junitxml="$OUT/gpu-tests.xml" || tests=$?
  echo "== tinyllm bench train --json (at most ${BENCH_SECONDS} s)"
  # Through the module, not the console script: the checkout is not pip-installed there.
  timeout -k 15 "$BENCH_SECONDS" "$PYTHON" -c \
    'import sys; from tinyllm.cli import main; sys.exit(main(["bench", "train", "--json"]))' \
    >"$OUT/bench-train.json" || bench=$?
  cat "$OUT/bench-train.json"
  echo
  echo "== gpu-check: tests exit ${tests}, bench exit ${bench} (124 = stopped at its time limit)"
  [ "$tests" = 0 ] && [ "$bench" = 0 ]
}

check 2>&1 | tee "$OUT/gpu-check.log"
