#!/usr/bin/env bash
# Builds .maxtext-venv: MaxText 0.2.5 from PyPI with its own jax/libtpu, for benchmarks/vs_maxtext.py only (not part
# of setup.sh or CI; ~8 min, ~3 GB). MaxText needs Python 3.12: set PYTHON312 to a 3.12 interpreter if `python3.12`
# is not on PATH (use the versioned binary: a pyenv shim named python3.12 may start another version).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=""
for candidate in ${PYTHON312:-} $(command -v python3.12) $(ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null); do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY=$candidate; break; fi
done
if [ -z "$PY" ]; then
  echo "setup_maxtext: no Python 3.12 found; set PYTHON312=/path/to/python3.12" >&2
  exit 2
fi
[ -x .maxtext-venv/bin/python ] || "$PY" -m venv .maxtext-venv
.maxtext-venv/bin/python -m pip install --quiet --upgrade pip
.maxtext-venv/bin/python -m pip install --quiet 'maxtext[tpu]==0.2.5'
echo "MaxText installed in .maxtext-venv ($(.maxtext-venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
