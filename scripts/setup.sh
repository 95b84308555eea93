#!/usr/bin/env bash
# Create .venv (if missing) with the pinned environment and oodguard installed editable.
#
#   bash scripts/setup.sh demo    what `oodguard demo` imports and nothing more: the extras cpu and
#                                 demo (torch, onnx, onnxruntime, scikit-learn, scipy, matplotlib,
#                                 pillow, tqdm) at the versions pinned in requirements/ci.txt
#                                 (scripts/demo.sh runs this)
#   bash scripts/setup.sh [test]  everything the tests need (the default; scripts/test.sh runs it):
#                                 requirements/ci.txt, requirements/bench.txt and the deploy
#                                 validators' .venv-deploy (requirements/deploy.txt)
#
# Idempotent: a second run compares the requirement files with the stamps it left in the
# virtual environments and refreshes the editable install. A tested .venv also serves the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
level=${1:-test}
case "$level" in
  demo | test) ;;
  *) echo "usage: bash scripts/setup.sh [demo|test]" >&2; exit 2 ;;
esac

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

test_stamp=.venv/.oodguard-requirements
demo_stamp=.venv/.oodguard-demo-requirements
test_inputs() { cat requirements/ci.txt requirements/bench.txt; }
# The demo's packages come from pyproject.toml's extras, their versions from ci.txt.
demo_inputs() { cat requirements/ci.txt pyproject.toml; }

if [ "$level" = demo ]; then
  if ! test_inputs | cmp -s - "$test_stamp" 2>/dev/null \
      && ! demo_inputs | cmp -s - "$demo_stamp" 2>/dev/null; then
    echo "==> installing the demo's packages (extras cpu,demo at the versions of requirements/ci.txt)"
    # ci.txt as a constraints file: pins only, without extras (pip refuses extras in
    # constraints). Packages the demo does not import (ray, transformers, pytest, ...) stay out.
    constraints=$(mktemp)
    trap 'rm -f "$constraints"' EXIT
    sed 's/\[[^]]*\]//' requirements/ci.txt > "$constraints"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c "$constraints" -e '.[cpu,demo]'
    demo_inputs > "$demo_stamp"
  fi
# requirements/bench.txt adds the detection benchmark's peers (PyOD, scikit-image's bundled
# photos) to requirements/ci.txt, so the benchmark's smoke test runs them too.
elif ! test_inputs | cmp -s - "$test_stamp" 2>/dev/null; then
  echo "==> installing pinned requirements (requirements/ci.txt, requirements/bench.txt)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements/bench.txt
  test_inputs > "$test_stamp"
fi
.venv/bin/python -m pip install --quiet --no-deps -e .
[ "$level" = test ] || exit 0

# deploy/ validators (hadolint, kubernetes-validate, checkov; requirements/deploy.txt) in their
# own .venv-deploy: checkov pins ~100 packages that must not move .venv's. tests/
# test_deploy_hardening.py runs them from there and fails (never skips) without them. Only the
# tests need them: the demo's set-up (above) never builds .venv-deploy.
deploy_stamp=.venv-deploy/.oodguard-requirements
if ! cmp -s requirements/deploy.txt "$deploy_stamp" 2>/dev/null; then
  echo "==> installing deploy/ validators into .venv-deploy (requirements/deploy.txt)"
  [ -x .venv-deploy/bin/python ] || "$PY" -m venv .venv-deploy
  .venv-deploy/bin/python -m pip install --quiet -r requirements/deploy.txt
  cp requirements/deploy.txt "$deploy_stamp"
fi
