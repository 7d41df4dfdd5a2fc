#!/usr/bin/env bash
# Builds .maxtext-venv: MaxText 0.2.5 from PyPI with its own jax/libtpu, for benchmarks/vs_maxtext.py only (not part
# of setup.sh or CI; ~8 min, ~3 GB). Python 3.12 as setup.sh finds it, or PYTHON312.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON312:-$(bash setup.sh --find-python)}  # the interpreter setup.sh picks: MaxText needs 3.12 too
[ -x .maxtext-venv/bin/python ] || "$PY" -m venv .maxtext-venv
.maxtext-venv/bin/python -m pip install --quiet --upgrade pip
.maxtext-venv/bin/python -m pip install --quiet 'maxtext[tpu]==0.2.5'
echo "MaxText installed in .maxtext-venv ($(.maxtext-venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
