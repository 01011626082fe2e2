#!/usr/bin/env bash
# The prepared GPU check: real-scale benchmark (ViT-L-14-336 at 518 px, random init, bf16), every fix
# unpacked and packed, plus one 300-step trial of 3 seeds; JSON on stdout, progress on stderr.
# Under 5 minutes on one H100/H200. Extra arguments go to bench/gpu_bench.py (e.g. --pack 4).
#
#   bash bench/gpu.sh > gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A bare GPU image may lack open_clip: install wheels carried in .whl/ (see README) when present.
if ! "$PY" -c "import open_clip" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ablate-site .whl/*.whl
  export PYTHONPATH=/tmp/ablate-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader >&2 || true
exec "$PY" bench/gpu_bench.py "$@"
