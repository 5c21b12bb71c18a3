"""`plankton distill`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from plankton_cli.cli.dispatch import backend_options
from plankton_cli.cli.options import usage_errors, tracker_options, checkpoint_every_option, InitSource, hub_architecture, require_store, Command, WORKERS_DEFAULT_TEXT, default_workers, json_option, store_option
from plankton_cli.cli.output import emit_json

log = logging.getLogger("plankton.distill")

# Spelled out here (not imported from plankton_cli.train.distill) so that --help does not import torch.
DEFAULT_STUDENT = "mobilenetv3_small_100"
DEFAULT_IMG_SIZE = 112


@click.command(cls=Command, epilog="""\b
Examples:
  # the run in TensorBoard too: tensorboard --logdir runs/
  plankton distill --teacher runs/ft/fold-0/model.safetensors --out runs/student --logger tensorboard
  plankton distill --teacher runs/ft-5/fold-0/model.safetensors --out runs/student
  plankton distill --teacher runs/ft-5/fold-0 --student vit_tiny_patch16_224 --img-size 112 --out runs/vit-ti
  # a ViT-Ti student starting from timm's ImageNet-21k weights (Hugging Face Hub, cached in $HF_HOME)
  plankton distill --teacher runs/ft-5/fold-0 --init timm:vit_tiny_patch16_224.augreg_in21k --out runs/vit-ti-in21k
  # on the lab's GPU cluster; a killed or requeued job resumes from its last checkpoint
  plankton distill --teacher runs/ft-5/fold-0 --out runs/student --backend slurm --partition gpu --time 2:00:00
  # then, on the station
  plankton predict --model runs/student/model.safetensors --threads 2 --to ifcb-h5 --out classified/

\b
The student learns the teacher's softened probabilities (--temperature) on every image of the
store, and on images with a validated label the label too (--alpha). The teacher's answers are
computed once and cached (OUT/teacher_logits.parquet). Images the teacher's fold held out (its
split.json: validation and test), or else a --held-out fraction, are never trained on; the
student's top-1 agreement with the teacher on them is written to model.json (teacher_agreement,
with teacher_hash), and its test scores beside the teacher's to summary.json. A teacher
fine-tuned with --features reads its per-object features from the store (run `plankton
features` first when it uses features.*); the student gets the same ones, scaled the same.

\b
Outputs in OUT: model.safetensors + model.json (an ordinary model file for predict, evaluate and
every writer), config.json, teacher_logits.parquet, metrics.csv, summary.json. Re-running the
same command resumes a killed run; a finished run is not trained again.

Exit codes: 0 done, 1 training failed, 2 usage error (bad --teacher, other settings in --out...).""")
@click.option("--teacher", required=True, type=click.Path(exists=True, path_type=Path), metavar="MODEL",
              help="A fine-tuned model: RUN2/fold-k/model.safetensors or its folder.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory of the student.")
@click.option("--student", default=DEFAULT_STUDENT, show_default=True, metavar="NAME",
              help="timm CNN or ViT of the student, e.g. vit_tiny_patch16_224 (trained from scratch).")
@click.option("--init", type=InitSource(), metavar="FILE|hf-hub:ORG/NAME[@REV]|timm:NAME",
              help="Start a ViT student's encoder from these weights instead of from scratch: a local encoder or "
                   "checkpoint, or a Hugging Face Hub encoder (through its cache, HF_HOME; HF_HUB_OFFLINE=1: cache "
                   "only), which brings its architecture unless --student is given.")
@click.option("--img-size", type=click.IntRange(min=8), default=DEFAULT_IMG_SIZE, show_default=True, metavar="PX",
              help="The student's input size (the teacher keeps its own).")
@click.option("--dataset", help="Dataset of the store [default: the teacher's, else padded, else objects].")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N optimizer steps (smoke tests).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per step and device.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (AdamW), absolute.")
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--drop-path", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Softening of both models' logits in the distillation loss.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the label loss on labelled images (the teacher's gets 1 - alpha).")
@click.option("--held-out", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Fraction of images held out when the teacher has no split.json beside it.")
@click.option("--target-precision", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Per-class thresholds in model.json reach this precision on held-out labelled images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=default_workers(), show_default=WORKERS_DEFAULT_TEXT,
              help="DataLoader worker processes per device.")
@click.option("--instrument", "instruments", multiple=True, help="Use only images of this instrument (repeatable).")
@click.option("--label-status", "label_status", multiple=True, default=["validated"], show_default=True,
              help="Label statuses taken as truth (repeatable; 'any' for all).")
@checkpoint_every_option("distillation")
@click.option("--patch-size", type=click.IntRange(min=1), help="Override the ViT student's patch size.")
@click.option("--depth", type=click.IntRange(min=1), help="Override the ViT student's number of blocks.")
@click.option("--embed-dim", type=click.IntRange(min=8), help="Override the ViT student's width.")
@click.option("--num-heads", type=click.IntRange(min=1), help="Override the ViT student's attention heads.")
@tracker_options
@backend_options
@store_option
@json_option
@click.pass_context
def distill(ctx: click.Context, teacher: Path, out: Path, student: str, init: Path | str | None, img_size: int, dataset: str | None,
            epochs: int, max_steps: int | None, batch_size: int, lr: float, weight_decay: float, warmup_epochs: float,
            drop_path: float, temperature: float, alpha: float, held_out: float, target_precision: float, seed: int,
            workers: int, instruments: tuple[str, ...], label_status: tuple[str, ...], checkpoint_every: int | str,
            patch_size: int | None, depth: int | None, embed_dim: int | None, num_heads: int | None, logger: str, logger_uri: str | None, backend_opts,
            store: Path, as_json: bool) -> None:
    """Distil a fine-tuned teacher into a small student for fast CPU prediction."""
    from plankton_cli.cli.dispatch import dispatch

    if dispatch(ctx, backend_opts.backend, backend_opts.resources(), out, wait=backend_opts.wait,
                dry_run=backend_opts.dry_run):
        return
    require_store(store)  # here, not before dispatch: a cluster job checks the store where it runs
    if init is not None and (hub := hub_architecture(ctx, init, "student")):
        student, shape = hub  # given shape options still win
        patch_size, depth = patch_size or shape.get("patch_size"), depth or shape.get("depth")
        embed_dim, num_heads = embed_dim or shape.get("embed_dim"), num_heads or shape.get("num_heads")

    from plankton_cli.train.distill import DistillConfig
    from plankton_cli.train.distill import distill as run_distill

    config = DistillConfig(
        store=store, teacher=teacher, out=out, student=student, init=None if init is None else str(init),
        img_size=img_size, dataset=dataset, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        drop_path=drop_path, temperature=temperature, alpha=alpha, held_out=held_out,
        target_precision=target_precision, seed=seed, workers=workers, instruments=list(instruments) or None,
        label_status=[] if "any" in label_status else list(label_status), checkpoint_every=checkpoint_every,
        patch_size=patch_size, depth=depth, embed_dim=embed_dim, num_heads=num_heads,
        accelerator=backend_opts.accelerator, devices=backend_opts.devices, num_nodes=backend_opts.num_nodes,
        logger=logger, logger_uri=logger_uri,
    )
    echo = (lambda text: log.info("%s", text)) if as_json else (lambda text: click.echo(text, err=True))
    with usage_errors(FileNotFoundError):
        summary = run_distill(config, echo=echo)
    if not summary:  # DDP ranks other than 0 report nothing
        return
    if as_json:
        emit_json(summary)
        return
    agreement = summary.get("teacher_agreement")
    click.echo(f"student {summary['student']} at {summary['img_size']} px: {summary['model']}")
    if agreement is not None:
        click.echo(f"top-1 agreement with the teacher on {summary['n_held_out']} held-out images: {agreement:.3f}")
    for who in ("teacher", "student"):
        if f"{who}_test" in summary:
            scores = summary[f"{who}_test"]
            click.echo(f"{who:8s} test: accuracy {scores['accuracy']:.3f}, balanced accuracy "
                       f"{scores['balanced_accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
