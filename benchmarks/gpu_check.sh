#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py for what it measures):
#   bash benchmarks/gpu_check.sh [DATA_DIR] [--device cpu] [more gpu_check.py options]
# DATA_DIR: bvlc_googlenet.pth + photos/ (default $ATLAS_GPU_DATA, else gpu_data/ in the checkout;
# benchmarks/make_gpu_data.sh fills it). No internet needed. Python: $PYTHON, else .venv/bin/python
# in the checkout, else python3.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${ATLAS_GPU_DATA:-$repo/gpu_data}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  data="$1"
  shift
fi
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="python3"; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$repo/benchmarks/gpu_check.py" --data "$data" "$@"
