#!/usr/bin/env bash
# Create .venv (if missing) with the pinned environment and oodguard installed editable.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.oodguard-requirements
if ! cmp -s requirements/ci.txt "$stamp" 2>/dev/null; then
  echo "==> installing pinned requirements (requirements/ci.txt)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements/ci.txt
  cp requirements/ci.txt "$stamp"
fi
.venv/bin/python -m pip install --quiet --no-deps -e .
