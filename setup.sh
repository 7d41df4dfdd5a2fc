#!/usr/bin/env bash
# Creates .venv and installs allam-jax with its pinned dependencies (CPU) and the extras the tests use:
# test (pytest, pytest-xdist), hf (PyTorch + transformers: Hugging Face parity), lmeval (lm-evaluation-harness),
# notebooks (nbclient + ipykernel: the tests execute notebooks/ on a quick recipe run), tpu (libtpu: the
# TPU compiler that `allam compile` and the TPU tests run on this CPU, and the runtime on a TPU VM) and docs
# (MkDocs: the documentation site, built with --strict by the tests).
# Needs Python 3.12 (jax 0.12): $PYTHON if set, else python3 if it is 3.12, else python3.12, pyenv's 3.12 or uv's.
# Usage: bash setup.sh                 (re-running is cheap: pip skips what is installed)
#        bash setup.sh --find-python   (print the interpreter it would use, and exit)
set -euo pipefail
cd "$(dirname "$0")"

is_312() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; }
at_least_312() { "$1" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; }

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    if at_least_312 "$PYTHON"; then echo "$PYTHON"; return; fi
    echo "setup.sh: PYTHON=$PYTHON is not Python 3.12 or later (jax 0.12 needs it)" >&2; return 1
  fi
  # a pyenv shim named python3.12 may exist without starting a 3.12: each candidate is run, not trusted by name
  local candidate
  for candidate in $(command -v python3) $(command -v python3.12) \
      $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV) \
      $(command -v uv >/dev/null && uv python find 3.12 2>/dev/null); do
    if is_312 "$candidate"; then echo "$candidate"; return; fi
  done
  echo "setup.sh: no Python 3.12 found (python3, python3.12, pyenv, uv); install one or set PYTHON=/path/to/python3.12" >&2
  return 1
}

if [ "${1:-}" = "--find-python" ]; then find_python; exit; fi
if [ -x .venv/bin/python ] && ! at_least_312 .venv/bin/python; then
  echo "setup.sh: .venv is $(.venv/bin/python -V 2>&1); rebuilding it on Python 3.12"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  PY=$(find_python)
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,hf,lmeval,notebooks,tpu,docs]'
# PyPI's torch for Python 3.12 is its CUDA build, which brings Triton; Triton's compiler crashes the process
# (SIGSEGV) when it is imported after TensorFlow, as transformers and lm-eval do here. Nothing in allam-jax compiles
# torch code, and torch runs without it.
.venv/bin/python -m pip uninstall --quiet --yes triton 2>/dev/null || true
echo "allam-jax installed in .venv ($(.venv/bin/python -c 'import sys, jax; print(f"Python {sys.version.split()[0]}, jax", jax.__version__)'))"
