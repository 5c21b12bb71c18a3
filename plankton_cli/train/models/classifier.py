"""Fine-tuning classifier: timm ViT with MAE's average-pool head input and Maracani's bottleneck.

The encoder is built with ``global_pool='avg'``: patch tokens (class token excluded) are
averaged and normalised by ``fc_norm``, and the final ``norm`` is an Identity, exactly as
MAE fine-tuning does. Any other timm model (a CNN such as ``mobilenetv3_small_100``, a distillation student)
is built by ``timm.create_model(num_classes=0)``: its own global pooling (and, for MobileNetV3, its ``conv_head``)
gives the embedding, ``head_hidden_size`` wide. The head is the bottleneck of Maracani et al. 2023 used by the paper:
Linear(embed_dim → 512) → LayerNorm → GELU → Linear(512 → classes). The paper does not say
whether the last layer is wrapped in ``weight_norm`` (Maracani's code does); it is not here.

Per-object features (``feature_dim`` > 0: standardised morphometrics and their missing indicators, see
``plankton_cli.prepare.features.inputs``) are concatenated to the pooled embedding before the bottleneck, so the head
sees the object's size and shape, which the square-padded, resized image no longer carries.

``--head linear|knn|forest`` replaces the bottleneck by a head fitted with scikit-learn (``fitted_heads``); a
forest reads the feature input only, and the encoder is then not run at all.
"""

from __future__ import annotations

import re
from typing import Any

import timm
import torch
from timm.layers import trunc_normal_
from timm.models import is_model, model_entrypoint
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from plankton_cli.train.models.fitted_heads import FittedHead
from plankton_cli.train.models.mae import NO_DECAY_NAMES, create_vit, vit_arch


# timm modules whose models are ``VisionTransformer``s (judged without building one).
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


def is_vit(architecture: str) -> bool:
    """True when timm builds ``architecture`` as a ``VisionTransformer`` (from its registry: nothing is built)."""
    if not is_model(architecture):
        raise ValueError(f"{architecture!r} is not a timm model name")
    return model_entrypoint(architecture).__module__ in VIT_MODULES


def create_encoder(
    architecture: str, *, img_size: int, in_chans: int, drop_path_rate: float, **vit_kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """``(encoder, arch)``: the headless timm model whose forward gives the pooled embedding, and the flat
    architecture that rebuilds it (for a CNN the ViT keys are None and ``embed_dim`` is the embedding width).

    A ViT: ``create_vit`` with average pooling + ``fc_norm`` and the ``vit_kwargs`` overrides. Any other timm
    model: ``timm.create_model(num_classes=0)``; it takes no ViT overrides and no ``img_size`` (most CNNs do not
    accept one; they take any input size).
    """
    if is_vit(architecture):
        vit = create_vit(architecture, img_size=img_size, in_chans=in_chans, num_classes=0, global_pool="avg",
                         drop_path_rate=drop_path_rate, **vit_kwargs)
        return vit, vit_arch(vit, architecture)
    if given := [key for key, value in vit_kwargs.items() if value is not None]:
        options = ", ".join(f"--{key.replace('_', '-')}" for key in given)
        raise ValueError(f"{architecture} is not a timm ViT: {options} appl{'ies' if len(given) == 1 else 'y'} "
                         "to ViTs only")
    # drop_path_rate only when asked for: a few timm CNNs (VGG, ...) take none.
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    cnn = timm.create_model(architecture, pretrained=False, num_classes=0, in_chans=in_chans, **extra)
    if isinstance(cnn, VisionTransformer):
        raise ValueError(f"{architecture} is a timm ViT of a module this project does not build "
                         f"({model_entrypoint(architecture).__module__})")
    width = getattr(cnn, "head_hidden_size", None) or cnn.num_features  # MobileNetV3: conv_head after the pool
    arch = {"architecture": architecture, "img_size": img_size, "in_chans": in_chans, "patch_size": None,
            "embed_dim": int(width), "depth": None, "num_heads": None}
    return cnn, arch


class Classifier(nn.Module):
    """``encoder`` (timm ViT or CNN, no head) + ``head`` (bottleneck); ``forward`` returns logits.

    ``arch`` holds the flat architecture (see ``checkpoints``) that rebuilds the model.
    """

    def __init__(
        self,
        architecture: str,
        num_classes: int,
        *,
        img_size: int = 224,
        in_chans: int = 1,
        patch_size: int | None = None,
        drop_path_rate: float = 0.2,
        hidden_dim: int = 512,
        feature_dim: int = 0,
        **vit_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        self.encoder, arch = create_encoder(architecture, img_size=img_size, in_chans=in_chans,
                                            drop_path_rate=drop_path_rate, patch_size=patch_size, **vit_kwargs)
        self.head: nn.Module = nn.Sequential(
            nn.Linear(arch["embed_dim"] + feature_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_classes),
        )
        self.feature_dim = feature_dim
        self.arch = dict(arch, num_classes=num_classes, head="finetune", hidden_dim=hidden_dim)
        self._init_head()

    def use_fitted_head(self, head: FittedHead) -> None:
        """Replace the bottleneck head by a fitted one (``--head linear|knn|forest``, see ``fitted_heads``)."""
        self.head = head
        self.arch = {**{k: v for k, v in self.arch.items() if k != "hidden_dim"}, "head": head.kind}

    @property
    def reads_image(self) -> bool:
        """False for a head that reads only the feature input (a forest): the encoder is then not run."""
        return getattr(self.head, "reads_embedding", True)

    def _init_head(self) -> None:
        hidden, last = self.head[0], self.head[3]
        trunc_normal_(hidden.weight, std=0.02)  # timm's Linear init
        nn.init.zeros_(hidden.bias)
        # MAE fine-tuning: tiny logits at the start so the pretrained features are not disturbed.
        trunc_normal_(last.weight, std=2e-5)
        nn.init.zeros_(last.bias)

    def forward_features(self, images: Tensor) -> Tensor:
        """Pooled encoder features (a ViT's ``fc_norm``-ed): (batch, embed_dim)."""
        return self.encoder(images)

    def classify(self, embedding: Tensor | None, features: Tensor | None = None) -> Tensor:
        """Logits from a pooled embedding and, when the model takes them, the object's feature vector."""
        if self.feature_dim:
            if features is None or features.shape[-1] != self.feature_dim:
                got = None if features is None else tuple(features.shape)
                raise ValueError(f"this model takes {self.feature_dim} feature inputs per image, got {got}")
            if not self.reads_image:
                return self.head(features)
            assert embedding is not None
            embedding = torch.cat([embedding, features.to(embedding.dtype)], dim=-1)
        return self.head(embedding)

    def forward(self, images: Tensor, features: Tensor | None = None) -> Tensor:
        return self.classify(self.encoder(images) if self.reads_image else None, features)


def contains_vit(model: nn.Module) -> bool:
    """True when a timm ViT is inside ``model`` (a Classifier, a quantised copy of one or a bare timm model)."""
    return any(isinstance(module, VisionTransformer) for module in model.modules())


def find_vit(model: nn.Module) -> tuple[str, VisionTransformer]:
    """``(prefix, vit)`` of the first timm ViT inside ``model`` (prefix '' when it is one)."""
    for name, module in model.named_modules():
        if isinstance(module, VisionTransformer):
            return (f"{name}." if name else ""), module
    raise TypeError(f"{type(model).__name__} contains no timm VisionTransformer")


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer index of a ViT parameter name for layer decay (MAE ``util/lr_decay.py``).

    Embeddings → 0, ``blocks.i`` → i + 1, everything after the blocks → ``num_layers``.
    """
    if name.split(".", 1)[0] in ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else num_layers


def layer_decay_param_groups(
    model: nn.Module, base_lr: float, weight_decay: float = 0.01, layer_decay: float = 0.75
) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise lr decay: each group's ``lr`` is already ``base_lr × lr_scale``.

    scale = layer_decay^(num_layers − layer_id), num_layers = depth + 1; parameters outside
    the ViT (the head) get scale 1. 1-D parameters, ``pos_embed`` and ``cls_token`` get no
    weight decay. ``lr_scale`` and ``layer_id`` are recorded in each group for inspection.
    """
    prefix, vit = find_vit(model)
    num_layers = len(vit.blocks) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if prefix == "" or name.startswith(prefix):
            layer_id = vit_layer_id(name[len(prefix):], num_layers)
        else:
            layer_id = num_layers
        decay = not (param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES)
        key = (layer_id, decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - layer_id)
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": base_lr * scale,
                "lr_scale": scale,
                "layer_id": layer_id,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def group_of(optimizer: torch.optim.Optimizer, param: Tensor) -> dict[str, Any]:
    """The optimizer parameter group that holds ``param``."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise KeyError("parameter is not in this optimizer")
