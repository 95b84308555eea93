#!/usr/bin/env bash
# The demo: set up .venv with what the demo needs (scripts/setup.sh demo: the cpu and demo extras
# at requirements/ci.txt's pins; no test tools, no deploy validators), then train ▶ export ▶
# calibrate ▶ evaluate on scikit-learn's digits.
# Extra arguments go to `oodguard demo` (e.g. --out DIR, --seed N, --no-plots, --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/oodguard demo "$@"
