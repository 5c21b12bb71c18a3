"""The training recipe, resolved for the data at hand: the paper's values at the paper's scale, scaled below it.

Kareinen et al. 2025 pretrain on 443k images at effective batch 4096 for 800 epochs (40 warmup) and fine-tune
at batch 128 for 50 epochs (5 warmup). Applied verbatim to a few hundred images that is one optimizer step per
epoch and a warmup longer than the run. So, unless a flag says otherwise:

- the effective batch is at most an eighth of the images (at least 8 optimizer steps per epoch), never above
  the paper's; the per-device batch fits inside it and gradient accumulation makes up the rest;
- the lr follows the real effective batch (pretrain: base lr × batch / 256, MAE's linear rule; fine-tune: the
  paper's 2e-3 at batch 128 × √(batch / 128), the square-root rule for Adam (Malladi et al. 2022): linear
  scaling would give a 6-image batch 1e-4, too little for a few hundred steps);
- warmup is a fraction of all optimizer steps, the paper's own ratio (pretrain 40/800 = 5 %, fine-tune 5/50 =
  10 %), so it scales with epochs and batch;
- the MAE decoder is sized to the encoder: the paper's 8 blocks × 512 belong to ViT-L (24 × 1024); a narrow
  encoder gets a decoder half its width and a third of its depth (a 96-wide encoder under the 8 × 512 decoder
  trains 12× slower for nothing);
- a run too short to learn anything gets a warning.

Explicit flags always win. ``resolve_recipe`` is pure (no torch, no I/O): the commands print its result at start
and write it to the run folder as ``recipe.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Stage = Literal["pretrain", "finetune"]

# The paper's recipe (method-recipe.md §1): what a run at paper scale resolves to.
PAPER = {
    "pretrain": {"batch_size": 64, "effective_batch": 4096, "base_lr": 1.5e-4, "lr_batch": 256, "lr_power": 1.0,
                 "warmup_fraction": 40 / 800, "min_steps": 1000},
    "finetune": {"batch_size": 128, "effective_batch": 128, "base_lr": 2e-3, "lr_batch": 128, "lr_power": 0.5,
                 "warmup_fraction": 5 / 50, "min_steps": 100},
}
PAPER_DECODER = {"decoder_depth": 8, "decoder_dim": 512, "decoder_heads": 16}
PAPER_ENCODER_WIDTH = 1024  # ViT-L: the encoder the paper's decoder was designed for
MIN_STEPS_PER_EPOCH = 8
DECODER_HEAD_DIM = 32  # 512 / 16, as the paper's decoder


@dataclass(frozen=True)
class Recipe:
    """A resolved recipe. ``chosen`` says, per setting, whether a flag gave it or it was scaled to the data."""

    stage: str
    n_images: int  # training images per epoch, all devices together
    epochs: int
    world_size: int
    batch_size: int  # per device and step
    accumulate: int
    effective_batch: int  # batch_size × world_size × accumulate: images per optimizer step
    lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    decoder: dict[str, int] | None = None  # pretrain only
    chosen: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the log: what the run will do and why."""
        decoder = ""
        if self.decoder:
            d = self.decoder
            decoder = f"; decoder {d['decoder_depth']} × {d['decoder_dim']} ({d['decoder_heads']} heads)"
        scaled = [k for k, v in self.chosen.items() if v == "scaled"]
        return (f"{self.stage} recipe for {self.n_images} images × {self.epochs} epochs: effective batch "
                f"{self.effective_batch} ({self.batch_size} × {self.world_size} device(s) × {self.accumulate}), "
                f"lr {self.lr:.3g}, {self.steps_per_epoch} steps/epoch, {self.total_steps} steps, "
                f"{self.warmup_steps} warmup{decoder}"
                + (f" [scaled to the data: {', '.join(scaled)}]" if scaled else " [paper values or flags]"))


def resolve_recipe(
    stage: Stage,
    n_images: int,
    epochs: int,
    *,
    world_size: int = 1,
    batch_size: int | None = None,
    effective_batch: int | None = None,
    lr: float | None = None,
    base_lr: float | None = None,
    warmup_epochs: float | None = None,
    max_steps: int | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    decoder_depth: int | None = None,
    decoder_dim: int | None = None,
    decoder_heads: int | None = None,
) -> Recipe:
    """The recipe for ``n_images`` training images (all devices) and ``epochs``; a None argument is "not given".

    ``lr`` is absolute (wins over everything); else ``base_lr`` (default: the paper's) × (effective batch /
    the paper's reference batch)^p: pretrain p = 1 per 256 images, fine-tune p = ½ per 128. ``effective_batch`` is a fine-tune option too:
    without it, fine-tuning takes no gradient accumulation. ``embed_dim``/``depth`` (the encoder's) size the
    MAE decoder when the decoder flags are not given.
    """
    if n_images < 1 or epochs < 1 or world_size < 1:
        raise ValueError(f"a recipe needs images, epochs and devices (got {n_images}, {epochs}, {world_size})")
    paper = PAPER[stage]
    chosen: dict[str, str] = {}
    warnings: list[str] = []

    # Images per optimizer step: the paper's, capped so that an epoch has at least MIN_STEPS_PER_EPOCH steps.
    target = int(paper["effective_batch"])
    if effective_batch is not None:
        target, chosen["effective_batch"] = effective_batch, "flag"
    elif batch_size is not None and stage == "finetune":
        target, chosen["effective_batch"] = batch_size * world_size, "flag"
    else:
        cap = max(world_size, n_images // MIN_STEPS_PER_EPOCH)
        chosen["effective_batch"] = "scaled" if cap < target else "paper"
        target = min(target, cap)
    if batch_size is not None:
        chosen["batch_size"] = "flag"
    else:
        batch_size = max(1, min(int(paper["batch_size"]), target // world_size))
        chosen["batch_size"] = "scaled" if batch_size < paper["batch_size"] else "paper"
    per_step = batch_size * world_size
    accumulate = max(1, target // per_step)  # never above the target: it may be the n/8 cap
    real_batch = per_step * accumulate

    if lr is not None:
        chosen["lr"] = "flag"
    else:
        base = paper["base_lr"] if base_lr is None else base_lr
        lr = base * (real_batch / paper["lr_batch"]) ** paper["lr_power"]
        scaled = real_batch != paper["effective_batch"]
        chosen["lr"] = "scaled" if scaled else ("flag" if base_lr is not None else "paper")

    per_rank = math.ceil(n_images / world_size)
    steps_per_epoch = math.ceil(math.ceil(per_rank / batch_size) / accumulate)
    total_steps = epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    if warmup_epochs is not None:
        warmup_steps, chosen["warmup"] = round(warmup_epochs * steps_per_epoch), "flag"
    else:
        # At least one step: the schedule then starts from lr 0, as MAE's does.
        warmup_steps, chosen["warmup"] = max(1, round(paper["warmup_fraction"] * total_steps)), "fraction"
    warmup_steps = min(warmup_steps, total_steps)

    decoder = None
    if stage == "pretrain":
        decoder = _decoder(embed_dim, depth, decoder_depth, decoder_dim, decoder_heads, chosen)

    if effective_batch is not None and real_batch != effective_batch:
        warnings.append(f"effective batch {effective_batch} is not a multiple of {batch_size} × {world_size}: "
                        f"using {real_batch}")
    if steps_per_epoch < MIN_STEPS_PER_EPOCH:
        warnings.append(f"only {steps_per_epoch} optimizer step(s) per epoch ({n_images} images at effective batch "
                        f"{real_batch}): the model barely moves per epoch; a smaller --effective-batch/--batch-size "
                        "gives more steps")
    if total_steps < paper["min_steps"]:
        warnings.append(f"{total_steps} optimizer steps in all is too short to learn much ({stage} usually needs "
                        f"≥ {paper['min_steps']}): give more --epochs"
                        + (" or more images" if stage == "pretrain" else ""))
    if warmup_steps >= total_steps and total_steps > 1:
        warnings.append(f"warmup ({warmup_steps} steps) lasts the whole run ({total_steps} steps): the lr never "
                        "decays; lower --warmup-epochs")
    return Recipe(
        stage=stage, n_images=n_images, epochs=epochs, world_size=world_size, batch_size=batch_size,
        accumulate=accumulate, effective_batch=real_batch, lr=lr, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, warmup_steps=warmup_steps, decoder=decoder, chosen=chosen, warnings=warnings,
    )


def _decoder(embed_dim: int | None, depth: int | None, decoder_depth: int | None, decoder_dim: int | None,
             decoder_heads: int | None, chosen: dict[str, str]) -> dict[str, int]:
    """The MAE decoder: flags win; else the paper's for an encoder as wide as ViT-L, else scaled to the encoder
    (half its width, a third of its depth, 32-wide heads)."""
    if embed_dim is None or embed_dim >= PAPER_ENCODER_WIDTH:
        sized = dict(PAPER_DECODER)
        how = "paper"
    else:
        width = max(16, embed_dim // 2)
        heads = max(1, width // DECODER_HEAD_DIM)
        sized = {"decoder_depth": max(1, round((depth or 24) / 3)), "decoder_dim": width // heads * heads,
                 "decoder_heads": heads}
        how = "scaled"
    given = {"decoder_depth": decoder_depth, "decoder_dim": decoder_dim, "decoder_heads": decoder_heads}
    for key, value in given.items():
        if value is not None:
            sized[key] = value
    if decoder_dim is not None and decoder_heads is None:  # heads must divide the width
        sized["decoder_heads"] = math.gcd(decoder_dim, sized["decoder_heads"])
    chosen["decoder"] = "flag" if all(v is not None for v in given.values()) else how
    if sized["decoder_dim"] % sized["decoder_heads"]:
        raise ValueError(f"--decoder-dim {sized['decoder_dim']} is not divisible by --decoder-heads "
                         f"{sized['decoder_heads']}")
    return sized
