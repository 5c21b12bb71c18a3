"""The Lightning plumbing that `plankton pretrain` and `plankton finetune` share.

One run = one directory::

    RUN/
      config.json              resolved options (write_run_config)
      metrics.csv              every logged metric, one row per logging step (CSV logger)
      checkpoints/last.ckpt    Lightning checkpoint: every N optimizer steps and at each epoch end
      summary.json             what the run did (write_summary)

`make_trainer` decides what the caller should not have to: DDP (gloo on CPU, nccl on GPU) when more than one
process trains, Lightning's SLURM environment *without* its own requeue when running in a SLURM job (submitit
owns requeue: it resubmits the command with ``--resume``), bf16 autocast on GPU and fp32 on CPU, a rich
progress bar on a terminal and plain log lines under cron/SLURM. Datasets shard themselves over ranks
(`plankton_cli.prepare.data.StoreDataLoader`), so Lightning never injects a distributed sampler.

Imports torch and Lightning: keep it out of modules that `plankton --help` loads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy

from plankton_cli.core.atomic import atomic_path, atomic_write_json
from plankton_cli.core.cadence import parse_every
from plankton_cli.core.lightning_logs import quiet_lightning

log = logging.getLogger("plankton.training")

# Lightning warnings that do not apply to how plankton trains.
_IRRELEVANT_WARNINGS = (
    # StoreDataset deals each DataLoader worker its own batches, so its __len__ is exact.
    r".*Your `IterableDataset` has `__len__` defined.*",
    # submitit starts the tasks with srun; outside SLURM, srun being installed means nothing.
    r".*The `srun` command is available on your system but is not used.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # The epoch's training loss in the logs is rank 0's own mean: `sync_dist=True` on it hung a 2-process gloo run
    # here (an all-reduce that not every rank entered), and the loss that matters, the gradient's, is synced by DDP.
    r".*when logging on epoch level in distributed setting.*",
)

quiet_lightning()  # importing pytorch_lightning above reset its loggers to INFO
for _message in _IRRELEVANT_WARNINGS:
    warnings.filterwarnings("ignore", message=_message)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


# --------------------------------------------------------------------------- run directory


def last_checkpoint(run_dir: Path) -> Path:
    """Where the run's resumable checkpoint lives (it may not exist yet)."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def resolve_dataset(store: Any, name: str | None = None) -> str:
    """The store dataset to train on: ``name`` if given (it must exist), else ``padded`` if the store has it,
    else ``objects``. ``store`` is a :class:`plankton_cli.store.Store`."""
    available = store.datasets()
    if name is not None:
        if name not in available:
            raise ValueError(
                f"the store {store.root} has no dataset {name!r} (it has: {', '.join(available) or 'nothing'})"
            )
        return name
    for candidate in ("padded", "objects"):
        if candidate in available:
            return candidate
    raise ValueError(f"the store {store.root} holds no images yet; run `plankton ingest` first")


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    """A run's JSON files (config, summary, fold results): sorted keys, paths and dates as text."""
    return atomic_write_json(path, data, sort_keys=True, default=str)


def write_run_config(run_dir: Path, config: dict[str, Any]) -> Path:
    """``RUN/config.json``: the resolved options of the run."""
    return write_json_atomic(Path(run_dir) / CONFIG_FILE, config)


def refuse_other_settings(run_dir: Path, config: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse to continue a run in ``run_dir`` whose saved ``config.json`` differs from ``config`` on ``keys``
    (``dataset`` excepted: it may be named or resolved)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    differ = [key for key in keys if key != "dataset" and saved.get(key) != config.get(key)]
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {config.get(k)!r}" for k in differ)
        raise ValueError(f"{run_dir} holds a run with other settings ({details}); use another --out")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``RUN/summary.json``: what the run did (what ``--json`` prints)."""
    return write_json_atomic(Path(run_dir) / SUMMARY_FILE, summary)


def is_rank_zero() -> bool:
    """True in the process that should write run files. Reliable before ``trainer.fit`` too: Lightning sets
    the rank from the launcher's environment (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``) at import."""
    return rank_zero_only.rank == 0


# --------------------------------------------------------------------------- trainer


def resolve_accelerator(accelerator: str = "auto") -> str:
    """``auto`` → ``gpu`` when CUDA is available, else ``cpu``; other values pass through."""
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def in_slurm_job() -> bool:
    """True inside a SLURM batch job (not an interactive ``srun bash``)."""
    return SLURMEnvironment.detect()


def make_trainer(
    run_dir: Path,
    *,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
    precision: str | None = None,
    accumulate_grad_batches: int = 1,
    log_every_n_steps: int = 50,
    steps_per_epoch: int | None = None,
    checkpoint_every: int | str | timedelta = 100,
    callbacks: Sequence[Callback] = (),
    enable_progress: bool | None = None,
    tracker_logger: Any | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """A ``pl.Trainer`` writing into ``run_dir`` (see the module docstring for the layout).

    - ``max_steps`` (optimizer steps) caps ``max_epochs`` when both are given; ``None`` means no cap.
    - DDP when ``devices × num_nodes > 1``: gloo on CPU, nccl on GPU. Outside SLURM, Lightning starts the
      extra local processes by re-running this command line; inside SLURM each task is one process.
    - ``precision``: ``None`` = ``bf16-mixed`` on GPU, ``32-true`` on CPU.
    - ``steps_per_epoch`` (optimizer steps), when given, caps ``log_every_n_steps``: every epoch then logs at least
      once, and Lightning does not warn that the interval is longer than the epoch.
    - ``checkpoint_every``: ``RUN/checkpoints/last.ckpt`` is rewritten (atomically) every that many optimizer
      steps and at every epoch end, or every that much training time (a ``timedelta`` or text such as ``10min``,
      ``plankton_cli.core.cadence``), and when training ends, so a kill loses little. Resume with
      ``trainer.fit(module, loader, ckpt_path=last_checkpoint(run_dir))``.
    - ``enable_progress``: ``None`` = a rich bar on a terminal, log lines otherwise; ``False`` = neither.
    - ``tracker_logger``: a TensorBoard or MLflow logger (``plankton_cli.train.trackers``) beside ``metrics.csv``.
    - ``trainer_kwargs`` go to ``pl.Trainer`` as they are (``gradient_clip_val``, ``limit_val_batches`` …).
    """
    run_dir = Path(run_dir)
    accelerator = resolve_accelerator(accelerator)
    if precision is None:
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"

    plugins: list[Any] = []
    if in_slurm_job():
        plugins.append(SLURMEnvironment(auto_requeue=False))  # submitit owns requeue (Lightning PR #10601)
    if devices * num_nodes > 1:
        strategy: Any = DDPStrategy(process_group_backend="nccl" if accelerator == "gpu" else "gloo")
    else:
        strategy = "auto"

    interactive = sys.stderr.isatty()
    if enable_progress is None:
        enable_progress = True
    all_callbacks: list[Callback] = [TrimMetricsOnResume(), SeedEachEpoch()]
    if enable_progress:
        all_callbacks.append(RichProgressBar() if interactive else LogLinesProgress())
    all_callbacks.extend(callbacks)
    # Last, after the caller's checkpoint callbacks (Lightning keeps their order): at an epoch end they update
    # their state (e.g. the best score so far) first, so last.ckpt holds it and a resumed run picks the same best.
    all_callbacks.append(LastCheckpoint(run_dir / CHECKPOINT_DIR, every=checkpoint_every))

    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=max_epochs if max_epochs is not None else (-1 if max_steps else None),
        max_steps=max_steps if max_steps is not None else -1,
        devices=devices,
        num_nodes=num_nodes,
        accelerator=accelerator,
        strategy=strategy,
        plugins=plugins or None,
        precision=precision,
        accumulate_grad_batches=accumulate_grad_batches,
        log_every_n_steps=max(1, min(log_every_n_steps, steps_per_epoch or log_every_n_steps)),
        logger=[RunCSVLogger(run_dir), *([tracker_logger] if tracker_logger is not None else [])],
        callbacks=all_callbacks,
        enable_progress_bar=bool(enable_progress and interactive),
        enable_model_summary=False,
        use_distributed_sampler=False,  # StoreDataset shards over ranks itself
        **trainer_kwargs,
    )


class LastCheckpoint(ModelCheckpoint):
    """Keeps one checkpoint, ``last.ckpt``, written through a temporary file and a rename, so a kill during the
    write leaves the previous one. ``every``: optimizer steps (rewritten every that many and at each epoch end) or
    training time (rewritten once that much has passed since the last one, looked at each step and epoch end); and
    when training ends."""

    _pending_row: str | None = None  # "step" or "epoch": the hook saving now, whose metrics row is not logged yet

    def __init__(self, dirpath: Path, every: int | str | timedelta = 100) -> None:
        every = parse_every(every) if isinstance(every, (int, str)) else every
        steps = every if isinstance(every, int) else None
        super().__init__(
            dirpath=str(dirpath),
            save_last=True,
            save_top_k=0,
            every_n_train_steps=steps,
            train_time_interval=None if steps else every,
            enable_version_counter=False,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._pending_row = "step"  # a save now comes before Lightning logs this step's row (see `_write_ahead`)
        try:
            super().on_train_batch_end(trainer, *args, **kwargs)
        finally:
            self._pending_row = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending_row = "epoch"
        try:
            self._save_at_epoch_end(trainer)
        finally:
            self._pending_row = None

    def _save_at_epoch_end(self, trainer: pl.Trainer) -> None:
        # ModelCheckpoint saves at epoch end only when triggered by epochs; we want both triggers.
        if self._should_skip_saving_checkpoint(trainer):
            return
        if self._train_time_interval is not None:
            # Lightning's own time check (on_train_batch_end) restarts the clock only when it saves.
            last: float | None = self._last_time_checked  # type: ignore[has-type]
            due = last is None or time.monotonic() - last >= self._train_time_interval.total_seconds()
            if not trainer.strategy.broadcast(due):  # rank 0 decides: every rank must take part in a save
                return
            self._last_time_checked = time.monotonic()
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning saves here only if nothing was saved yet; a run that stops between two timed saves (or off a
        # step boundary) would leave its last steps out of the checkpoint a longer run resumes from.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self._write_ahead(trainer)
        tmp = f"{filepath}.tmp"
        super()._save_checkpoint(trainer, tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("LastCheckpoint")

    def _write_ahead(self, trainer: pl.Trainer) -> None:
        """Put the metrics row of the step (or epoch) being checkpointed in ``metrics.csv`` before the checkpoint.

        Lightning calls the checkpoint hooks before it logs that step's or epoch's row, so a run killed between the
        two would resume past a row that never reached the file (and `TrimMetricsOnResume` keeps only rows before
        the checkpoint). The row is computed as Lightning's logger connector will compute it, and `RunCSVLogger`
        skips it when Lightning logs it. Every rank computes it: a metric logged with ``sync_dist`` reduces."""
        connector, loop = trainer._logger_connector, trainer.fit_loop.epoch_loop
        if self._pending_row == "step":
            if loop._should_accumulate() or not connector.should_update_logs:
                return  # Lightning logs no row for this batch
            step = loop._batches_that_stepped
        elif self._pending_row == "epoch":
            step = loop._batches_that_stepped - 1  # as the fit loop logs epoch metrics
        else:
            return
        row = convert_tensors_to_scalars(connector.metrics["log"])
        if not row:
            return
        row.setdefault("epoch", trainer.current_epoch)
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.log_ahead(row, step)


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, minus deleting an existing ``metrics.csv``: a resumed run appends to it, keeping
    the columns the file already has (else rows of the killed run with a column not logged yet, such as an
    epoch-end loss, no longer fit the header)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class RunCSVLogger(CSVLogger):
    """Logs to ``RUN/metrics.csv`` (no version folders). On resume, rows logged after the checkpoint the run
    continues from (by a run that was then killed) are dropped, so every step appears once."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:  # type: ignore[has-type]
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    _ahead: tuple[int, dict] | None = None

    def log_ahead(self, metrics: dict[str, float], step: int) -> None:
        """Write a row now that Lightning will log again (`LastCheckpoint._write_ahead`); that second one is
        skipped."""
        self.log_metrics(metrics, step)
        self.save()
        self._ahead = (step, metrics)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._ahead is not None and self._ahead == (step, metrics):
            self._ahead = None
            return
        super().log_metrics(metrics, step)

    def drop_rows_from(self, step: int) -> None:
        """Remove rows with ``step >= step`` from ``metrics.csv`` (rank 0 only)."""
        path = Path(self.log_dir) / METRICS_FILE
        if not rank_zero_only.rank == 0 or not path.exists():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)


class TrimMetricsOnResume(Callback):
    """On a resumed fit, drop the metric rows a killed run logged after the checkpoint being resumed."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.drop_rows_from(trainer.global_step)


class SeedEachEpoch(Callback):
    """Reseed torch, numpy and `random` at each epoch start from (the run's seed, epoch, rank), so an epoch's draws
    (drop path, MAE masks, augmentation in the main process) do not depend on what ran before it: a run resumed
    from an epoch-end checkpoint then trains exactly as the uninterrupted run did. The run's seed is the one
    `pl.seed_everything` recorded."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = int.from_bytes(hashlib.blake2b(f"{base}:{trainer.current_epoch}:{trainer.global_rank}".encode(),
                                              digest_size=4).digest(), "little")
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class LogLinesProgress(Callback):
    """Progress as log lines (for cron, SLURM logs, pipes), from rank 0 only: one at least every ``every_s``
    seconds while training runs (so a reader never waits long without news), at epoch ends only when that long has
    passed since the last line (short epochs would otherwise flood the log), and one at the end of the last epoch."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last = self._epoch_start = 0.0
        self._samples = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()
        self._samples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._samples += _batch_size(batch)
        if time.monotonic() - self._last >= self.every_s:
            self._log(trainer, "")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = (trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs) or (
            trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        if last or time.monotonic() - self._last >= self.every_s:
            self._log(trainer, " (epoch done)")

    def _log(self, trainer: pl.Trainer, suffix: str) -> None:
        self._last = time.monotonic()
        if not trainer.is_global_zero:
            return
        elapsed = max(time.monotonic() - self._epoch_start, 1e-9)
        metrics = " ".join(
            f"{k} {float(v):.4g}" for k, v in sorted(trainer.progress_bar_metrics.items()) if k != "v_num"
        )
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        log.info(
            "epoch %d%s step %d%s %s %.0f samples/s per process%s",
            trainer.current_epoch, epochs, trainer.global_step, steps, metrics, self._samples / elapsed, suffix,
        )


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (dicts, lists and tensors)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return _batch_size(value)
    return 0
