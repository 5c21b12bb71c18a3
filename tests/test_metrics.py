"""Scores agree with scikit-learn, the label-set convention holds, tables round-trip, plots are real PNGs."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from plankton_cli.train.metrics import (
    classification_metrics,
    format_mean_std,
    format_table_markdown,
    per_group_metrics,
    plot_confusion_matrix,
    plot_few_label_curve,
    plot_learning_curves,
    read_csv,
    short_class_name,
    short_class_names,
    summarise_folds,
    write_csv,
    write_json,
)
from conftest import SHARED



def assert_png(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        return image.size


# --- scores --------------------------------------------------------------------------------------------------------

Y_TRUE = ["diatom", "diatom", "diatom", "ciliate", "ciliate", "copepod", "copepod", "copepod", "copepod", "detritus"]
Y_PRED = ["diatom", "ciliate", "diatom", "ciliate", "copepod", "copepod", "copepod", "diatom", "copepod", "detritus"]


def test_metrics_agree_with_scikit_learn_when_predictions_stay_within_the_true_classes():
    result = classification_metrics(Y_TRUE, Y_PRED)
    assert result["n"] == 10 and result["n_classes"] == 4
    assert result["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED)) == pytest.approx(0.7)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y_TRUE, Y_PRED))
    assert result["macro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    precision, recall, f1, support = precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=sorted(set(Y_TRUE)))
    for index, label in enumerate(sorted(set(Y_TRUE))):
        row = result["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[index], recall[index], f1[index], support[index])
        )
    # By hand: diatom P 2/3 R 2/3; ciliate P 1/2 R 1/2; copepod P 3/4 R 3/4; detritus 1.
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 1) / 4)
    assert result["absent_classes"] == [] and result["predicted_only"] == []


def test_macro_averages_cover_only_the_classes_present_in_the_fold():
    y_true = ["a", "a", "b", "b"]
    y_pred = ["a", "c", "b", "b"]  # 'c' is known to the model but has no true image in this fold
    result = classification_metrics(y_true, y_pred, classes=["a", "b", "c", "d"])
    # F1: a = 2/3, b = 1 → 0.8333 over {a, b}; scikit-learn's default adds c (F1 0) → 0.5556,
    # and labels=[a, b, c, d] would give 0.4167.
    assert result["macro_f1"] == pytest.approx(5 / 6)
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=["a", "b"], average="macro"))
    assert f1_score(y_true, y_pred, average="macro") == pytest.approx(5 / 9)
    assert f1_score(y_true, y_pred, labels=["a", "b", "c", "d"], average="macro", zero_division=0) == pytest.approx(
        5 / 12
    )
    # The wrong 'c' still costs: accuracy and the recall of 'a' drop.
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["balanced_accuracy"] == pytest.approx(0.75)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns that y_pred has classes missing from y_true
        assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert result["absent_classes"] == ["c", "d"]
    assert result["predicted_only"] == ["c"]
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert result["per_class"]["d"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert result["per_class"]["a"]["recall"] == pytest.approx(0.5)


def test_metrics_refuse_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        classification_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no labels"):
        classification_metrics([], [])


def test_per_group_metrics_score_each_instrument_on_its_own():
    groups = ["IFCB"] * 5 + ["CytoSense"] * 5
    result = per_group_metrics(Y_TRUE, Y_PRED, groups, classes=sorted(set(Y_TRUE)))
    assert list(result) == ["CytoSense", "IFCB"]
    assert result["IFCB"] == classification_metrics(Y_TRUE[:5], Y_PRED[:5], sorted(set(Y_TRUE)))
    assert result["IFCB"]["absent_classes"] == ["copepod", "detritus"]
    assert result["CytoSense"]["accuracy"] == pytest.approx(0.8)


def test_fold_summary_uses_the_sample_standard_deviation():
    folds = [{"accuracy": a, "macro_f1": f, "balanced_accuracy": None} for a, f in [(0.9, 0.8), (0.8, 0.6), (0.7, 0.7)]]
    summary = summarise_folds(folds)
    assert summary["accuracy"] == pytest.approx({"mean": 0.8, "std": 0.1, "n": 3})
    assert summary["macro_f1"]["std"] == pytest.approx(np.std([0.8, 0.6, 0.7], ddof=1))
    assert "balanced_accuracy" not in summary
    assert summarise_folds(folds[:1])["accuracy"] == {"mean": 0.9, "std": 0.0, "n": 1}
    assert format_mean_std(0.7808, 0.0354) == "78.08 ± 3.54"
    with pytest.raises(ValueError):
        summarise_folds([])


# --- tables --------------------------------------------------------------------------------------------------------


def test_markdown_table_aligns_numbers_right():
    rows = [{"init": "imagenet", "labels": "1%", "macro_f1": 0.78123456}, {"init": "mae", "labels": "10%", "n": 3}]
    table = format_table_markdown(rows, ["init", "labels", "macro_f1", "n"])
    assert table == (
        "| init     | labels | macro_f1 | n |\n"
        "|----------|--------|---------:|--:|\n"
        "| imagenet | 1%     |   0.7812 |   |\n"
        "| mae      | 10%    |          | 3 |\n"
    )


def test_csv_and_json_writers_round_trip(tmp_path):
    rows = [{"fold": 0, "accuracy": 0.123456789012, "note": "ok"}, {"fold": 1, "accuracy": None, "note": "a,b"}]
    path = write_csv(rows, tmp_path / "out" / "folds.csv")
    assert read_csv(path) == [
        {"fold": 0.0, "accuracy": 0.123456789012, "note": "ok"},
        {"fold": 1.0, "accuracy": None, "note": "a,b"},
    ]
    document = {"accuracy": np.float32(0.5), "counts": np.array([1, 2]), "n": np.int64(3)}
    assert json.loads(write_json(document, tmp_path / "m.json").read_text()) == {
        "accuracy": 0.5, "counts": [1, 2], "n": 3
    }


# --- plots ---------------------------------------------------------------------------------------------------------


def test_class_names_are_shortened_for_axes():
    assert short_class_name("Copepoda__6666") == "Copepoda__6666"  # one display form everywhere
    assert short_class_name("living>Eukaryota>Harosa>Copepoda") == "Copepoda"
    long = short_class_name("Dolichospermum_Anabaenopsis_coiled")
    assert len(long) == 24 and long.startswith("Dolichospermum") and long.endswith("coiled") and "…" in long
    assert short_class_name("detritus") == "detritus"
    # Two names that would shorten to the same text keep their full names.
    assert short_class_names(["a>Copepoda", "b>Copepoda", "c>bubble"]) == ["a>Copepoda", "b>Copepoda", "bubble"]


def test_confusion_matrix_png_grows_with_the_number_of_classes(tmp_path):
    small = assert_png(plot_confusion_matrix(Y_TRUE, Y_PRED, None, tmp_path / "small.png"))
    rng = np.random.default_rng(0)
    classes = [f"Very_long_class_name_number_{i:02d}__{1000 + i}" for i in range(40)]
    y_true = list(rng.choice(classes, 400))
    y_pred = [t if rng.random() < 0.7 else rng.choice(classes) for t in y_true]
    large = assert_png(plot_confusion_matrix(y_true, y_pred, classes, tmp_path / "large.png", normalize=None))
    assert large[0] > small[0] and large[1] > small[1]


def test_confusion_matrix_of_real_uvp6_class_folders(tmp_path):
    root = SHARED / "images" / "uvp6-vignettes"
    if not root.is_dir():
        pytest.skip(f"shared UVP6 vignettes (GPL-3.0, not shipped) not found at {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert short_class_names(classes)[:3] == ["Acantharea__1111", "Aulacanthidae__2222", "Aulosphaeridae__3333"]
    y_true = [c for c in classes for _ in range(len(list((root / c).glob("*.png"))) // 50)]
    y_pred = y_true[1:] + y_true[:1]
    assert_png(plot_confusion_matrix(y_true, y_pred, classes, tmp_path / "uvp6.png"))


def test_learning_curves_from_a_lightning_style_csv(tmp_path):
    # CSVLogger writes step rows (train loss) and epoch rows (validation) with the other cells empty.
    rows = []
    for epoch in range(4):
        for step in range(3):
            rows.append({"epoch": epoch, "step": epoch * 3 + step, "train_loss": 2.0 / (epoch + 1) + 0.01 * step})
        rows.append({"epoch": epoch, "step": epoch * 3 + 2, "val_loss": 2.2 / (epoch + 1), "val_macro_f1": 0.2 * epoch})
    csv_path = write_csv(rows, tmp_path / "metrics.csv", ["epoch", "step", "train_loss", "val_loss", "val_macro_f1"])
    assert_png(plot_learning_curves(csv_path, tmp_path / "curves.png"))
    assert_png(plot_learning_curves(rows, tmp_path / "curves_from_rows.png"))
    with pytest.raises(ValueError, match="no learning-curve columns"):
        plot_learning_curves([{"epoch": 0, "lr": 0.1}], tmp_path / "none.png")


def test_few_label_curve_has_one_line_per_initialisation(tmp_path):
    results = [
        {"init": init, "labels": labels, "fold": fold, "macro_f1": base + gain * (1 - math.exp(-i)) + 0.01 * fold}
        for init, base, gain in (("imagenet", 0.5, 0.45), ("plankton-mae", 0.8, 0.18))
        for i, labels in enumerate(["1%", "5%", "10%", "all"])
        for fold in range(5)
    ][::-1]  # any order in: the x axis is sorted by label count
    assert_png(plot_few_label_curve(results, tmp_path / "few_label.png"))
    with pytest.raises(ValueError, match="no results with 'accuracy'"):
        plot_few_label_curve(results, tmp_path / "none.png", metric="accuracy")
