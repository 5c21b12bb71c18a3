"""The shared training plumbing (plankton_cli/training.py)."""

import csv

from plankton_cli.training import RunCSVLogger


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
