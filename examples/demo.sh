#!/usr/bin/env bash
# The whole pipeline on the bundled real data, on CPU in a few minutes:
# 105 labelled FlowCam-like images (planktonclass demo, Apache-2.0) and one real IFCB bin (pyifcb, MIT).
#   ingest -> pad -> features -> a small MAE pretrain -> fine-tune (--head auto) -> predict (EcoTaxa zip +
#   (FlowCam) -> evaluate against the baselines
# Run from the repository root after installing:  bash examples/demo.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-output}
PLANKTON=${PLANKTON:-.venv/bin/plankton}
STORE=$OUT/store
MODEL=$OUT/finetune/fold-0/model.safetensors
rm -rf "$OUT"
mkdir -p "$OUT"
# A tiny ViT (48 px, patch 8, 4 blocks) so that CPU training takes minutes; the recipe is the paper's otherwise.
TINY=(--model vit_tiny_patch16_224 --img-size 48 --patch-size 8 --depth 4 --embed-dim 96 --num-heads 3)

step() { printf '\n== %s\n' "$*"; }

step "ingest the demo images and an IFCB bin"
$PLANKTON -q ingest tests/data/planktonclass-demo/demo-images --instrument FlowCam --store "$STORE"
$PLANKTON -q ingest tests/data/ifcb/pyifcb-testdata/white --store "$STORE"
$PLANKTON info --store "$STORE"

step "pad every image to a square with its own background (pad-preview.png: original | padded)"
$PLANKTON -q pad --store "$STORE" --preview 16 "$OUT/pad-preview.png"

step "measure every object (area, ESD, biovolume, shape, grey levels): features for the model and the baselines"
$PLANKTON -q features --store "$STORE"

# The training steps run without -q: they log their recipe and a progress line every few seconds.
step "pretrain a masked autoencoder on all images (labels unused): 1008 steps, 20 s to 5 min on 2 CPU cores"
# 124 images at batch 8 make 16 optimizer steps per epoch, and 63 epochs the ~1000 steps MAE needs to learn
# anything (pretrain warns below that). The paper's lr rule (1.5e-4 per 256 images) gives a batch of 8 almost no
# lr, hence a base lr 10x the paper's.
$PLANKTON pretrain --store "$STORE" "${TINY[@]}" --decoder-depth 2 --decoder-dim 64 --decoder-heads 4 \
    --epochs 63 --batch-size 8 --effective-batch 8 --base-lr 1.5e-3 --workers 0 --recon-every 0 \
    --out "$OUT/pretrain"

step "fine-tune on the labelled FlowCam images; keep the best head: fine-tuned ViT, linear probe, kNN or forest"
# One 80/20 split (--folds 1): 71 images to train, 13 to choose the head, 21 to test. At batch 8 that is 9 steps
# per epoch, and 12 epochs make the ~100 steps fine-tuning needs (finetune warns below that). --head auto
# (with the features measured above) keeps whichever candidate scores best on the validation images.
$PLANKTON finetune --store "$STORE" --init "$OUT/pretrain/encoder.safetensors" --instrument FlowCam \
    --labels all --folds 1 --epochs 12 --batch-size 8 --workers 0 --head auto --out "$OUT/finetune"

step "predict the FlowCam images (the instrument the model was fine-tuned on): store and EcoTaxa import zips"
# The IFCB bin is unlabelled: it joined the pretraining (a station's own images help most there), but a model
# fine-tuned on FlowCam would classify its ROIs with another instrument's look, and predict would warn so.
$PLANKTON -q predict --store "$STORE" --model "$MODEL" --instrument FlowCam --to store --to ecotaxa \
    --out "$OUT/predictions"

step "evaluate the fine-tune run: the model beside its baselines (macro-F1, test images)"
$PLANKTON evaluate "$OUT/finetune" --out "$OUT/evaluation"

cat <<DONE

You now have:
  a store with images, padding, features, predictions   $STORE   (plankton info --store $STORE)
  padding preview (original | padded)                   $OUT/pad-preview.png
  pretrained encoder                                    $OUT/pretrain/encoder.safetensors (+ reconstructions/)
  the fine-tuned model (the head that won) for predict  $MODEL
  EcoTaxa import zips                                   $OUT/predictions/ecotaxa/
  tables and plots (model vs baselines)                 $OUT/evaluation/

Next:
  your own data: ingest it, then pad, features, pretrain (with your unlabelled images), finetune --head auto
  IFCB Dashboard class files: predict --to ifcb-h5 with a model fine-tuned on IFCB labels
  counts and cells per mL per bin, and the night's HTML report (objects with a sample id: IFCB bins, EcoTaxa
  samples; the demo's FlowCam folder images have none):
      plankton summarize --store STORE --model MODEL --by bin --out SUMMARY
      plankton report --store STORE --model MODEL --summary SUMMARY --out REPORTS
  a station's nightly job (cron): ingest, predict, summarize and report every night, see examples/nightly/README.md
DONE
