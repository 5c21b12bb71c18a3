"""Recognition quality on UVP6 vignettes: does the model beat what a plankton lab would fit in a second?

One table of test macro-F1 (mean ± std over folds) per labelled fraction, every column on the same folds and
labelled subsets (the finetune protocol):

    pixel logreg   logistic regression on 32-px pixels (the baseline `plankton finetune` scores on every fold)
    kNN, linear    cosine k-NN / linear probe on the frozen MAE encoder's embeddings (`--head knn|linear`)
    scratch        the same ViT fine-tuned from random weights (`--init scratch`)
    MAE            fine-tuned from the MAE encoder pretrained here on all 1,250 images, labels unused
    auto           `--head auto`: per fold the best of MAE / kNN / linear by validation macro-F1
    gap            auto − pixel logreg: the reference measured in the same run

The ViT is the demo's CPU size (48 px, patch 8, 4 blocks × 96); every recipe value other than the epochs comes
from `plankton_cli.recipe` (nothing tuned here). Pretraining with labels unused on the images that are later
test images is the paper's "with target data" setting.

    .venv/bin/python bench/quality.py --quick          # 10 % labels, 2 folds, short runs: a few minutes
    .venv/bin/python bench/quality.py                  # 5, 10, 25 %, all; 5 folds
    .venv/bin/python bench/quality.py --labels 10% --folds 2 --pretrain-epochs 40 --epochs 40   # "numbers to reach"

The store, the encoder and finished folds are kept in --work, so a re-run only does what is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
UVP6 = SHARED_DATA / "images" / "uvp6-vignettes"
DEMO_VIT = dict(model="vit_tiny_patch16_224", img_size=48, patch_size=8, depth=4, embed_dim=96, num_heads=3)
COLUMNS = ("pixel logreg", "kNN", "linear", "scratch", "MAE", "auto")


def echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_store(work: Path) -> Path:
    """UVP6 ingested and padded once into WORK/store."""
    from plankton_cli.ingest import ingest
    from plankton_cli.pad_store import pad_dataset
    from plankton_cli.records import ReadOptions
    from plankton_cli.store import Store

    store = Store(work / "store")
    ingest(store, [UVP6], options=ReadOptions(instrument="UVP6"))
    pad_dataset(store)
    return store.root


def pretrain_encoder(store: Path, work: Path, epochs: int, workers: int) -> tuple[Path, dict]:
    """The MAE encoder (recipe-scaled), trained once per epoch count."""
    from plankton_cli.pretrain import PretrainConfig, pretrain

    out = work / f"mae-{epochs}ep"
    if not (out / "summary.json").exists():
        started = time.monotonic()
        pretrain(PretrainConfig(store=store, out=out, epochs=epochs, workers=workers, recon_every=0,
                                **DEMO_VIT), enable_progress=False)
        echo(f"pretrained {epochs} epochs in {time.monotonic() - started:.0f} s")
    return out / "encoder.safetensors", json.loads((out / "summary.json").read_text())


def finetune_run(store: Path, out: Path, init: str, labels: str, folds: int, epochs: int, head: str,
                 workers: int) -> list[dict]:
    """Every fold's result.json of one finetune run (finished folds are not trained again)."""
    from plankton_cli.finetune import FinetuneConfig, finetune

    arch = DEMO_VIT if init == "scratch" else {}
    finetune(FinetuneConfig(store=store, init=init, out=out, labels=labels, folds=folds, epochs=epochs, head=head,
                            workers=workers, **arch), echo=lambda text: None)
    return [json.loads((out / f"fold-{k}" / "result.json").read_text()) for k in range(folds)]


def macro_f1(values: list[float]) -> tuple[float, float]:
    array = np.array(values, float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench-quality",
                        help="Store, encoder and runs, kept between runs.")
    parser.add_argument("--labels", nargs="+", default=["5%", "10%", "25%", "all"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=30, help="Fine-tuning epochs.")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 %% labels, 2 folds, 10 + 10 epochs.")
    args = parser.parse_args()
    if args.quick:
        args.labels, args.folds, args.pretrain_epochs, args.epochs = ["10%"], 2, 10, 10
    if not UVP6.is_dir():
        sys.exit(f"needs the UVP6 vignettes at {UVP6}")
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    store = prepare_store(args.work)
    encoder, mae_summary = pretrain_encoder(store, args.work, args.pretrain_epochs, args.workers)

    rows, document = [], {"settings": {k: str(v) for k, v in vars(args).items()}, "pretrain": mae_summary,
                          "labels": {}}
    for labels in args.labels:
        tag = labels.replace("%", "pc").replace("/", "-")
        runs = args.work / f"runs-ft{args.epochs}-pt{args.pretrain_epochs}-{args.folds}f"
        mae = finetune_run(store, runs / f"mae-{tag}", str(encoder), labels, args.folds, args.epochs, "auto",
                           args.workers)
        scratch = finetune_run(store, runs / f"scratch-{tag}", "scratch", labels, args.folds, args.epochs,
                               "finetune", args.workers)
        per_fold = {
            "pixel logreg": [r["baselines"]["pixel_logreg"]["macro_f1"] for r in mae],
            "kNN": [r["heads"]["knn"]["macro_f1"] for r in mae],
            "linear": [r["heads"]["linear"]["macro_f1"] for r in mae],
            "scratch": [r["macro_f1"] for r in scratch],
            "MAE": [r["heads"]["finetune"]["macro_f1"] for r in mae],
            "auto": [r["macro_f1"] for r in mae],
        }
        means = {name: macro_f1(values) for name, values in per_fold.items()}
        gap = means["auto"][0] - means["pixel logreg"][0]
        rows.append({"labels": labels, "n_train": int(np.mean([r["n_train"] for r in mae])),
                     **{name: f"{100 * m:.1f} ± {100 * s:.1f}" for name, (m, s) in means.items()},
                     "gap": f"{100 * gap:+.1f}",
                     "auto chose": ", ".join(sorted({r["head"] for r in mae}))})
        document["labels"][labels] = {"per_fold": per_fold, "mean_std": means, "gap_auto_vs_pixel_logreg": gap,
                                      "mae_minus_scratch": means["MAE"][0] - means["scratch"][0]}
        echo(f"{labels}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items() if k != "labels"))

    from plankton_cli.metrics import format_table_markdown

    table = format_table_markdown(rows, ["labels", "n_train", *COLUMNS, "gap", "auto chose"])
    header = (f"UVP6, {args.folds} folds, macro-F1 % (mean ± std); ViT 48 px / 4 × 96, MAE {args.pretrain_epochs} "
              f"epochs (final loss {mae_summary.get('final_loss') or float('nan'):.3f}), fine-tune {args.epochs} "
              f"epochs; gap = auto − pixel logreg; {time.monotonic() - started:.0f} s")
    print(header + "\n\n" + table)
    (args.work / "quality.md").write_text(header + "\n\n" + table + "\n")
    (args.work / "quality.json").write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
