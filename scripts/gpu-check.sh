#!/usr/bin/env bash
# GPU check for MAE pretraining, on one H100/H200, in under 8 minutes:
#   1. the GPU-marked tests (bf16, --gpu-augment, --compile through the real CLI);
#   2. bench/pretrain_gpu.py: end-to-end img/s from a store vs a synthetic step, and MFU, ViT-B/16 and ViT-L/16
#      (eager first, then compiled; no new run after 130 s, each row saved as soon as it is measured).
# A failing test does not stop the benchmark: both results come back, and the script exits with the first failure.
# Run from the repository root. Wheels carried in .whl/ (what the GPU machine lacks: lightly) are installed with
# this checkout into /tmp/site first. Results: $OUT (or /tmp/gpu-check) gets bench.json and the logs.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] && PY=.venv/bin/python

# This checkout is installed (offline, no build isolation) into /tmp/site with the carried wheels: the tests find
# the built-in plugins through their entry points, and schemas/ is only plankton_cli.schemas once installed.
# PYTHONSAFEPATH keeps `python -m` from putting the source folder ahead of the installed copy.
wheels=()
compgen -G ".whl/*.whl" > /dev/null && wheels=(.whl/*.whl)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site "${wheels[@]}" .
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONSAFEPATH=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, timm, lightly, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'lightly', lightly.__version__, 'lightning', pl.__version__); assert torch.cuda.is_available()"

echo "== GPU tests"
# exit status 5 = no test selected: not a failure of this check
tests_status=0
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_pretrain.py 2>&1 | tee "$OUT/tests.log" || {
    tests_status=${PIPESTATUS[0]}; if [[ $tests_status == 5 ]]; then tests_status=0; fi; }

echo "== benchmark"
STORE=${BENCH_STORE:-/tmp/bench-store/store}
timeout 260 "$PY" bench/pretrain_gpu.py --store "$STORE" --make-store 8192 --steps 20 --warmup 8 --budget-s 130 \
    --json "$OUT/bench.json" 2>&1 | grep -v "^\(GPU\|TPU\|💡\|LOCAL_RANK\)" | tee "$OUT/bench.log"
exit "$tests_status"
