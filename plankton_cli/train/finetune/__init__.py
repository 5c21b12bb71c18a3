"""`plankton finetune` as a library function: few-label fine-tuning of a ViT, tested by cross-validation.

Kareinen et al. 2025 (§4.3): the encoder (our MAE export, a timm/ImageNet checkpoint, or a fresh ViT) gets
MAE's average-pool ``fc_norm`` and Maracani's bottleneck head (``models.Classifier``) and is fine-tuned with
AdamW (lr 2e-3 absolute, weight decay 0.01), layer-wise lr decay 0.75, a per-step cosine schedule with a 5-epoch
warmup, label smoothing 0.1 and drop path 0.2, for 50 epochs at batch 128; bf16 on GPU. Below the paper's
scale, batch, lr and warmup are scaled to each fold's labelled images (``recipe.resolve_recipe``).

Protocol (``protocol.py``): stratified k-fold cross-validation; the labelled subset drawn per class (n_c =
max(1, floor(p·N_c)), nested, seeded). ``budget`` (default): drawn from the whole non-test part, 15 % of it (at
least one of every class that has two) validates, and the model chosen on it (head, epoch) is refitted on all of
it. ``paper``: 15 % of the non-test part validates at full size and the subset is drawn from the rest; each fold
keeps its best checkpoint by validation macro-F1. Either way each fold is scored on its test part, beside
baselines fitted on the same training + validation labels.

    OUT/config.json                  the settings (a re-run with other settings is refused)
    OUT/label_counts.csv             realised labelled images per fold and class (the paper's Table 4)
    OUT/summary.{md,csv,json}        per-fold test scores and mean ± std (Tables 3, 5, 6)
    OUT/fold-<k>/split.json          object ids of train/val/test: a re-run reuses it exactly
    OUT/fold-<k>/recipe.json         the resolved recipe (batch, lr, steps, warmup, and which flags set them)
    OUT/fold-<k>/model.safetensors   + model.json: the model kept, with classes, preprocessing, thresholds
    OUT/fold-<k>/refit/              metrics.csv and recipe.json of the refit on every label (budget, fine-tuning)
    OUT/fold-<k>/metrics.csv         per-step/epoch log (train_loss, val_loss, val_macro_f1, lr_block0, lr_head)
    OUT/fold-<k>/test_predictions.parquet   object_id, label, pred, probabilities, instrument
    OUT/fold-<k>/result.json         the fold's test metrics; its presence marks the fold as done
    OUT/fold-<k>/{learning_curves,confusion_matrix}.png

Modules, one job each: ``config`` (settings), ``pool`` (data selection and splits), ``model`` (classifier and
LightningModule), ``fold`` (one fold), ``run`` (the whole run), ``results`` (summary tables).

Imports torch and Lightning: keep it out of modules that ``plankton --help`` loads.
"""

from plankton_cli.train.finetune.config import RESULT_KEYS, SCRATCH, FinetuneConfig
from plankton_cli.train.finetune.fold import fold_recipe, run_fold
from plankton_cli.train.finetune.model import ClassifierModule, build_classifier, default_resize, precision_thresholds, softmax
from plankton_cli.train.finetune.pool import LabelledPool, PoolFeatures, fold_splits, label_count_rows, labelled_pool, store_loader
from plankton_cli.train.finetune.results import summarise_run
from plankton_cli.train.finetune.run import finetune

__all__ = [
    "RESULT_KEYS", "SCRATCH", "ClassifierModule", "FinetuneConfig", "LabelledPool", "PoolFeatures", "build_classifier",
    "default_resize", "finetune", "fold_recipe", "fold_splits", "label_count_rows", "labelled_pool", "precision_thresholds",
    "run_fold", "softmax", "store_loader", "summarise_run",
]
