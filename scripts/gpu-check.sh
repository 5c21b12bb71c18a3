#!/usr/bin/env bash
# GPU check for MAE pretraining, on one H100/H200, in under 8 minutes:
#   1. the GPU-marked tests (bf16, --gpu-augment, --compile through the real CLI);
#   2. bench/pretrain_gpu.py: end-to-end img/s from a store vs a synthetic step, ViT-B/16 and ViT-L/16.
# Run from the repository root. Wheels carried in .whl/ (e.g. for a machine without network) are installed
# into /tmp/site first. Results: $OUT (or /tmp/gpu-check) gets bench.json and the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] && PY=.venv/bin/python

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, timm, lightly, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'lightly', lightly.__version__, 'lightning', pl.__version__); assert torch.cuda.is_available()"

echo "== GPU tests"
# exit status 5 = no test selected: not a failure of this check
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_pretrain.py 2>&1 | tee "$OUT/tests.log" || {
    status=${PIPESTATUS[0]}; [[ $status == 5 ]] || exit "$status"; }

echo "== benchmark"
STORE=${BENCH_STORE:-/tmp/bench-store/store}
timeout 330 "$PY" bench/pretrain_gpu.py --store "$STORE" --make-store 4096 --steps 20 --warmup 8 \
    --json "$OUT/bench.json" 2>&1 | grep -v "^\(GPU\|TPU\|💡\|LOCAL_RANK\)" | tee "$OUT/bench.log"
