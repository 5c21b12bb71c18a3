"""Training data: Parquet store datasets for PyTorch, the paper's transforms, normalisation statistics.

Imports torch: keep it out of modules that ``plankton --help`` loads.
"""

from plankton_cli.prepare.data.dataset import (
    RowGroup,
    StoreDataLoader,
    StoreDataset,
    list_classes,
    list_data_files,
    list_row_groups,
)
from plankton_cli.prepare.data.gpu_augment import GpuAugment
from plankton_cli.prepare.data.stats import compute_mean_std, dataset_fingerprint, load_or_compute_stats
from plankton_cli.prepare.data.transforms import EvalTransform, ResizeTransform, TrainTransform, decode_gray

__all__ = [
    "EvalTransform",
    "GpuAugment",
    "ResizeTransform",
    "RowGroup",
    "StoreDataLoader",
    "StoreDataset",
    "TrainTransform",
    "compute_mean_std",
    "dataset_fingerprint",
    "decode_gray",
    "list_classes",
    "list_data_files",
    "list_row_groups",
    "load_or_compute_stats",
]
