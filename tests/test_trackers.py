"""`--logger mlflow|tensorboard`: tiny pretrain → finetune → distill runs on the bundled demo images, tracked in an
MLflow file store (read back with MLflow's client) and in TensorBoard event files (read back with TensorBoard's
reader): the recipe as parameters, the metrics of every epoch, and the fold results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUNDLED, plankton

pytest.importorskip("mlflow", reason="mlflow-skinny is in the test extra: pip install -e '.[test]'")
pytest.importorskip("tensorboard", reason="tensorboard is in the test extra: pip install -e '.[test]'")

from mlflow.tracking import MlflowClient  # noqa: E402

from plankton_cli.train.trackers import RUN_TAG  # noqa: E402

DEMO = BUNDLED / "planktonclass-demo" / "demo-images"
ARCH = ["--img-size", "32", "--patch-size", "8", "--depth", "2", "--embed-dim", "64", "--num-heads", "2"]
EPOCHS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A store of the demo images; MAE pretraining and 2-fold fine-tuning tracked in MLflow (file store), a
    distillation tracked in TensorBoard."""
    work = tmp_path_factory.mktemp("trackers")
    store, mlruns = work / "store", work / "mlruns"
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # plankton allows the file store it is pointed at itself
    plankton("ingest", str(DEMO), "--store", str(store), check=True)
    tracked = ["--logger", "mlflow", "--logger-uri", str(mlruns)]
    plankton("pretrain", "--store", str(store), "--model", "vit_tiny_patch16_224", *ARCH, "--decoder-depth", "1",
             "--decoder-dim", "32", "--decoder-heads", "2", "--workers", "0", "--warmup-epochs", "0",
             "--batch-size", "16", "--effective-batch", "32", "--epochs", str(EPOCHS), "--recon-every", "0",
             "--out", str(work / "mae"), *tracked, check=True)
    plankton("finetune", "--store", str(store), "--init", str(work / "mae" / "encoder.safetensors"),
             "--labels", "all", "--folds", "2", "--epochs", str(EPOCHS), "--batch-size", "16",
             "--warmup-epochs", "1", "--workers", "0", "--out", str(work / "ft"), *tracked, check=True)
    plankton("distill", "--teacher", str(work / "ft" / "fold-0" / "model.safetensors"), "--store", str(store),
             "--student", "vit_tiny_patch16_224", "--img-size", "24", "--patch-size", "8", "--depth", "1",
             "--embed-dim", "32", "--num-heads", "2", "--workers", "0", "--batch-size", "16", "--epochs", str(EPOCHS),
             "--warmup-epochs", "1", "--out", str(work / "student"), "--logger", "tensorboard", check=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when told to
        yield work, MlflowClient(mlruns.as_uri())


def tracked_run(client: MlflowClient, experiment: str, run_dir: Path):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_dir}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs track {run_dir}"
    return runs[0]


def epochs_of(client: MlflowClient, run, metric: str) -> list[int]:
    """The epochs at which `metric` was logged (MLflow keeps Lightning's `epoch` metric at the same steps)."""
    steps = {m.step for m in client.get_metric_history(run.info.run_id, metric)}
    return sorted({int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch") if m.step in steps})


def test_pretraining_logs_its_recipe_and_every_epochs_loss_to_mlflow(runs):
    work, client = runs
    run = tracked_run(client, "plankton-pretrain", work / "mae")
    recipe = json.loads((work / "mae" / "recipe.json").read_text())
    assert float(run.data.params["config/lr"]) == pytest.approx(recipe["lr"])
    assert run.data.params["config/effective_batch"] == "32" and run.data.params["config/model"] == "vit_tiny_patch16_224"
    assert epochs_of(client, run, "train/loss_epoch") == list(range(EPOCHS))
    summary = json.loads((work / "mae" / "summary.json").read_text())
    assert run.data.metrics["summary/final_loss"] == pytest.approx(summary["final_loss"])


def test_each_fold_logs_its_epochs_and_test_results_and_the_run_its_mean(runs):
    work, client = runs
    for fold in (0, 1):
        fold_dir = work / "ft" / f"fold-{fold}"
        run = tracked_run(client, "plankton-finetune", fold_dir)
        result = json.loads((fold_dir / "result.json").read_text())
        recipe = json.loads((fold_dir / "recipe.json").read_text())
        assert float(run.data.params["recipe/lr"]) == pytest.approx(recipe["lr"])
        assert run.data.params["config/labels"] == "all"
        assert epochs_of(client, run, "val_macro_f1") == list(range(EPOCHS))
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert run.data.metrics[f"test/{metric}"] == pytest.approx(result[metric])
        baselines = result["baselines"]
        some = next(iter(baselines))
        assert run.data.metrics[f"test/baselines/{some}/macro_f1"] == pytest.approx(baselines[some]["macro_f1"])
    whole = tracked_run(client, "plankton-finetune", work / "ft")
    summary = json.loads((work / "ft" / "summary.json").read_text())
    assert whole.data.metrics["mean_std/macro_f1/mean"] == pytest.approx(summary["mean_std"]["macro_f1"]["mean"])
    assert whole.data.params["config/folds"] == "2"


def test_distillation_logs_to_tensorboard_event_files(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work, _ = runs
    events = EventAccumulator(str(work / "student" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    epochs = [int(e.value) for e in events.Scalars("epoch")]
    assert sorted(set(epochs)) == list(range(EPOCHS))
    summary = json.loads((work / "student" / "summary.json").read_text())
    assert events.Scalars("summary/teacher_agreement")[-1].value == pytest.approx(summary["teacher_agreement"])
    assert any(tag.startswith("train") for tag in tags)
    assert (work / "student" / "metrics.csv").exists()  # the CSV log is kept beside it


def test_a_tracker_whose_package_is_missing_says_what_to_install(tmp_path):
    """As Python sees a package that is not installed (`sys.modules[name] = None`): exit 2, one line."""
    code = ("import sys; sys.modules['mlflow'] = None; from plankton_cli.cli import main; "
            f"main(['finetune', '--store', {str(tmp_path)!r}, '--init', 'scratch', '--out', {str(tmp_path / 'o')!r},"
            " '--logger', 'mlflow'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: --logger mlflow needs the mlflow package: pip install 'plankton-cli[mlflow]'"]
