"""`plankton pretrain`."""

from __future__ import annotations

from pathlib import Path

import click

from plankton_cli.cli.dispatch import backend_options, dispatch
from plankton_cli.cli.options import usage_errors, tracker_options, checkpoint_every_option, InitSource, hub_architecture, require_store, Command, WORKERS_DEFAULT_TEXT, default_workers, json_option, store_option
from plankton_cli.cli.output import emit_json


@click.command(cls=Command, epilog="""\b
Examples:
  # track the run in MLflow (a local ./mlruns folder, or a server with --logger-uri)
  plankton pretrain --out runs/mae-l --logger mlflow
  # the paper's recipe (ViT-L/16, 800 epochs, effective batch 4096) on one GPU
  plankton pretrain --out runs/mae-l --batch-size 256
  # a general plankton encoder, further pretrained on this station's images
  plankton pretrain --init general-encoder/encoder.safetensors --epochs 100 --out runs/station
  # ImageNet's MAE ViT-B/16 from the Hugging Face Hub (cached in $HF_HOME), further pretrained here
  plankton pretrain --init timm:vit_base_patch16_224.mae --epochs 100 --out runs/station-b
  # continue after a crash or a kill
  plankton pretrain --out runs/mae-l --resume
  # 2 nodes x 4 GPUs on SLURM, 24 h per job (requeued and resumed at the limit)
  plankton pretrain --out runs/mae-l --backend slurm --nodes 2 --gpus-per-node 4 \\
      --partition gpu --time 1-00:00:00 --cpus-per-task 12 --mem 256G
  # a tiny smoke test on CPU
  plankton pretrain --model vit_tiny_patch16_224 --img-size 32 --patch-size 8 --depth 2 \\
      --embed-dim 64 --num-heads 2 --decoder-depth 1 --decoder-dim 32 --decoder-heads 2 \\
      --batch-size 8 --effective-batch 8 --max-steps 5 --workers 0 --out /tmp/smoke

Writes into --out: config.json, metrics.csv, checkpoints/last.ckpt, reconstructions/*.png,
encoder.safetensors + encoder.json (what finetune and predict load) and summary.json.

Exit codes: 0 done (or submitted), 1 training failed, 2 usage error (e.g. --out holds a run
and --resume was not given); with --wait, the job's exit status.""")
@click.option("--dataset", help="Dataset of the store [default: padded when it exists, else objects].")
@click.option("--model", default="vit_large_patch16_224", show_default=True,
              help="timm ViT name (vit_tiny_patch16_224 … vit_large_patch16_224); never downloaded.")
@click.option("--img-size", type=click.IntRange(min=8), default=224, show_default=True, help="Input side in pixels.")
@click.option("--resize", type=click.IntRange(min=8), metavar="PX",
              help="Frame the random crop is drawn in [default: img-size × 256/224].")
@click.option("--epochs", type=click.IntRange(min=1), default=800, show_default=True)
@click.option("--warmup-epochs", type=click.FloatRange(min=0),
              help="Linear warmup [default: 5 % of all optimizer steps, the paper's 40 of 800 epochs].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Images per device and step [default: the paper's 64, less when the effective batch is smaller].")
@click.option("--effective-batch", type=click.IntRange(min=1),
              help="Images per optimizer step, reached by gradient accumulation; lr = base-lr × this / 256 "
                   "[default: the paper's 4096, at most an eighth of the images: ≥ 8 steps per epoch].")
@click.option("--base-lr", type=click.FloatRange(min=0, min_open=True), help="lr = base-lr × effective batch / 256 [default: the paper's 1.5e-4].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.05, show_default=True)
@click.option("--mask-ratio", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.75,
              show_default=True)
@click.option("--init", type=InitSource(), metavar="FILE|hf-hub:ORG/NAME[@REV]|timm:NAME",
              help="Start the encoder from a local file (timm/MAE .pth or .safetensors, an exported encoder) or "
                   "from the Hugging Face Hub, through its cache (HF_HOME; HF_HUB_OFFLINE=1: cache only); a hub "
                   "encoder brings its architecture unless --model is given. RGB kernels are summed, position "
                   "embeddings resampled.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--workers", type=click.IntRange(min=0), default=default_workers(), show_default=WORKERS_DEFAULT_TEXT,
              help="DataLoader worker processes per device.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps (smoke tests).")
@click.option("--gpu-augment", is_flag=True, help="Crop, flip and normalise on the GPU; workers only decode.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the MAE.")
@click.option("--recon-every", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="Save reconstructions of a fixed batch every N epochs (0: only at the end).")
@checkpoint_every_option("pretraining")
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True, metavar="STEPS")
@click.option("--patch-size", type=click.IntRange(min=1), help="Override the model's patch size.")
@click.option("--depth", type=click.IntRange(min=1), help="Override the encoder's number of blocks.")
@click.option("--embed-dim", type=click.IntRange(min=1), help="Override the encoder's width.")
@click.option("--num-heads", type=click.IntRange(min=1), help="Override the encoder's attention heads.")
@click.option("--decoder-depth", type=click.IntRange(min=1),
              help="MAE decoder blocks [default: the paper's 8 under a ViT-L-wide encoder, else a third of the "
                   "encoder's depth].")
@click.option("--decoder-dim", type=click.IntRange(min=1),
              help="MAE decoder width [default: the paper's 512 under ViT-L, else half the encoder's width].")
@click.option("--decoder-heads", type=click.IntRange(min=1),
              help="MAE decoder attention heads [default: the paper's 16 under ViT-L, else width / 32].")
@click.option("--record-ids", is_flag=True, hidden=True, help="Debug: write each rank's object ids to RUN/object_ids/.")
@tracker_options
@backend_options
@store_option
@json_option
@click.pass_context
def pretrain(ctx: click.Context, dataset: str | None, model: str, img_size: int, resize: int | None, epochs: int,
             warmup_epochs: float | None, out: Path, batch_size: int | None, effective_batch: int | None,
             base_lr: float | None,
             weight_decay: float, mask_ratio: float, init: Path | str | None, resume: bool, workers: int, seed: int,
             max_steps: int | None, gpu_augment: bool, compile_model: bool, recon_every: int, checkpoint_every: int | str,
             log_every: int, patch_size: int | None, depth: int | None, embed_dim: int | None, num_heads: int | None,
             decoder_depth: int | None, decoder_dim: int | None, decoder_heads: int | None, record_ids: bool, logger: str, logger_uri: str | None, backend_opts, store: Path,
             as_json: bool) -> None:
    """Pretrain a ViT encoder as a masked autoencoder on the store's images.

    MAE as in the paper: 75 % of the patches are hidden and the model learns to paint them
    back; no labels are needed. The encoder it exports is what `plankton finetune` starts from.
    Runs here (one or more devices, DDP) or on a cluster with --backend slurm.

    The recipe is the paper's at the paper's scale; on less data the effective batch, warmup,
    lr and decoder size are scaled to the images and the encoder (given flags always win).
    The resolved recipe is printed at start and written to OUT/recipe.json.
    """
    if dispatch(ctx, backend_opts.backend, backend_opts.resources(), out, wait=backend_opts.wait,
                dry_run=backend_opts.dry_run, record_dir=store):
        return
    require_store(store)  # here, not before dispatch: a cluster job checks the store where it runs
    if init is not None and (hub := hub_architecture(ctx, init, "model")):
        model, shape = hub  # given shape options still win
        patch_size, depth = patch_size or shape.get("patch_size"), depth or shape.get("depth")
        embed_dim, num_heads = embed_dim or shape.get("embed_dim"), num_heads or shape.get("num_heads")

    from plankton_cli.train.pretrain import PretrainConfig
    from plankton_cli.train.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        store=store, out=out, dataset=dataset, model=model, img_size=img_size, resize=resize, epochs=epochs,
        warmup_epochs=warmup_epochs, batch_size=batch_size, effective_batch=effective_batch, base_lr=base_lr,
        weight_decay=weight_decay, mask_ratio=mask_ratio, patch_size=patch_size, depth=depth, embed_dim=embed_dim,
        num_heads=num_heads, decoder_depth=decoder_depth, decoder_dim=decoder_dim, decoder_heads=decoder_heads,
        init=init, workers=workers, seed=seed, max_steps=max_steps, gpu_augment=gpu_augment,
        compile=compile_model, recon_every=recon_every, checkpoint_every=checkpoint_every, log_every=log_every,
        devices=backend_opts.devices, num_nodes=backend_opts.num_nodes, accelerator=backend_opts.accelerator,
        record_ids=record_ids, logger=logger, logger_uri=logger_uri,
    )
    quiet = bool(ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    with usage_errors(FileExistsError):
        summary = run_pretrain(config, resume=resume, enable_progress=False if quiet else None)
    if not summary:  # a DDP rank other than 0
        return
    if as_json:
        emit_json(summary)
    else:
        loss = summary["final_loss"]
        click.echo(f"pretrained {summary['epochs']} epochs, {summary['global_step']} steps"
                   f"{f', loss {loss:.4f}' if loss is not None else ''}, "
                   f"{summary['images_per_second'] or 0:,.0f} images/s; encoder: {summary['encoder']}")
