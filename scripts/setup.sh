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
# requirements/bench.txt adds the detection benchmark's peers (PyOD, scikit-image's bundled
# photos) to requirements/ci.txt, so the benchmark's smoke test runs them too.
stamp=.venv/.oodguard-requirements
if ! cat requirements/ci.txt requirements/bench.txt | cmp -s - "$stamp" 2>/dev/null; then
  echo "==> installing pinned requirements (requirements/ci.txt, requirements/bench.txt)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements/bench.txt
  cat requirements/ci.txt requirements/bench.txt > "$stamp"
fi
.venv/bin/python -m pip install --quiet --no-deps -e .

# deploy/ validators (hadolint, kubernetes-validate, checkov; requirements/deploy.txt) in their
# own .venv-deploy: checkov pins ~100 packages that must not move .venv's. tests/
# test_deploy_hardening.py runs them from there and fails (never skips) without them.
deploy_stamp=.venv-deploy/.oodguard-requirements
if ! cmp -s requirements/deploy.txt "$deploy_stamp" 2>/dev/null; then
  echo "==> installing deploy/ validators into .venv-deploy (requirements/deploy.txt)"
  [ -x .venv-deploy/bin/python ] || "$PY" -m venv .venv-deploy
  .venv-deploy/bin/python -m pip install --quiet -r requirements/deploy.txt
  cp requirements/deploy.txt "$deploy_stamp"
fi
