#!/usr/bin/env bash
# The whole pipeline on the bundled real data, on CPU in a few minutes:
# 105 labelled FlowCam-like images (planktonclass demo, Apache-2.0) and one real IFCB bin (pyifcb, MIT).
#   ingest -> pad -> a small MAE pretrain -> fine-tune -> predict (EcoTaxa zip + IFCB v3 h5) -> evaluate
# Run from the repository root after installing:  bash examples/demo.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-output}
PLANKTON=${PLANKTON:-.venv/bin/plankton}
STORE=$OUT/store
rm -rf "$OUT"
mkdir -p "$OUT"
# A tiny ViT (48 px, patch 8, 4 blocks) so that CPU training takes minutes; the recipe is the paper's otherwise.
TINY=(--model vit_tiny_patch16_224 --img-size 48 --patch-size 8 --depth 4 --embed-dim 96 --num-heads 3)

step() { printf '\n== %s\n' "$*"; }

step "ingest the demo images and an IFCB bin"
$PLANKTON -q ingest tests/data/planktonclass-demo/demo-images --instrument FlowCam --store "$STORE"
$PLANKTON -q ingest tests/data/ifcb/pyifcb-testdata/white --store "$STORE"
$PLANKTON info --store "$STORE"

step "pad every image to a square with its own background"
$PLANKTON -q pad --store "$STORE" --preview 16 "$OUT/pad-preview.png"

step "pretrain a masked autoencoder on all images (labels unused)"
$PLANKTON -q pretrain --store "$STORE" "${TINY[@]}" --decoder-depth 2 --decoder-dim 64 --decoder-heads 4 \
    --epochs 30 --warmup-epochs 3 --batch-size 32 --effective-batch 64 --workers 0 --recon-every 10 \
    --out "$OUT/pretrain"

step "fine-tune on the labelled FlowCam images, 2 folds"
$PLANKTON -q finetune --store "$STORE" --init "$OUT/pretrain/encoder.safetensors" --instrument FlowCam \
    --labels all --folds 2 --epochs 20 --warmup-epochs 2 --batch-size 32 --workers 0 --out "$OUT/finetune"

step "predict every stored object: store, EcoTaxa import zips, IFCB Dashboard class files"
$PLANKTON -q predict --store "$STORE" --model "$OUT/finetune/fold-0/model.safetensors" \
    --to store --to ecotaxa --to ifcb-h5 --out "$OUT/predictions"

step "evaluate the fine-tune run"
$PLANKTON evaluate "$OUT/finetune" --out "$OUT/evaluation"

cat <<DONE

Outputs:
  store                         $STORE   (plankton info --store $STORE)
  padding preview               $OUT/pad-preview.png
  pretrained encoder            $OUT/pretrain/encoder.safetensors (+ reconstructions in $OUT/pretrain/)
  fine-tuned models             $OUT/finetune/fold-*/model.safetensors
  EcoTaxa import zips           $OUT/predictions/ecotaxa/
  IFCB Dashboard class files    $OUT/predictions/ifcb-h5/
  tables and plots              $OUT/evaluation/
DONE
