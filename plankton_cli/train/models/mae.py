"""Masked autoencoder (He et al. 2022) on a timm ViT, built from lightly 1.6 modules.

The encoder is any timm ``VisionTransformer`` wrapped in lightly's
``MaskedVisionTransformerTIMM``; the decoder is lightly's
``MaskedVisionTransformerDecoderTIMM`` (the non-deprecated one) with our own
``decoder_embed`` and ``prediction_head``, as in lightly's fixed MAE examples.

What differs from lightly's example, and why:

- the prediction head outputs ``patch² · in_chans`` values (lightly hard-codes 3 channels);
- the target is the per-patch normalised pixels (``--norm_pix_loss`` in MAE; the paper's
  loss), computed in fp32 outside autocast: padded background patches have a variance near
  zero and the 1e-6 epsilon makes the target very sensitive to rounding;
- the encoder's own mask token is frozen: MAE never uses it, and an unused trainable
  parameter breaks DDP without ``find_unused_parameters``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


# Parameters that are embeddings rather than weights: no weight decay on them (MAE, timm).
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "reg_token", "dist_token", "mask_token"})


def create_vit(
    architecture: str,
    *,
    img_size: int = 224,
    in_chans: int = 1,
    patch_size: int | None = None,
    **kwargs: Any,
) -> VisionTransformer:
    """Build a randomly initialised timm ViT by name; never downloads weights.

    ``patch_size`` and extra ``kwargs`` (``depth``, ``embed_dim``, ``num_heads``,
    ``num_classes``, ``global_pool``, ``drop_path_rate`` …) override the named model's
    defaults; ``None`` values are dropped so callers can pass optional overrides through.
    Pretrained weights are loaded from local files with ``checkpoints.load_vit_weights``.
    """
    if kwargs.pop("pretrained", False):
        raise ValueError(
            "pretrained=True would download weights from the hub; this project never downloads. "
            "Build the model and load a local file with plankton_cli.train.models.checkpoints.load_vit_weights."
        )
    overrides = {k: v for k, v in dict(kwargs, patch_size=patch_size).items() if v is not None}
    model = timm.create_model(architecture, pretrained=False, img_size=img_size, in_chans=in_chans, **overrides)
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{architecture!r} is a {type(model).__name__}, not a timm VisionTransformer")
    return model


def vit_arch(vit: VisionTransformer, architecture: str) -> dict[str, Any]:
    """The resolved architecture of ``vit`` as a flat dict that ``create_vit(**arch)`` rebuilds."""
    patch_h, patch_w = vit.patch_embed.patch_size
    img_h, img_w = vit.patch_embed.img_size
    if patch_h != patch_w or img_h != img_w:
        raise ValueError("only square images and patches are supported")
    return {
        "architecture": architecture,
        "img_size": img_h,
        "in_chans": vit.patch_embed.proj.in_channels,
        "patch_size": patch_h,
        "embed_dim": vit.embed_dim,
        "depth": len(vit.blocks),
        "num_heads": vit.blocks[0].attn.num_heads,
    }


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay on weight matrices, none on norms, biases and embeddings.

    Like MAE's ``add_weight_decay`` (1-D params and biases excluded), and additionally
    ``pos_embed``/``cls_token``/``mask_token``, which timm and MAE fine-tuning exclude too.
    Frozen parameters (lightly's fixed sin-cos position embeddings) are left out.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def normalized_pixel_target(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch (t − mean)/√(var + eps) with unbiased variance, as MAE's ``norm_pix_loss``."""
    return utils.normalize_mean_var(patches, dim=-1, eps=eps)


def masked_patch_loss(
    pred: Tensor, images: Tensor, idx_mask: Tensor, patch_size: int, norm_pix: bool = True
) -> tuple[Tensor, Tensor]:
    """MSE between ``pred`` and the masked patches of ``images``: ``(loss, target)``.

    ``pred`` is (batch, masked, patch²·channels) for the tokens ``idx_mask`` (sequence
    indices, 0 = class token). Visible patches never enter the loss (paper eq. 1). Runs in
    fp32 with autocast disabled whatever the caller's precision.
    """
    with torch.autocast(device_type=images.device.type, enabled=False):
        patches = utils.patchify(images.float(), patch_size)
        target = utils.get_at_index(patches, idx_mask - 1)  # sequence index → patch index (cls offset)
        if norm_pix:
            target = normalized_pixel_target(target)
        loss = F.mse_loss(pred.float(), target)
    return loss, target


class MAEOutput(NamedTuple):
    loss: Tensor  # scalar, MSE over masked patches
    pred: Tensor  # (batch, masked, patch²·channels), predictions for the masked patches
    target: Tensor  # same shape, the (normalised) pixels they are compared with
    idx_mask: Tensor  # (batch, masked), sequence indices of the masked tokens (0 is the class token)


class MAE(nn.Module):
    """MAE with a timm ViT encoder (default ViT-L/16, grayscale) and a 8×512 decoder.

    ``forward(images)`` returns an :class:`MAEOutput`; ``images`` are normalised, square,
    (batch, in_chans, img_size, img_size). ``encoder_state_dict()`` is a plain timm ViT
    state dict; ``encoder_arch`` the flat architecture that rebuilds it.
    """

    def __init__(
        self,
        architecture: str = "vit_large_patch16_224",
        *,
        img_size: int = 224,
        in_chans: int = 1,
        patch_size: int | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        **vit_kwargs: Any,
    ) -> None:
        super().__init__()
        # No pooling and no head: the encoder returns all tokens, the decoder needs them.
        vit = create_vit(
            architecture,
            img_size=img_size,
            in_chans=in_chans,
            patch_size=patch_size,
            num_classes=0,
            global_pool="",
            **vit_kwargs,
        )
        if vit.num_prefix_tokens != 1 or not vit.has_class_token:
            # lightly's random_token_mask treats token 0 as the (never masked) class token.
            raise ValueError("MAE needs a ViT with exactly one prefix token, the class token")
        self.encoder_arch = vit_arch(vit, architecture)
        self.patch_size = self.encoder_arch["patch_size"]
        self.in_chans = in_chans
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

        # Default init = MAE's (xavier Linear, frozen 2-D sin-cos position embedding).
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.backbone.mask_token.requires_grad_(False)  # unused by MAE; see module docstring
        self.sequence_length = self.backbone.sequence_length

        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            embed_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            num_prefix_tokens=vit.num_prefix_tokens,
        )
        self.prediction_head = nn.Linear(decoder_dim, self.patch_size**2 * in_chans)
        # Outside the decoder, so lightly's init does not reach them (lightly PR #2026).
        for layer in (self.decoder_embed, self.prediction_head):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def random_mask(self, batch_size: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(idx_keep, idx_mask)``: keeps the class token and int(num_patches·(1 − ratio)) patches."""
        return utils.random_token_mask(
            size=(batch_size, self.sequence_length), mask_ratio=self.mask_ratio, device=device
        )

    def decode(self, images: Tensor, idx_keep: Tensor) -> Tensor:
        """Encode the kept tokens and decode the full sequence: (batch, 1 + patches, decoder_dim)."""
        self._check_images(images)
        encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x = self.decoder_embed(encoded)
        # Mask tokens everywhere, then the embedded visible tokens at their positions.
        full = utils.repeat_token(self.decoder.mask_token, (images.shape[0], self.sequence_length))
        full = utils.set_at_index(full, idx_keep, x.type_as(full))
        return self.decoder(full)

    def forward(
        self, images: Tensor, idx_keep: Tensor | None = None, idx_mask: Tensor | None = None
    ) -> MAEOutput:
        """Mask, reconstruct, and score the masked patches; pass both indices to fix the mask."""
        if (idx_keep is None) != (idx_mask is None):
            raise ValueError("pass both idx_keep and idx_mask, or neither")
        if idx_keep is None:
            idx_keep, idx_mask = self.random_mask(images.shape[0], images.device)
        decoded = self.decode(images, idx_keep)
        pred = self.prediction_head(utils.get_at_index(decoded, idx_mask))
        loss, target = masked_patch_loss(pred, images, idx_mask, self.patch_size, self.norm_pix_loss)
        return MAEOutput(loss, pred, target, idx_mask)

    @torch.no_grad()
    def reconstruct(
        self,
        images: Tensor,
        *,
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        paste_visible: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(masked_input, reconstruction, original)`` images for a Figure-3-style panel.

        With the norm-pix loss, predicted patches are un-normalised with each original
        patch's own mean and variance (the usual way to show norm-pix predictions; MAE's
        own demo uses a model trained on raw pixels instead). Masked patches of
        ``masked_input`` are 0 in normalised space (the dataset mean colour). With
        ``mean``/``std`` (the dataset normalisation) the outputs are in pixel units,
        clipped to [0, 1]. ``paste_visible`` overlays the visible input patches on the
        reconstruction; MAE's figures show the raw output instead.
        """
        images = images.float()
        idx_keep, idx_mask = self.random_mask(images.shape[0], images.device)
        with torch.autocast(device_type=images.device.type, enabled=False):
            decoded = self.decode(images, idx_keep)
            pred = self.prediction_head(decoded[:, 1:]).float()  # drop the class token
            patches = utils.patchify(images, self.patch_size)
            if self.norm_pix_loss:
                var, mu = torch.var_mean(patches, dim=-1, keepdim=True)
                pred = pred * (var + 1e-6).sqrt() + mu

            masked = torch.zeros(patches.shape[:2], device=images.device)
            masked = masked.scatter(1, idx_mask - 1, 1.0).unsqueeze(-1)  # 1 = patch was hidden
            masked_input = patches * (1 - masked)
            if paste_visible:
                pred = patches * (1 - masked) + pred * masked

        def to_image(p: Tensor) -> Tensor:
            image = utils.unpatchify(p, self.patch_size, channels=self.in_chans)
            if mean is None or std is None:
                return image
            m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
            s = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
            return (image * s + m).clamp(0, 1)

        return to_image(masked_input), to_image(pred), to_image(patches)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder as a plain timm ViT state dict (no lightly ``vit.`` prefix, no mask token)."""
        return {k: v.detach().clone() for k, v in self.backbone.vit.state_dict().items()}

    def _check_images(self, images: Tensor) -> None:
        size = self.encoder_arch["img_size"]
        if images.ndim != 4 or images.shape[1:] != (self.in_chans, size, size):
            # lightly's patchify asserts H == W; say what is expected instead.
            raise ValueError(
                f"expected images of shape (batch, {self.in_chans}, {size}, {size}), got {tuple(images.shape)}"
            )


def reconstruction_grid(masked_input: Tensor, reconstruction: Tensor, original: Tensor, rows: int = 8) -> np.ndarray:
    """One row per image: masked | reconstruction | original, as uint8 (H, W) or (H, W, 3).

    Inputs are (batch, channels, size, size) in [0, 1], as returned by ``MAE.reconstruct``
    with ``mean``/``std``; write the array with ``PIL.Image.fromarray(grid).save(path)``.
    """
    triplets = torch.cat([masked_input, reconstruction, original], dim=3)[:rows]  # side by side
    grid = torch.cat(list(triplets), dim=1)  # stacked rows: (channels, H, W)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


PANEL_TITLES = ("masked input", "reconstruction", "original")


def titled_panel(grid: np.ndarray, caption: str = "", titles: Sequence[str] = PANEL_TITLES):
    """`grid` (from ``reconstruction_grid``) as a PIL image under a header naming its columns (and `caption`, e.g.
    the epoch), so a panel read on its own says what it shows."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(grid)
    width = image.width // len(titles)
    header = 14 * (2 if caption else 1)
    panel = Image.new(image.mode, (image.width, image.height + header), 255 if image.mode == "L" else (255,) * 3)
    panel.paste(image, (0, header))
    draw = ImageDraw.Draw(panel)
    ink = 0 if image.mode == "L" else (0, 0, 0)
    top = 0
    if caption:
        draw.text((2, 1), caption, fill=ink)
        top = 14
    for i, title in enumerate(titles):
        text = title if draw.textlength(title) <= width - 4 else title.split()[0][: max(1, (width - 4) // 6)]
        draw.text((i * width + 2, top + 1), text, fill=ink)
    return panel

