"""Models: MAE pretraining, the fine-tuning classifier, lr schedules and safe checkpoints.

Pure PyTorch + timm + lightly; the Lightning modules and data loading live elsewhere.
Importing this package needs the ``train`` extra (torch, timm, lightly, safetensors).
"""

from plankton_cli.train.models.checkpoints import (
    LoadReport,
    load_encoder_info,
    load_model,
    load_vit_weights,
    save_encoder,
    save_model,
)
from plankton_cli.train.models.classifier import Classifier, is_vit, layer_decay_param_groups
from plankton_cli.train.model_info import ModelInfo, ModelInfoError
from plankton_cli.train.models.mae import MAE, MAEOutput, create_vit, param_groups_weight_decay, reconstruction_grid
from plankton_cli.train.models.schedules import warmup_cosine, warmup_cosine_scheduler

__all__ = [
    "MAE",
    "Classifier",
    "LoadReport",
    "MAEOutput",
    "ModelInfo",
    "ModelInfoError",
    "create_vit",
    "is_vit",
    "layer_decay_param_groups",
    "load_encoder_info",
    "load_model",
    "load_vit_weights",
    "param_groups_weight_decay",
    "reconstruction_grid",
    "save_encoder",
    "save_model",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
