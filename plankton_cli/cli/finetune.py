"""`plankton finetune`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from plankton_cli.cli.dispatch import backend_options
from plankton_cli.cli.options import usage_errors, tracker_options, require_store, Command, WORKERS_DEFAULT_TEXT, default_workers, json_option, store_option
from plankton_cli.cli.output import emit_json

log = logging.getLogger("plankton.finetune")


@click.command(cls=Command, epilog="""\b
Examples:
  # every fold's epochs, test scores and baselines in MLflow (./mlruns, or --logger-uri)
  plankton finetune --init runs/mae/encoder.safetensors --labels 5% --out runs/ft --logger mlflow
  plankton finetune --init runs/mae/encoder.safetensors --labels 5% --out runs/ft-5
  plankton finetune --init vit_large_patch16_224.augreg_in21k.pth --model vit_large_patch16_224 \\
      --labels 1% --out runs/imagenet-1       # the paper's ImageNet baseline, from a local file
  plankton finetune --init scratch --model vit_small_patch16_224 --img-size 96 --labels all --out runs/scratch
  plankton finetune --init hf-hub:ORG/plankton-mae-vit-b --labels 5% --out runs/hub-5   # or timm:vit_base_patch16_224.mae
  plankton finetune --init runs/mae --labels 10/class --instrument IFCB --folds 1 --out runs/ifcb-10
  plankton finetune --init runs/mae --labels 1% --head auto --out runs/auto-1   # + linear, k-NN, forest, blend
  plankton finetune --init runs/mae --features 'object_*' --out runs/ft-eco   # EcoTaxa morphometrics too
  plankton finetune --init runs/mae --labels 10% --head logreg --out runs/lr-10   # features' logistic regression
  plankton finetune --init runs/mae --labels 5% --head blend --out runs/blend-5   # forest + logreg, averaged
  # one SLURM job per fold (each writes fold-K/; the last to finish writes the full summary)
  for k in 0 1 2 3 4; do plankton finetune --init runs/mae --labels 5% --fold $k --out runs/ft-5 \\
      --backend slurm --partition gpu --time 4:00:00; done

\b
Labels: 1%, 5%, 10% (per class max(1, floor(p * N_c)), nested, seeded), all, or k/class.
Folds: stratified k-fold, 20 % test at 5 folds; --folds 1 is one such split.
--protocol budget (default): --labels is every label a fold uses. They are drawn from the whole
non-test part; 15 % of them (at least one of every class that has two) validate (epoch, head,
thresholds), then the chosen model is refitted on all of them. --protocol paper: the paper's,
15 % of the non-test part is a full-size validation set and --labels is drawn from the rest.
Each fold's split is saved (fold-K/split.json) and a re-run into the same --out reuses it;
finished folds (fold-K/result.json) are not trained again.

\b
Every fold also scores baselines on the same labelled images (training + validation: every
label the model used) and test part: a logistic regression on 32-px pixels and, when the objects
carry features, a random forest on them; the summary counts the labels, shows the baselines
beside the model and says when the model loses.

\b
Features (--features): numbers per object fed beside the image, before the bottleneck head:
EcoTaxa object_* columns, IFCB adc.* columns, and features.* from `plankton features`.
auto takes every feature that >= 90 % of the labelled images have; none, or NAME/PATTERN,...
Each is standardised by the fold's training median and IQR (clipped to +-10); a missing value is
fed as 0 with an indicator. model.json records the list and the scaling; predict feeds the same.

\b
Outputs in OUT: config.json, label_counts.csv, summary.md/.csv/.json (test accuracy, balanced
accuracy, macro-F1 per fold and mean ± std, heads, baselines), and per fold fold-K/: model.safetensors + model.json
(for `plankton predict`, with per-class thresholds for --target-precision), metrics.csv,
learning_curves.png, split.json, test_predictions.parquet, confusion_matrix.png.

Exit codes: 0 done, 1 training failed, 2 usage error (bad --init, --labels, dataset...).""")
@click.option("--init", "init", required=True, metavar="ENCODER|FILE|hf-hub:ORG/NAME[@REV]|timm:NAME|scratch",
              help="Start from an encoder exported by `plankton pretrain` (RUN/ or RUN/encoder.safetensors), a "
                   "local timm/ImageNet checkpoint (.safetensors/.pth; give --model), an encoder on the Hugging Face "
                   "Hub (through its cache, HF_HOME; HF_HUB_OFFLINE=1: cache only; its config.json names the "
                   "architecture), or 'scratch'.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory for the models, splits and results.")
@click.option("--dataset", help="Dataset of the store [default: padded when it exists, else objects].")
@click.option("--labels", default="all", show_default=True, metavar="SPEC",
              help="Labelled images a fold uses: 1%, 5%, 10%, all or k/class (with --protocol paper: training "
                   "images, beside a full-size validation set).")
@click.option("--protocol", type=click.Choice(["budget", "paper"]), default="budget", show_default=True,
              help="budget: validation comes out of --labels and the final model is refitted on all of them; "
                   "paper: the paper's full-size validation set beside --labels (counted in the results).")
@click.option("--folds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Cross-validation folds (1: a single 80/20 split).")
@click.option("--fold", type=click.IntRange(min=0), help="Run only this fold (0-based), e.g. one per SLURM job.")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Images per step and device [default: the paper's 128, at most an eighth of the fold's "
                   "labelled images: ≥ 8 steps per epoch].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate of the head, absolute when given [default: the paper's 2e-3 at batch 128, "
                   "scaled by the real total batch].")
@click.option("--layer-decay", type=click.FloatRange(0, 1, min_open=True), default=0.75, show_default=True,
              help="Layer-wise lr decay: block i gets lr × decay^(depth − i); patch/pos embeddings the lowest.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0),
              help="Linear warmup (per step), then cosine decay to 0 [default: 10 % of all steps, the paper's 5 of "
                   "50 epochs].")
@click.option("--drop-path", type=click.FloatRange(0, 1), default=0.2, show_default=True, help="Stochastic depth.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option("--target-precision", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Per-class thresholds written to model.json reach this precision on validation images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds, label subsets and training.")
@click.option("--workers", type=click.IntRange(min=0), default=default_workers(), show_default=WORKERS_DEFAULT_TEXT,
              help="DataLoader worker processes per device.")
@click.option("--instrument", "instruments", multiple=True,
              help="Use only images of this instrument (repeatable); results are also given per instrument.")
@click.option("--label-status", "label_status", multiple=True, default=["validated"], show_default=True,
              help="Label statuses taken as truth (repeatable; 'any' for all). EcoTaxa 'predicted' labels are "
                   "not ground truth.")
@click.option("--features", "features", default="auto", show_default=True, metavar="auto|none|NAME,...",
              help="Per-object features beside the image: auto (those >= 90 % of labelled images have), none, "
                   "or names/patterns, e.g. 'object_*,features.esd'.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop each fold after N optimizer steps (smoke tests).")
@click.option("--head", type=click.Choice(["finetune", "linear", "knn", "forest", "logreg", "blend", "auto"]),
              default="finetune", show_default=True,
              help="finetune: train the whole ViT; linear / knn: a logistic regression / cosine k-NN on the frozen "
                   "encoder's embeddings (+ features); forest / logreg: a random forest / a class-balanced logistic "
                   "regression (C by cross-validation) on the features alone (seconds each); blend: the mean of the "
                   "forest's and the logistic regression's probabilities, the latter on Yeo-Johnson-transformed "
                   "features (transform fitted on the fold's non-test images, labels unused); auto: finetune, "
                   "linear, knn and (with features) forest and blend, keeping per fold the best (budget protocol: the cheap head that cross-validates best over "
                   "every label, fine-tuning scored beside it; paper: the best on validation; every candidate's "
                   "score is in the results; a fold without validation labels keeps blend, else the linear "
                   "probe). The head kept is the fold's model file for predict.")
@click.option("--model", "model_name", metavar="NAME",
              help="timm ViT name for --init scratch or a timm checkpoint file, e.g. vit_large_patch16_224.")
@click.option("--img-size", type=click.IntRange(min=8), metavar="PX",
              help="Input size [default: the encoder's, else 224]; position embeddings are resampled to it.")
@click.option("--patch-size", type=click.IntRange(min=1), help="Override the --model's patch size.")
@click.option("--depth", type=click.IntRange(min=1), help="Override the --model's number of blocks.")
@click.option("--embed-dim", type=click.IntRange(min=8), help="Override the --model's width.")
@click.option("--num-heads", type=click.IntRange(min=1), help="Override the --model's attention heads.")
@tracker_options
@backend_options
@store_option
@json_option
@click.pass_context
def finetune(ctx: click.Context, init: str, out: Path, dataset: str | None, labels: str, protocol: str, folds: int,
             fold: int | None, epochs: int, batch_size: int | None, lr: float | None, layer_decay: float,
             weight_decay: float, warmup_epochs: float | None, drop_path: float, label_smoothing: float,
             target_precision: float, seed: int, workers: int, instruments: tuple[str, ...],
             label_status: tuple[str, ...], features: str, max_steps: int | None, head: str,
             model_name: str | None, img_size: int | None, patch_size: int | None, depth: int | None,
             embed_dim: int | None, num_heads: int | None, logger: str, logger_uri: str | None, backend_opts, store: Path, as_json: bool) -> None:
    """Fine-tune a ViT with few labels and test it by cross-validation.

    The encoder gets MAE's average-pool head input and a bottleneck head (Linear 512, LayerNorm,
    GELU, Linear), and is trained with AdamW, layer-wise lr decay, label smoothing and drop
    path, choosing each fold's epoch by validation macro-F1. The defaults are the paper's
    (Kareinen et al. 2025): 50 epochs, batch 128, lr 2e-3, weight decay 0.01, layer decay 0.75,
    5 warmup epochs, bf16 on GPU. With fewer labelled images the batch, lr and warmup are scaled
    to the data (given flags win); each fold's resolved recipe is printed and written to
    fold-K/recipe.json.
    """
    from plankton_cli.cli.dispatch import dispatch
    from plankton_cli.train.hub import is_hub_name
    from plankton_cli.train.protocol import parse_label_fraction

    try:
        parse_label_fraction(labels)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--labels") from exc
    if fold is not None and fold >= folds:
        raise click.BadParameter(f"fold {fold} does not exist with --folds {folds} (0..{folds - 1})",
                                 param_hint="--fold")
    if init != "scratch" and not is_hub_name(init) and not Path(init).exists():
        raise click.BadParameter(f"{init} does not exist: give an encoder export, a checkpoint file, "
                                 "hf-hub:ORG/NAME[@REV], timm:NAME or 'scratch'", param_hint="--init")
    if init == "scratch" and not model_name:
        raise click.UsageError("--init scratch needs --model NAME (and usually --img-size)")
    if dispatch(ctx, backend_opts.backend, backend_opts.resources(), out, wait=backend_opts.wait,
                dry_run=backend_opts.dry_run):
        return
    require_store(store)  # here, not before dispatch: a cluster job checks the store where it runs

    from plankton_cli.train.finetune import FinetuneConfig
    from plankton_cli.train.finetune import finetune as run_finetune

    config = FinetuneConfig(
        store=store, init=init, out=out, dataset=dataset, labels=labels, protocol=protocol, folds=folds, fold=fold,
        seed=seed,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
        warmup_epochs=warmup_epochs, drop_path=drop_path, label_smoothing=label_smoothing,
        target_precision=target_precision, workers=workers, instruments=list(instruments) or None,
        label_status=[] if "any" in label_status else list(label_status), max_steps=max_steps, head=head,
        features=features,
        model=model_name, img_size=img_size, patch_size=patch_size, depth=depth, embed_dim=embed_dim,
        num_heads=num_heads, accelerator=backend_opts.accelerator, devices=backend_opts.devices,
        num_nodes=backend_opts.num_nodes, logger=logger, logger_uri=logger_uri,
    )
    # Progress and Table-4 counts go to stderr, so that --json output stays parseable.
    echo = (lambda text: log.info("%s", text)) if as_json else (lambda text: click.echo(text, err=True))
    with usage_errors(FileNotFoundError):
        summary = run_finetune(config, echo=echo)
    if not summary:  # DDP ranks other than 0 report nothing
        return
    if as_json:
        emit_json({"out": str(out), "folds": summary["folds"], "mean_std": summary["mean_std"],
                   "per_instrument": summary["per_instrument"], "complete": summary["complete"],
                   "protocol": summary["protocol"], "labelled": summary["labelled"],
                   "baselines": summary["baselines"], "heads": summary["heads"],
                   "loses_to": summary["loses_to"]})
        return
    click.echo((out / "summary.md").read_text(encoding="utf-8"))
    click.echo(f"results in {out}/ (summary.md, fold-*/model.safetensors for `plankton predict`)")
