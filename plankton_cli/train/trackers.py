"""Experiment trackers: a run's recipe, per-epoch metrics and results in TensorBoard or MLflow too (`--logger`).

`RUN/metrics.csv` is always written (learning curves, resume and `plankton evaluate` read it); `--logger tensorboard`
adds Lightning's TensorBoardLogger (event files in `RUN/tensorboard/`: `tensorboard --logdir runs/`), `--logger
mlflow` its MLFlowLogger (tracking URI `--logger-uri`, else `$MLFLOW_TRACKING_URI`, else the file store `./mlruns`).
One training run directory is one tracked run, named by the directory and tagged `plankton.run_dir` with its
absolute path, so a resumed run and the results written after training (a fine-tuning fold's test scores, the
run's mean ± std) go to the run that holds its epochs. MLflow experiments are named by the command
(`plankton-pretrain`, `plankton-finetune`, `plankton-distill`).

Imports Lightning (and the tracker's package) only when a tracker is used.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plankton_cli.core.errors import UsageError

LOGGERS = ("csv", "tensorboard", "mlflow")
PACKAGES = {"tensorboard": ("tensorboard", "pip install 'plankton-cli[tensorboard]'"),
            "mlflow": ("mlflow", "pip install 'plankton-cli[mlflow]'")}
RUN_TAG = "plankton.run_dir"
TENSORBOARD_DIR = "tensorboard"

_loggers: dict[tuple[Tracker, str], Any] = {}  # one logger per tracked run in this process


def require(kind: str) -> str:
    """`kind` if its package is installed, else one line saying what to install (exit 2)."""
    if kind not in LOGGERS:
        raise UsageError(f"--logger must be one of {', '.join(LOGGERS)}, not {kind!r}")
    module, install = PACKAGES.get(kind, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise UsageError(f"--logger {kind} needs the {module} package: {install}")
    return kind


@dataclass(frozen=True)
class Tracker:
    """Where a command's runs are tracked: `kind` (csv: only RUN/metrics.csv), `uri` (MLflow's tracking URI)."""

    kind: str = "csv"
    uri: str | None = None
    experiment: str = "plankton"

    @classmethod
    def of(cls, config: Any, command: str) -> Tracker:
        """The tracker a run's config asks for (its `logger` and `logger_uri`), for the runs of `command`."""
        return cls(config.logger, config.logger_uri, f"plankton-{command}")

    def logger(self, run_dir: Path) -> Any | None:
        """The Lightning logger of the run in `run_dir` (made once per process), None for `csv`."""
        if self.kind == "csv":
            return None
        run_dir = Path(run_dir).absolute()
        key = (self, str(run_dir))
        if key not in _loggers:
            require(self.kind)
            _loggers[key] = self._tensorboard(run_dir) if self.kind == "tensorboard" else self._mlflow(run_dir)
        return _loggers[key]

    def log_params(self, run_dir: Path, params: dict[str, Any]) -> None:
        """The run's recipe and options (nested keys joined by `/`). A parameter the run holds already keeps its
        value (MLflow refuses to change one): a run continued with, say, other --workers still logs."""
        logger = self.logger(run_dir)
        if logger is None:
            return
        flat = texts(params)
        if self.kind == "mlflow":
            held = logger.experiment.get_run(logger.run_id).data.params
            flat = {key: value for key, value in flat.items() if key not in held}
        if flat:
            logger.log_hyperparams(flat)

    def log_results(self, run_dir: Path, results: dict[str, Any], step: int | None = None) -> None:
        """The numbers among `results` (nested keys joined by `/`), e.g. a fold's test scores."""
        logger = self.logger(run_dir)
        metrics = numbers(results)
        if logger is not None and metrics:
            logger.log_metrics(metrics, step=step)
            logger.save()

    def _tensorboard(self, run_dir: Path) -> Any:
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name=TENSORBOARD_DIR, version="", default_hp_metric=False)

    def _mlflow(self, run_dir: Path) -> Any:
        from pytorch_lightning.loggers import MLFlowLogger

        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI") or "./mlruns"
        if "://" not in uri:
            uri = Path(uri).absolute().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless told otherwise; a local
            # folder is what a user without a tracking server has.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        existing = _mlflow_run(uri, self.experiment, str(run_dir))
        return MLFlowLogger(experiment_name=self.experiment, run_name=run_dir.name if existing is None else None,
                            tracking_uri=uri, tags={RUN_TAG: str(run_dir)}, run_id=existing)


def _mlflow_run(uri: str, experiment: str, run_dir: str) -> str | None:
    """The id of the MLflow run that tracks `run_dir` already (a resumed run, results after training)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_dir}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _leaves(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of each leaf of a nested mapping, the path joined with `/`."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def texts(data: dict[str, Any]) -> dict[str, str]:
    """A nested mapping as flat text parameters keyed by their path (`a/b`); lists as JSON."""
    return {name: value if isinstance(value, str) else json.dumps(value, default=str)
            for name, value in _leaves(data)}


def numbers(data: dict[str, Any]) -> dict[str, float]:
    """The finite numbers in a nested mapping, keyed by their path (`a/b`); lists, text and booleans are left out."""
    return {name: float(value) for name, value in _leaves(data)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}
