#!/usr/bin/env bash
# Creates .venv and installs allam-jax with its pinned dependencies (CPU) and the extras the tests use:
# test (pytest, pytest-xdist), hf (CPU PyTorch + transformers: Hugging Face parity), lmeval (lm-evaluation-harness),
# notebooks (nbclient + ipykernel: the tests execute notebooks/ on a quick recipe run) and tpu (libtpu: the
# TPU compiler that `allam compile` and the TPU tests run on this CPU).
# Usage: bash setup.sh            (re-running is cheap: pip skips what is installed)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,hf,lmeval,notebooks,tpu]'
echo "allam-jax installed in .venv ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
