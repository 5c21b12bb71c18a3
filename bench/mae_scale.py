"""Does MAE pretraining pay at CPU scale? The representation against pretraining epochs, on UVP6 vignettes.

Issue 9's third target is "MAE ≥ scratch + 5 points macro-F1 at 5–10 % labels". This bench asks the question
under it: is the frozen encoder still getting better when pretraining stops? It pretrains the demo ViT of
bench/quality.py (48 px, patch 8, 4 blocks × 96; every recipe value from ``plankton_cli.train.recipe``) once for
``--epochs`` on all 1,250 UVP6 images (labels unused), snapshots the encoder at epochs 0 (random init), 5, 10,
20, 40, 80 (those within ``--epochs``, and the last), and for each snapshot measures:

    loss           the MAE training loss of that epoch (mean over the epoch's steps; none for the random init)
    kNN all        cosine kNN (``--head knn``: k = 10, distance-weighted) on the frozen embeddings, 5 stratified
                   folds of the finetune protocol, the whole training part labelled (1,250 images in all)
    kNN 10 %       the same folds, 10 % of each class labelled (the finetune protocol's subset: the setting
                   bench/quality.py fine-tunes in)

macro-F1 and accuracy, mean ± std over the folds, against the same kNN on 32-px pixels (``baselines.pixel_matrix``)
measured in the same run on the same folds. If kNN still rises at the last snapshot, more pretraining (and more
images) is what the encoder needs; if it is flat, pretraining longer on these images will not pay.

    nice -n 5 .venv/bin/python bench/mae_scale.py                 # 40 epochs (~20 min on 2 busy cores)
    nice -n 5 .venv/bin/python bench/mae_scale.py --epochs 80     # snapshots up to 80

The store is shared with bench/quality.py (--work), and so is the pretraining run: WORK/mae-<E>ep is the very run
quality.py trains for ``--pretrain-epochs E`` (same config), here with snapshots (WORK/mae-<E>ep/snapshots/, encoder
exports), so quality.py reuses its encoder; if quality.py trained it first, without snapshots, this bench trains
WORK/mae-<E>ep-snapshots. A re-run only measures again.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import echo, macro_f1, prepare_store, pretrain_config, start  # noqa: E402

SNAPSHOTS = (0, 5, 10, 20, 40, 80)
FOLDS = 5
FEW = "10%"


def snapshot_epochs(epochs: int) -> list[int]:
    return sorted({e for e in SNAPSHOTS if e <= epochs} | {epochs})


def pretrain_with_snapshots(store: Path, run: Path, epochs: int, workers: int) -> list[Path]:
    """Pretrain once (the recipe's schedule for ``epochs``) and export the encoder at each snapshot epoch as
    RUN/snapshots/epoch-NNNN (an encoder export, as finetune --init reads)."""
    from pytorch_lightning.callbacks import Callback

    from plankton_cli.train.model_info import ModelInfo
    from plankton_cli.train.models import save_encoder
    from plankton_cli.train.pretrain import pretrain

    wanted = snapshot_epochs(epochs)
    paths = [run / "snapshots" / f"epoch-{e:04d}" for e in wanted]
    if all((p / "encoder.json").exists() for p in paths):
        return paths
    if (run / "summary.json").exists():  # bench/quality.py trained this run without snapshots: train another
        return pretrain_with_snapshots(store, run.with_name(run.name + "-snapshots"), epochs, workers)

    class Snapshots(Callback):
        def __init__(self) -> None:
            self.states: dict[int, dict] = {}

        def on_train_start(self, trainer, pl_module) -> None:
            self.states[0] = pl_module.mae.encoder_state_dict()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch + 1 in wanted:
                self.states[trainer.current_epoch + 1] = pl_module.mae.encoder_state_dict()

    snapshots = Snapshots()
    started = time.monotonic()
    pretrain(replace(pretrain_config(store, run.parent, epochs, workers), out=run), enable_progress=False,
             callbacks=[snapshots])
    echo(f"pretrained {epochs} epochs in {time.monotonic() - started:.0f} s")
    final = ModelInfo.load(run / "encoder.json").to_dict()
    for epoch, path in zip(wanted, paths):
        info = {**final, "epochs": epoch, "source": f"MAE pretraining snapshot at epoch {epoch} of {run}"}
        save_encoder(path, snapshots.states[epoch], info)
    return paths


def epoch_losses(run: Path) -> dict[int, float]:
    """Epoch (1-based, as the snapshots count) → the MAE training loss averaged over that epoch."""
    with (run / "metrics.csv").open(newline="") as f:
        return {int(row["epoch"]) + 1: float(row["train/loss_epoch"]) for row in csv.DictReader(f)
                if row.get("train/loss_epoch")}


def embeddings(encoder: Path, store: Path, dataset_dir: Path, ids: list[str], classes: list[str],
               workers: int) -> dict[str, np.ndarray]:
    """object_id → the frozen encoder's pooled embedding (what ``--head knn`` fits on), eval transform."""
    from plankton_cli.prepare.data import EvalTransform
    from plankton_cli.train.finetune import FinetuneConfig, build_classifier, default_resize, store_loader
    from plankton_cli.train.finetune.heads import embed

    config = FinetuneConfig(store=store, init=str(encoder), out=Path(tempfile.gettempdir()), workers=workers)
    model, inherited = build_classifier(config, len(classes))
    img_size = model.arch["img_size"]
    mean, std = (float(np.ravel(inherited[k])[0]) for k in ("mean", "std"))
    transform = EvalTransform(int(inherited.get("resize") or default_resize(img_size)), img_size, mean, std)
    loader = store_loader(dataset_dir, ids, classes, transform, train=False, batch_size=256, workers=workers, seed=0)
    out_ids, _, x = embed(model, loader)
    return dict(zip(out_ids, x))


def knn_scores(vectors: dict[str, np.ndarray], splits: list, label_of: dict[str, str],
               classes: list[str]) -> dict[str, list[float]]:
    """Per fold: macro-F1 and accuracy of the cosine kNN head fitted on the fold's training ids."""
    from plankton_cli.train import metrics as M
    from plankton_cli.train.finetune.heads import fit_head, head_probabilities

    index = {name: i for i, name in enumerate(classes)}
    scores: dict[str, list[float]] = {"macro_f1": [], "accuracy": []}
    for split in splits:
        x_train = np.stack([vectors[i] for i in split.train])
        y_train = np.array([index[label_of[i]] for i in split.train])
        head = fit_head("knn", x_train, y_train, len(classes))
        probabilities = head_probabilities(head, np.stack([vectors[i] for i in split.test]))
        result = M.classification_metrics([label_of[i] for i in split.test],
                                          [classes[p] for p in probabilities.argmax(1)], classes)
        for metric in scores:
            scores[metric].append(result[metric])
    return scores


def plot(rows: list[dict], losses: dict[int, float], pixel: dict, path: Path) -> None:
    from plankton_cli.train.metrics import _new_figure, _save

    figure = _new_figure(10, 3.6)
    left, right = figure.subplots(1, 2)
    left.plot(sorted(losses), [losses[e] for e in sorted(losses)])
    left.set(xlabel="epoch", ylabel="MAE training loss (epoch mean)", title="pretraining loss")
    for setting, style in (("all", "-o"), (FEW, "-s")):
        epochs = [r["epoch"] for r in rows]
        line, = right.plot(epochs, [100 * r[f"knn_{setting}"]["macro_f1"][0] for r in rows], style,
                           label=f"MAE kNN, {setting} labels")
        right.axhline(100 * pixel[setting]["macro_f1"][0], color=line.get_color(), ls=":",
                      label=f"pixel kNN, {setting} labels")
    right.set(xlabel="pretraining epoch", ylabel="test macro-F1 %", title=f"frozen-encoder kNN, {FOLDS} folds")
    right.legend(fontsize=7)
    _save(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench-quality",
                        help="Store and runs, shared with bench/quality.py.")
    parser.add_argument("--epochs", type=int, default=40,
                        help="Pretraining epochs (the recipe's schedule for them); 40 is bench/quality.py's run, "
                             "which then reuses this one's encoder.")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default). On a shared 2-core machine 1 is several times faster: "
                             "two threads per process oversubscribe the cores.")
    args = parser.parse_args()
    started = start(args)
    store = prepare_store(args.work)

    from plankton_cli.train import metrics as M
    from plankton_cli.train.finetune import labelled_pool
    from plankton_cli.train.finetune.baselines import pixel_matrix
    from plankton_cli.train.protocol import make_folds, restrict_train
    from plankton_cli.store import Store
    from plankton_cli.train.training import resolve_dataset

    dataset_dir = store / resolve_dataset(Store(store), None)
    pool = labelled_pool(dataset_dir)
    classes, label_of = pool.classes, pool.label_of()
    folds = make_folds(pool.object_ids, pool.labels, FOLDS)
    splits = {"all": folds, FEW: [restrict_train(split, label_of, FEW) for split in folds]}

    run = pretrain_config(store, args.work, args.epochs, args.workers).out
    snapshots = pretrain_with_snapshots(store, run, args.epochs, args.workers)
    run = snapshots[0].parents[1]
    pretrained = time.monotonic()
    losses = epoch_losses(run)

    pixel_ids, pixels = pixel_matrix(dataset_dir, pool.object_ids, classes)
    pixel_vectors = dict(zip(pixel_ids, pixels))
    pixel = {setting: {m: macro_f1(v) for m, v in knn_scores(pixel_vectors, s, label_of, classes).items()}
             for setting, s in splits.items()}
    rows = []
    for epoch, snapshot in zip(snapshot_epochs(args.epochs), snapshots):
        vectors = embeddings(snapshot, store, dataset_dir, pool.object_ids, classes, args.workers)
        row = {"epoch": epoch, "loss": losses.get(epoch)}
        for setting, s in splits.items():
            row[f"knn_{setting}"] = {m: macro_f1(v) for m, v in knn_scores(vectors, s, label_of, classes).items()}
        rows.append(row)
        echo(f"epoch {epoch}: " + ", ".join(f"{k} {100 * v['macro_f1'][0]:.1f}" for k, v in row.items()
                                            if k.startswith("knn")))

    def cells(scores: dict, setting: str) -> dict[str, str]:
        return {f"kNN macro-F1 {setting}": M.format_mean_std(*scores[setting]["macro_f1"], digits=1),
                f"kNN acc. {setting}": M.format_mean_std(*scores[setting]["accuracy"], digits=1)}

    table = [{"encoder": f"MAE epoch {r['epoch']}" + (" (random init)" if r["epoch"] == 0 else ""),
              "MAE train loss": "–" if r["loss"] is None else f"{r['loss']:.4f}",
              **{k: v for s in splits for k, v in cells({s: r[f"knn_{s}"]}, s).items()}} for r in rows]
    table.append({"encoder": "pixels 32 px (reference)", "MAE train loss": "–",
                  **{k: v for s in splits for k, v in cells(pixel, s).items()}})
    summary = json.loads((run / "summary.json").read_text())
    header = (f"UVP6 ({len(pool.object_ids)} labelled images, {len(classes)} classes), MAE on the demo ViT "
              f"(48 px, 4 × 96) for {args.epochs} epochs ({summary['global_step']} optimizer steps, effective "
              f"batch {summary['effective_batch']}, {summary['images_per_second']} img/s); cosine kNN (k = 10) "
              f"on frozen embeddings, {FOLDS} folds (finetune protocol: test 20 %, train = training part, or its "
              f"{FEW} subset), % mean ± std; pretrain {pretrained - started:.0f} s, all {time.monotonic() - started:.0f} s")
    markdown = header + "\n\n" + M.format_table_markdown(table)
    print(markdown)
    (run / "mae_scale.md").write_text(markdown + "\n")
    (run / "mae_scale.json").write_text(json.dumps({"epochs": args.epochs, "losses": losses, "snapshots": rows,
                                                    "pixel": pixel, "pretrain": summary}, indent=2))
    plot(rows, losses, pixel, run / "mae_scale.png")
    echo(f"written {run / 'mae_scale.md'}, .json, .png")


if __name__ == "__main__":
    main()
