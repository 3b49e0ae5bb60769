#!/usr/bin/env bash
# Set up atlas in ./.venv and run the quick-start pipeline (pipelines/quickstart.toml).
#   ./quickstart.sh            set up, then run the pipeline
#   ./quickstart.sh --setup    set up only (what CI does before the tests)
# Environment: PYTHON (default python3); ATLAS_* variables as in pipelines/quickstart.toml.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch/torchvision are pinned to releases that install without a multi-GB download here, and
# torchcodec to the release built for that torch; pyproject.toml accepts newer ones.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "torchcodec==0.17.0"
# the distribution is activation-atlas; a .venv made when it was still called atlas keeps that
# old editable install beside it unless it is removed
if .venv/bin/python -m pip show --quiet atlas >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall --quiet -y atlas
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
if [ "${1:-}" = "--setup" ]; then
  exit 0
fi
exec .venv/bin/atlas run pipelines/quickstart.toml
