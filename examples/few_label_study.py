"""The paper's few-label comparison in miniature: MAE-pretrained vs from-scratch ViT at 5 %, 10 % and 100 % labels.

Kareinen et al. 2025 (Tables 3, 5, 6; Figures 4, 5) fine-tune an MAE-pretrained ViT-L and an ImageNet/scratch
baseline with 1-10 % of the labels by 5-fold cross-validation. This script runs the same protocol with the
`plankton` command line on the 1,250 UVP6 vignettes (10 classes), sized for a laptop CPU:

- ingest → pad → MAE pretraining on all images (labels unused) of a tiny ViT (patch 8, depth 3, width 64,
  2 heads, 32 px input: 16 patches, 75 % masking, decoder 2 × 64), 30 epochs;
- fine-tuning of that encoder and of the same ViT from scratch, 5 folds, at each label fraction, with the
  paper's recipe except the batch size (16) and the epochs (see EPOCHS);
- a mean ± std table (accuracy, balanced accuracy, macro-F1) and the few-label curve (PNG).

Usage:
    python examples/few_label_study.py [--images DIR] [--work DIR] [--pretrain-epochs N] [--epochs N]

The UVP6 vignettes (GPL-3.0, from github.com/ecotaxa/uvpec) are not shipped with the package; give their folder
with --images. Expect ~20-25 minutes on two CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "images" / "uvp6-vignettes"
TINY_VIT = ["--model", "vit_base_patch16_224", "--img-size", "32", "--patch-size", "8", "--depth", "3",
            "--embed-dim", "64", "--num-heads", "2"]
LABELS = ("5%", "10%", "all")
# Epochs per label fraction. The paper trains 50 epochs whatever the fraction, which on its data sets is
# thousands of steps even at 1 %; on 1,250 images 5 % is 43 images, 3 steps an epoch. These give each fraction
# a few hundred optimizer steps at batch 16 (5 %: ~180, 10 %: ~240, all: ~540) within the CPU budget.
EPOCHS = {"5%": 60, "10%": 40, "all": 10}


def plankton(*args: str) -> None:
    """Run one `plankton` command, failing loudly."""
    started = time.monotonic()
    print(f"$ plankton {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "plankton_cli", "-q", *args], check=True)
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="UVP6 vignettes, one folder per class")
    parser.add_argument("--work", type=Path, default=Path("few-label-study"), help="where the store and runs go")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epoch-scale", type=float, default=1.0, help="multiply the fine-tuning EPOCHS")
    parser.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch (the paper: 128)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images}: give the UVP6 vignettes folder with --images")

    store, work = args.work / "store", args.work
    plankton("ingest", str(args.images), "--store", str(store), "--instrument", "UVP6")
    plankton("pad", "--store", str(store))
    mae = work / "mae"
    if not (mae / "encoder.safetensors").exists():
        # lr = base-lr × 64 / 256 = 1e-3: the MAE rule's 1.5e-4 is for batches of 4096 and 800 epochs.
        plankton("pretrain", "--store", str(store), "--out", str(mae), *TINY_VIT, "--decoder-depth", "2",
                 "--decoder-dim", "64", "--decoder-heads", "2", "--epochs", str(args.pretrain_epochs),
                 "--warmup-epochs", "4", "--batch-size", "64", "--effective-batch", "64", "--base-lr", "4e-3",
                 "--workers", str(args.workers), "--recon-every", "0")

    rows = []
    for labels in LABELS:
        for name, init in (("plankton-mae", [str(mae / "encoder.safetensors")]), ("scratch", ["scratch", *TINY_VIT])):
            out = work / "runs" / f"{name}-{labels.replace('%', 'pct')}"
            # The paper's protocol (a full-size validation set beside the labels), as the paper's comparison.
            plankton("finetune", "--store", str(store), "--init", *init, "--labels", labels, "--protocol", "paper",
                     "--folds", str(args.folds), "--epochs", str(max(1, round(EPOCHS[labels] * args.epoch_scale))), "--batch-size", str(args.batch_size),
                     "--warmup-epochs", "2", "--workers", str(args.workers), "--out", str(out))
            summary = json.loads((out / "summary.json").read_text())
            rows += [{"init": name, "labels": labels, **fold} for fold in summary["folds"]]

    from plankton_cli.train.metrics import format_mean_std, format_table_markdown, plot_few_label_curve, summarise_folds

    table = []
    for labels in LABELS:
        for name in ("plankton-mae", "scratch"):
            folds = [r for r in rows if r["init"] == name and r["labels"] == labels]
            summary = summarise_folds(folds)
            table.append({"labels": labels, "init": name, "n_train (fold 0)": folds[0]["n_train"],
                          "labelled incl. validation (fold 0)": folds[0]["n_labelled"],
                          **{metric: format_mean_std(s["mean"], s["std"]) for metric, s in summary.items()}})
    print("\nTest scores in %, mean ± std over folds:\n")
    print(format_table_markdown(table))
    curve = plot_few_label_curve(rows, work / "few_label_curve.png", metric="macro_f1",
                                 title="UVP6 vignettes, tiny ViT: MAE vs scratch")
    (work / "study.json").write_text(json.dumps(rows, indent=1))
    print(f"curve: {curve}; per-fold rows: {work / 'study.json'}")


if __name__ == "__main__":
    main()
