"""`plankton pretrain` as a library function: MAE pretraining of a timm ViT on a store dataset, with Lightning.

Recipe (He et al. 2022; Kareinen et al. 2025): mask 75 % of the patches, decoder 8 × 512 × 16 heads, MSE on
the per-patch normalised pixels of the masked patches (fp32); AdamW β = (0.9, 0.95), weight decay 0.05 (none
on norms, biases, position embeddings, class token); lr = 1.5e-4 × effective batch / 256 with linear warmup
and a per-step cosine decay; effective batch 4096 through gradient accumulation. See
``shared/reference/method-recipe.md`` §1 and §3. Batch, warmup, lr and decoder size are scaled to the data
and the encoder by ``recipe.resolve_recipe`` unless given (paper values at paper scale); the resolved recipe
is logged at start and written to ``recipe.json``.

The run directory holds ``config.json``, ``metrics.csv``, ``checkpoints/last.ckpt`` (``resume=True``
continues, also after a kill), ``reconstructions/epoch-NNNN.png`` (masked input | reconstruction | original
for a fixed batch, as the paper's Figure 3), the exported encoder (``encoder.safetensors`` + ``encoder.json``,
what finetune and predict load) and ``summary.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from plankton_cli.prepare.data import (
    EvalTransform,
    GpuAugment,
    ResizeTransform,
    StoreDataLoader,
    StoreDataset,
    TrainTransform,
    load_or_compute_stats,
)
from plankton_cli.train.models import MAE, create_vit, is_vit, load_vit_weights, param_groups_weight_decay, reconstruction_grid, save_encoder
from plankton_cli.core.errors import UsageError
from plankton_cli.train.hub import local_init
from plankton_cli.train.model_info import ModelInfo
from plankton_cli.train.models import warmup_cosine_scheduler
from plankton_cli.train.models.mae import titled_panel
from plankton_cli.prepare.pad_store import padding_rules
from plankton_cli.train.recipe import resolve_recipe
from plankton_cli.train.trackers import Tracker
from plankton_cli.store import Store
from plankton_cli.train.training import (
    is_rank_zero,
    last_checkpoint,
    make_trainer,
    resolve_accelerator,
    resolve_dataset,
    write_run_config,
    write_json_atomic,
    write_summary,
)

log = logging.getLogger("plankton.pretrain")

RECONSTRUCTION_IMAGES = 8  # rows of the reconstruction panel
IDS_DIR = "object_ids"  # record_ids: one file per rank and epoch, the object ids trained on


@dataclass
class PretrainConfig:
    """Every option of a pretraining run; ``config.json`` is this, resolved."""

    store: Path
    out: Path
    dataset: str | None = None  # None: padded if the store has it, else objects
    model: str = "vit_large_patch16_224"
    img_size: int = 224
    resize: int | None = None  # frame the random crop is drawn in; None: img_size × 256/224, as the paper
    # None: resolved by ``recipe.resolve_recipe`` (the paper's values at paper scale, scaled to the data below).
    epochs: int = 800
    warmup_epochs: float | None = None  # None: 5 % of all optimizer steps (the paper's 40 of 800 epochs)
    batch_size: int | None = None  # per device; None: the paper's 64, less when the data is small
    effective_batch: int | None = None  # None: the paper's 4096, at most an eighth of the images
    base_lr: float | None = None  # lr = base_lr × effective batch / 256; None: the paper's 1.5e-4
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    patch_size: int | None = None  # model overrides (tiny test models); None keeps the timm defaults
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    decoder_depth: int | None = None  # None: the paper's 8 × 512 × 16 under ViT-L, sized to a smaller encoder
    decoder_dim: int | None = None
    decoder_heads: int | None = None
    init: Path | str | None = None  # encoder to continue from: a local file or a hub name (plankton_cli.train.hub)
    workers: int = 8
    seed: int = 0
    max_steps: int | None = None  # optimizer steps; caps epochs (smoke tests)
    gpu_augment: bool = False
    compile: bool = False
    recon_every: int = 10  # epochs between reconstruction panels (0: only at the end)
    checkpoint_every: int | str = "10min"  # optimizer steps, or training time (core.cadence)
    log_every: int = 50
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str | None = None
    record_ids: bool = False  # debug: write the object ids each rank trained on to RUN/object_ids/
    logger: str = "csv"  # also tensorboard or mlflow (plankton_cli.train.trackers); RUN/metrics.csv is always written
    logger_uri: str | None = None  # MLflow's tracking URI
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_resize(self) -> int:
        return self.resize or int(round(self.img_size * 256 / 224))


class MAEPretrainModule(pl.LightningModule):
    """MAE pretraining step, optimiser and schedule; reconstructions of a fixed batch every few epochs.

    ``gpu_augment``: the batch arrives as uint8 (``ResizeTransform``) and is cropped, flipped and normalised on
    the device. ``fixed_images``: normalised images for the reconstruction panels (rank 0 draws them).
    """

    def __init__(
        self,
        mae: MAE,
        *,
        lr: float,
        total_steps: int,
        warmup_steps: int,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        gpu_augment: GpuAugment | None = None,
        compile: bool = False,
        fixed_images: torch.Tensor | None = None,
        mean: float = 0.5,
        std: float = 0.25,
        recon_every: int = 10,
        run_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.mae = mae
        self.lr, self.weight_decay, self.betas = lr, weight_decay, betas
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.gpu_augment = gpu_augment
        # Not an attribute torch sees as a submodule: the compiled wrapper would add `_orig_mod.` state keys.
        self._forward = torch.compile(mae) if compile else mae
        self.mean, self.std = mean, std
        self.recon_every, self.run_dir = recon_every, run_dir
        # A plain attribute, not a buffer: only rank 0 has it, and DDP broadcasts buffers from rank 0.
        self.fixed_images = fixed_images
        self.samples_trained = 0  # in this process, since it started

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_forward":  # keep the (possibly compiled) callable out of the module tree
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        if self.gpu_augment is not None:
            with torch.autocast(device_type=images.device.type, enabled=False):
                images = self.gpu_augment(images)
        loss = self._forward(images).loss
        self.samples_trained += images.shape[0]
        batch_size = images.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        groups = param_groups_weight_decay(self.mae, self.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)
        scheduler = warmup_cosine_scheduler(optimizer, self.total_steps, self.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch + 1
        if self.recon_every and epoch % self.recon_every == 0:
            self.save_reconstructions(epoch)

    def save_reconstructions(self, epoch: int) -> Path | None:
        """``RUN/reconstructions/epoch-NNNN.png`` for the fixed batch with a fixed mask (rank 0 only)."""
        if self.fixed_images is None or self.run_dir is None or not self.trainer.is_global_zero:
            return None
        was_training = self.mae.training
        self.mae.eval()
        # The same mask every time, without disturbing the training random stream.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)
            images = self.fixed_images.to(self.device)
            masked, recon, original = self.mae.reconstruct(images, mean=self.mean, std=self.std)
        self.mae.train(was_training)
        path = self.run_dir / "reconstructions" / f"epoch-{epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid = reconstruction_grid(masked, recon, original, rows=RECONSTRUCTION_IMAGES)
        titled_panel(grid, caption=f"epoch {epoch}").save(path)
        return path


class RecordObjectIds(Callback):
    """Debug aid for DDP tests: each rank appends the object ids of its batches to
    ``RUN/object_ids/epoch-E-rank-R.txt``."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / IDS_DIR

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"epoch-{trainer.current_epoch}-rank-{trainer.global_rank}.txt"
        with path.open("a") as f:
            f.write("".join(f"{i}\n" for i in batch["object_id"]))


def fixed_batch(dataset_dir: Path, img_size: int, resize: int, mean: float, std: float,
                n: int = RECONSTRUCTION_IMAGES) -> torch.Tensor:
    """The first ``n`` images of the dataset in stored order, eval-transformed: the reconstruction panel."""
    dataset = StoreDataset(dataset_dir, EvalTransform(resize, img_size, mean, std), shuffle=False, batch_size=n)
    images = []
    for sample in dataset:
        images.append(sample["image"])
        if len(images) == n:
            break
    return torch.stack(images)


def encoder_size(config: PretrainConfig) -> tuple[int, int]:
    """Width and depth of the encoder ``config`` names (built on the meta device: no memory, no time)."""
    if config.embed_dim is not None and config.depth is not None:
        return config.embed_dim, config.depth
    with torch.device("meta"):
        vit = create_vit(config.model, img_size=config.img_size, patch_size=config.patch_size, depth=config.depth,
                         embed_dim=config.embed_dim, num_heads=config.num_heads)
    return vit.embed_dim, len(vit.blocks)


_VIT_SIZES = ("huge", "large", "base", "small", "tiny")  # timm's ViT names, largest first


def cpu_time_warning(mae: torch.nn.Module, img_size: int, images: int, model: str) -> str | None:
    """A warning when pretraining on this CPU will take over an hour, from one measured forward and backward pass
    (two images; data loading and the optimizer come on top, so it is a lower bound), with a smaller model to try.

    The measurement runs under a forked RNG and leaves no gradients behind: the run is the same with or without it."""
    with torch.random.fork_rng(devices=[]):
        batch = torch.randn(2, 1, img_size, img_size)
        mae(batch[:1]).loss.backward()  # warm-up: the first pass allocates and picks kernels
        started = time.perf_counter()
        mae(batch).loss.backward()
        per_image = (time.perf_counter() - started) / len(batch)
    mae.zero_grad(set_to_none=True)
    seconds = per_image * images
    if seconds <= 3600:
        return None
    size = next((s for s in _VIT_SIZES if f"_{s}_" in f"_{model}_"), None)
    smaller = None
    if size is not None and size != _VIT_SIZES[-1]:
        import timm

        smaller = model.replace(size, _VIT_SIZES[_VIT_SIZES.index(size) + 1], 1)
        smaller = smaller if timm.is_model(smaller) else None
    advice = f"--model {smaller}, fewer --epochs" if smaller else "fewer --epochs"
    return (f"pretraining {model} on the CPU will take at least {seconds / 3600:,.1f} h ({images:,} images at "
            f"{per_image * 1000:,.0f} ms each, measured here): try {advice}, or a GPU (--backend slurm)")


def pretrain(config: PretrainConfig, *, resume: bool = False, enable_progress: bool | None = None,
             callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run (or resume) MAE pretraining as ``config`` says; returns the summary (also in ``summary.json``).

    ``callbacks``: extra Lightning callbacks for the trainer (e.g. encoder snapshots at chosen epochs: the
    module's ``mae.encoder_state_dict()``); they are not part of the run's settings."""
    if not is_vit(config.model):
        raise UsageError(f"{config.model} is not a timm ViT: MAE pretraining takes ViTs only "
                         "(a timm CNN can be a `plankton distill --student`)")
    started = time.monotonic()
    tracker = Tracker.of(config, "pretrain")
    store = Store(config.store)
    dataset = resolve_dataset(store, config.dataset)
    dataset_dir = store.root / dataset
    run_dir = Path(config.out).absolute()
    checkpoint = last_checkpoint(run_dir)
    if checkpoint.exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    ckpt_path = checkpoint if resume and checkpoint.exists() else None
    if resume and ckpt_path is None:
        log.warning("no checkpoint in %s yet: starting from the beginning", run_dir)

    accelerator = resolve_accelerator(config.accelerator)
    world_size = config.devices * config.num_nodes
    resize = config.resolved_resize()
    stats = load_or_compute_stats(dataset_dir, resize=resize)
    mean, std = float(stats["mean"]), float(stats["std"])

    data = StoreDataset(
        dataset_dir,
        ResizeTransform(resize) if config.gpu_augment else TrainTransform(resize, config.img_size, mean, std),
        shuffle=True,
        seed=config.seed,
        world_size=world_size,  # until torch.distributed says otherwise, for the step count below
    )
    embed_dim, depth = encoder_size(config)
    recipe = resolve_recipe(
        "pretrain", len(data) * world_size, config.epochs, world_size=world_size, batch_size=config.batch_size,
        effective_batch=config.effective_batch, base_lr=config.base_lr, warmup_epochs=config.warmup_epochs,
        max_steps=config.max_steps, embed_dim=embed_dim, depth=depth, decoder_depth=config.decoder_depth,
        decoder_dim=config.decoder_dim, decoder_heads=config.decoder_heads,
    )
    loader = StoreDataLoader(
        data,
        batch_size=recipe.batch_size,
        num_workers=config.workers,
        pin_memory=accelerator == "gpu",
        persistent_workers=config.workers > 0,
        prefetch_factor=4 if config.workers > 0 else None,
    )

    pl.seed_everything(config.seed, workers=True, verbose=False)
    mae = MAE(
        config.model, img_size=config.img_size, in_chans=1, patch_size=config.patch_size,
        mask_ratio=config.mask_ratio, **recipe.decoder,  # type: ignore[arg-type]
        depth=config.depth, embed_dim=config.embed_dim,
        num_heads=config.num_heads,
    )
    if config.init is not None and ckpt_path is None:
        report = load_vit_weights(mae.backbone.vit, local_init(config.init))
        log.info("encoder initialised from %s%s", config.init,
                 "".join(f"; {k}: {v}" for k, v in report.adapted.items()))
        if report.unexpected:
            log.info("not used from %s: %s", config.init, ", ".join(report.unexpected[:8]))

    fixed = fixed_batch(dataset_dir, config.img_size, resize, mean, std) if is_rank_zero() else None
    module = MAEPretrainModule(
        mae, lr=recipe.lr, total_steps=recipe.total_steps, warmup_steps=recipe.warmup_steps, weight_decay=config.weight_decay,
        gpu_augment=GpuAugment(config.img_size, mean, std) if config.gpu_augment else None,
        compile=config.compile, fixed_images=fixed, mean=mean, std=std, recon_every=config.recon_every,
        run_dir=run_dir,
    )
    trainer = make_trainer(
        run_dir,
        max_epochs=config.epochs,
        max_steps=config.max_steps,
        devices=config.devices,
        num_nodes=config.num_nodes,
        accelerator=accelerator,
        precision=config.precision,
        accumulate_grad_batches=recipe.accumulate,
        log_every_n_steps=config.log_every,
        steps_per_epoch=recipe.steps_per_epoch,
        checkpoint_every=config.checkpoint_every,
        callbacks=[*([RecordObjectIds(run_dir)] if config.record_ids else []), *callbacks],
        enable_progress=enable_progress,
        tracker_logger=tracker.logger(run_dir),
        num_sanity_val_steps=0,
    )
    resolved = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "store": str(store.root), "out": str(run_dir), "dataset": dataset, "resize": resize,
        "accelerator": accelerator, "precision": str(trainer.precision), "world_size": world_size,
        "batch_size": recipe.batch_size, "accumulate": recipe.accumulate, "effective_batch": recipe.effective_batch,
        "lr": recipe.lr, **recipe.decoder, "mean": mean, "std": std, "steps_per_epoch": recipe.steps_per_epoch,
        "total_steps": recipe.total_steps, "warmup_steps": recipe.warmup_steps,
        "images_per_epoch": len(data) * world_size, "recipe": recipe.to_dict(),
    }
    if is_rank_zero():
        write_run_config(run_dir, resolved)
        write_json_atomic(run_dir / "recipe.json", recipe.to_dict())
        tracker.log_params(run_dir, {"config": resolved})
        log.info("pretraining %s on %s/%s: %s", config.model, store.root, dataset, recipe.describe())
        images = sum(group.n_rows for group in data.row_groups)
        if images != len(data) * world_size:
            # Ranks take whole row groups and must take as many samples each: the short ones repeat some.
            log.info("%d images; an epoch over %d processes trains on %d samples, %d of them repeated so that every "
                     "process gets as many", images, world_size, len(data) * world_size,
                     len(data) * world_size - images)
        for warning in recipe.warnings:
            log.warning("%s", warning)
        if accelerator == "cpu":
            slow = cpu_time_warning(mae, config.img_size, recipe.total_steps * recipe.effective_batch, config.model)
            if slow:
                log.warning("%s", slow)

    fit_started = time.monotonic()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    fit_seconds = time.monotonic() - fit_started
    if not trainer.is_global_zero:
        return {}

    encoder = save_encoder(run_dir, mae.encoder_state_dict(), ModelInfo(
        **mae.encoder_arch, mean=[mean], std=[std], resize=resize, crop=config.img_size,
        pad_settings=padding_rules(dataset_dir),
        source=f"MAE pretraining, {trainer.current_epoch} epochs on {store.root}/{dataset}",
        extra={
            "source_store": str(store.root), "source_dataset": dataset, "source_run": str(run_dir),
            "recipe": "mae", "mask_ratio": config.mask_ratio, "epochs": trainer.current_epoch,
            "global_step": trainer.global_step, "init": str(config.init) if config.init else None,
        },
    ))
    module.save_reconstructions(trainer.current_epoch)
    loss = trainer.callback_metrics.get("train/loss_epoch", trainer.callback_metrics.get("train/loss_step"))
    images = module.samples_trained * world_size
    summary = {
        "run_dir": str(run_dir), "store": str(store.root), "dataset": dataset, "model": config.model,
        "encoder": str(encoder), "epochs": trainer.current_epoch, "global_step": trainer.global_step,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "final_loss": float(loss) if loss is not None else None,
        "images_trained": images, "fit_seconds": round(fit_seconds, 2),
        "images_per_second": round(images / fit_seconds, 2) if fit_seconds > 0 else None,
        "effective_batch": recipe.effective_batch, "lr": recipe.lr, "world_size": world_size,
        "recipe_warnings": recipe.warnings,
        "elapsed_seconds": round(time.monotonic() - started, 2),
    }
    write_summary(run_dir, summary)
    tracker.log_results(run_dir, {"summary": summary}, step=trainer.global_step)
    return summary


__all__ = ["MAEPretrainModule", "PretrainConfig", "RecordObjectIds", "fixed_batch",
           "pretrain"]
