"""`plankton evaluate` agrees with scikit-learn, folds and instruments included."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from conftest import plankton
from plankton_cli.publish.evaluate import evaluate

CASE = {  # two folds of a hand-made three-class problem, two instruments
    "fold-0": (["a", "a", "b", "b", "c", "c"], ["a", "b", "b", "b", "c", "a"], ["IFCB"] * 3 + ["FlowCam"] * 3),
    "fold-1": (["a", "b", "b", "c", "c", "c"], ["a", "b", "c", "c", "c", "unclassified"], ["IFCB"] * 6),
}


def make_run(root, name, labels, init):
    run = root / name
    for fold, (y, p, inst) in CASE.items():
        (run / fold).mkdir(parents=True)
        pq.write_table(pa.table({"object_id": [f"{fold}-{i}" for i in range(len(y))], "label": y, "pred": p,
                                 "instrument": inst}), run / fold / "test_predictions.parquet")
        (run / fold / "model.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    (run / "config.json").write_text(json.dumps({"labels": labels, "init": init}))
    return run


def test_fold_metrics_match_scikit_learn(tmp_path):
    run = make_run(tmp_path, "r", "10%", "mae")
    report = evaluate([run], tmp_path / "out")
    folds = report["runs"][0]["folds"]
    for result, (y, p, _) in zip(folds, CASE.values()):
        assert result["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
        assert result["macro_f1"] == pytest.approx(f1_score(y, p, labels=sorted(set(y)), average="macro"))
    summary = report["runs"][0]["summary"]["macro_f1"]
    values = [f1_score(y, p, labels=sorted(set(y)), average="macro") for y, p, _ in CASE.values()]
    assert summary["mean"] == pytest.approx(np.mean(values)) and summary["std"] == pytest.approx(np.std(values, ddof=1))
    flow = report["runs"][0]["per_instrument"]["FlowCam"]["accuracy"]["mean"]
    assert flow == pytest.approx(accuracy_score(["b", "c", "c"], ["b", "c", "a"]))
    for name in ("summary.md", "summary.csv", "per_class.csv", "evaluation.json", "confusion_r.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_several_runs_draw_the_few_label_curve_via_the_cli(tmp_path):
    runs = [make_run(tmp_path, f"{init}-{labels}", labels, init) for init in ("mae", "scratch")
            for labels in ("5%", "10%")]
    proc = plankton("evaluate", *map(str, runs), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["table"]) == 4 and (tmp_path / "out" / "few_label_curve.png").stat().st_size > 0


def test_baselines_scored_by_finetune_are_shown_beside_the_model(tmp_path):
    run = make_run(tmp_path, "r", "10%", "mae")
    # What `plankton finetune` writes per fold: the model's scores and its baselines' on the same test part.
    for fold in CASE:
        result = {"fold": int(fold[-1]), "baselines": {"pixel_logreg": {"accuracy": 0.9, "balanced_accuracy": 0.9,
                                                                        "macro_f1": 0.9 - 0.1 * int(fold[-1])}},
                  "protocol": "budget", "n_train": 40 + int(fold[-1]), "n_val": 12, "n_labelled": 52 + int(fold[-1])}
        (run / fold / "result.json").write_text(json.dumps(result))
    report = evaluate([run], tmp_path / "out")
    baseline = report["runs"][0]["baselines"]["pixel_logreg"]["macro_f1"]
    assert baseline["mean"] == pytest.approx(0.85) and baseline["std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    (row,) = report["table"]
    assert row["best baseline"].startswith("pixel_logreg 85.00") and row["vs baseline"] == "LOSES"
    # Every label the folds used is counted, validation included (means over the two folds).
    assert (row["protocol"], row["labelled (train + val)"]) == ("budget", "40 + 12 = 52")
    assert report["runs"][0]["labelled"]["total"] == {"min": 52, "max": 53, "mean": 52.5}
    assert "LOSES" in (tmp_path / "out" / "summary.md").read_text()


def test_the_verdict_names_the_heads_kept_and_the_margin_over_the_best_baseline(tmp_path):
    run = make_run(tmp_path, "r", "10%", "mae")
    # Fold 0 kept the forest, fold 1 the fine-tuned ViT; the model's own macro-F1 comes from its test predictions.
    for fold, head in zip(CASE, ("forest", "finetune")):
        result = {"fold": int(fold[-1]), "head": head, "baselines": {
            "pixel_logreg": {"accuracy": 0.1, "balanced_accuracy": 0.1, "macro_f1": 0.1},
            "features_rf": {"accuracy": 0.2, "balanced_accuracy": 0.2, "macro_f1": 0.2}}}
        (run / fold / "result.json").write_text(json.dumps(result))
    proc = plankton("evaluate", str(run), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    model = report["runs"][0]["summary"]["macro_f1"]["mean"] * 100
    assert report["runs"][0]["heads"] == {"forest": 1, "finetune": 1} and report["table"][0]["vs baseline"] == "beats"
    (sentence,) = report["verdicts"]
    assert sentence == (f"r: the model (head kept: forest on 1 of 2 folds, finetune on 1 of 2 folds), macro-F1 "
                        f"{model:.2f}, beats the best baseline, features_rf (20.00), by {round(model, 2) - 20:.2f} "
                        "points.")
    assert sentence in proc.stdout and sentence in (tmp_path / "out" / "summary.md").read_text()
