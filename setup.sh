#!/usr/bin/env bash
# Creates .venv and installs allam-jax with its pinned dependencies (CPU), the test extra and the hf extra
# (CPU PyTorch + transformers, for the Hugging Face parity tests).
# Usage: bash setup.sh            (re-running is cheap: pip skips what is installed)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,hf]'
echo "allam-jax installed in .venv ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
