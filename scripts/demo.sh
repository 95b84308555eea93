#!/usr/bin/env bash
# The demo: set up .venv, then train ▶ export ▶ calibrate ▶ evaluate on scikit-learn's digits.
# Extra arguments go to `oodguard demo` (e.g. --out DIR, --seed N, --no-plots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/oodguard demo "$@"
