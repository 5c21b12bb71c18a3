"""The shared training plumbing (plankton_cli/train/training.py)."""

import csv
from datetime import timedelta

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import plankton
from plankton_cli.core.cadence import parse_every
from plankton_cli.train.training import RunCSVLogger, make_trainer


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_resumed_metrics_csv_keeps_columns_only_the_killed_run_logged(tmp_path):
    """A run killed after an epoch end logged `train/loss_epoch`; the resumed process has not logged it yet."""
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss_epoch,train/loss_step\n0,9,0.5,0.4\n")
    logger = RunCSVLogger(tmp_path)
    logger.log_metrics({"train/loss_step": 0.3, "epoch": 1}, step=10)
    logger.save()
    logger.log_metrics({"train/loss_step": 0.2, "train/loss_epoch": 0.25, "lr": 1e-3, "epoch": 1}, step=11)
    logger.save()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["9", "10", "11"]
    assert rows[0]["train/loss_epoch"] == "0.5" and rows[2]["lr"] == "0.001"


def test_short_epochs_train_without_the_logging_interval_warning_or_a_line_per_epoch(tmp_path):
    """A demo-sized run: 4 steps per epoch under the default log interval of 50, 20 epochs of a second or less."""
    import logging
    import warnings

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("plankton.training")
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    try:
        trainer = make_trainer(tmp_path, max_epochs=20, accelerator="cpu", steps_per_epoch=4, enable_progress=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=4))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert trainer.log_every_n_steps == 4
    assert not [w for w in caught if "log_every_n_steps" in str(w.message)]
    progress = [r.getMessage() for r in records if "samples/s" in r.getMessage()]
    # Not one line per epoch: every 10 s at most, and the last epoch's (the run takes a few seconds).
    assert 1 <= len(progress) < 20 and progress[-1].startswith("epoch 19/20 step 80 ")


@pytest.mark.parametrize("text, every", [("100", 100), (7, 7), ("90s", timedelta(seconds=90)),
                                         ("10min", timedelta(minutes=10)), ("1.5h", timedelta(hours=1.5)),
                                         (" 2 H ", timedelta(hours=2))])
def test_checkpoint_every_is_steps_or_training_time(text, every):
    assert parse_every(text) == every


@pytest.mark.parametrize("text", ["0", "0s", "1.5", "10x", "min", "-3", ""])
def test_checkpoint_every_refuses_what_is_neither(text):
    with pytest.raises(ValueError, match="expected"):
        parse_every(text)


def test_a_bad_checkpoint_every_is_a_usage_error_naming_the_option(tmp_path):
    proc = plankton("pretrain", "--store", str(tmp_path), "--checkpoint-every", "10x", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "--checkpoint-every" in proc.stderr and "90s, 10min, 2h" in proc.stderr


class _CheckpointOnDisk(pl.Callback):
    """Whether last.ckpt exists, and at which step it was written, at the start of each epoch."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen.append(torch.load(self.path, weights_only=False)["global_step"] if self.path.exists() else None)


@pytest.mark.parametrize("every, seen", [(2, [None, 2, 4]), ("1h", [None, None, None])])
def test_last_checkpoint_by_steps_or_by_time_and_always_at_the_end(tmp_path, every, seen):
    """Steps: every N steps and each epoch end. Time: none before the hour is up, so none in a short run, whose
    last state is still written when it ends (a longer run can resume from it)."""
    probe = _CheckpointOnDisk(tmp_path / "checkpoints" / "last.ckpt")
    trainer = make_trainer(tmp_path, max_epochs=3, accelerator="cpu", enable_progress=False, callbacks=[probe],
                           checkpoint_every=every)
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=3))  # 2 steps an epoch
    assert probe.seen == seen
    assert torch.load(probe.path, weights_only=False)["global_step"] == 6


class _Killed(Exception):
    pass


class TinyWithEpochLoss(Tiny):
    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


@pytest.mark.parametrize("kill_at", [2, 3])  # 2: an epoch end's checkpoint (2 steps an epoch); 3: a step's
def test_a_run_killed_right_after_a_checkpoint_resumes_with_every_metrics_row_once(tmp_path, monkeypatch, kill_at):
    """Lightning saves a checkpoint before it logs the step's (or epoch's) row; a kill in between must not leave
    the resumed run's metrics.csv without that row (the checkpoint writes it ahead)."""
    from plankton_cli.train.training import LastCheckpoint

    save = LastCheckpoint._save_checkpoint
    killed = []

    def save_then_die(self, trainer, filepath):
        save(self, trainer, filepath)
        if trainer.global_step == kill_at and not killed:
            killed.append(trainer.global_step)
            raise _Killed  # as a SIGKILL right after the rename: nothing after the save runs

    monkeypatch.setattr(LastCheckpoint, "_save_checkpoint", save_then_die)
    data = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=3)  # 2 steps an epoch

    def trainer():
        return make_trainer(tmp_path, max_epochs=3, accelerator="cpu", enable_progress=False, log_every_n_steps=1,
                            checkpoint_every=3)

    with pytest.raises(_Killed):
        trainer().fit(TinyWithEpochLoss(), data)
    trainer().fit(TinyWithEpochLoss(), data, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["train_loss_step"]] == list(range(6))
    assert [int(r["epoch"]) for r in rows if r["train_loss_epoch"]] == [0, 1, 2]
