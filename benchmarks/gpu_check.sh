#!/usr/bin/env bash
# The device check of issue 18 on a GPU machine (docs/gpu.md): installs the few missing pure-Python
# packages from wheels carried in .whl/ (hydra-core, omegaconf, antlr4), then runs gpu_check.py, its
# output also kept in $OUT/gpu_check.log. Extra arguments go to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-gpu_check_out}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi
python3 benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
