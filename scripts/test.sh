#!/usr/bin/env bash
# The tests: set up everything they need (scripts/setup.sh test: .venv from requirements/ci.txt
# and requirements/bench.txt, the deploy validators' .venv-deploy; Debian's prometheus/promtool
# when missing), then ruff, mypy, pytest.
# pytest's own exit status is kept: 5 (no test ran) fails this script like any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing prometheus and promtool (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "prometheus/promtool missing: apt-get install prometheus (as root)" >&2
    exit 1
  fi
fi
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
  || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSansCondensed.ttf ]; then
  # the rendered-glyph benchmarks and their tests draw with Debian's DejaVu fonts
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing fonts-dejavu-core and fonts-dejavu-extra (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      fonts-dejavu-core fonts-dejavu-extra >/dev/null
  else
    echo "DejaVu fonts missing: apt-get install fonts-dejavu-core fonts-dejavu-extra (as root)" >&2
    exit 1
  fi
fi
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy oodguard export calibration demo inspection training
echo "==> pytest"
.venv/bin/pytest -q "$@"
