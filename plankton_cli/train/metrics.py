"""Scores for a classifier, summaries over folds, tables, and the plots of a few-label experiment.

Label-set convention (one, used everywhere): macro averages (macro-F1, balanced accuracy) are taken over the classes
present in `y_true` of the fold being scored. A prediction of a class that has no true image in the fold still
counts as an error (it lowers the recall of the true class and accuracy) but that class is not averaged in, and the
classes the model knows that the fold lacks are listed in `absent_classes`. scikit-learn's default would average
over y_true ∪ y_pred, and passing every known class as `labels=` lowers macro-F1 for classes a fold cannot contain
(method-recipe.md §5: 0.40 → 0.32 on a toy case).

Spread over folds is the sample standard deviation (ddof=1), 0 for a single fold: the paper reports "mean ±
standard deviation" over 5 folds without saying which.

Plots use matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), imported only when a plot
is drawn.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}

MAX_CLASSES_WITH_VALUES = 20
"""Confusion matrices print the value in each cell up to this many classes; beyond, the cells get too small."""


# --- scores --------------------------------------------------------------------------------------------------------


def classification_metrics(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], classes: Sequence[Hashable] | None = None
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1 and per-class precision/recall/F1/support, by the module's convention.

    `classes` are all the classes the model knows; those without a true image here go to `absent_classes`, and
    those predicted here without a true image to `predicted_only`. Per-class values that are undefined (recall and
    F1 of a class with no true image, precision of a class never predicted) are None, not 0.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"got {len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("nothing to score: no labels")
    present = sorted(set(y_true), key=str)
    known = list(classes) if classes is not None else []
    everything = sorted(set(known) | set(y_true) | set(y_pred), key=str)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=everything, zero_division=0
    )
    predicted = set(y_pred)
    per_class = {}
    for index, label in enumerate(everything):
        has_truth = support[index] > 0
        per_class[str(label)] = {
            "precision": float(precision[index]) if label in predicted else None,
            "recall": float(recall[index]) if has_truth else None,
            "f1": float(f1[index]) if has_truth else None,
            "support": int(support[index]),
        }
    # Macro averages over the classes present in y_true only (the convention above).
    present_index = [everything.index(label) for label in present]
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(recall[present_index])),
        "macro_f1": float(np.mean(f1[present_index])),
        "n_classes": len(present),
        "absent_classes": [str(label) for label in known if label not in set(y_true)],
        "predicted_only": [str(label) for label in everything if label in predicted and label not in set(y_true)],
        "per_class": per_class,
    }


def per_group_metrics(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    groups: Sequence[Hashable],
    classes: Sequence[Hashable] | None = None,
) -> dict[str, dict[str, Any]]:
    """`classification_metrics` for each group (e.g. instrument), keyed by the group's name, in sorted order."""
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError("y_true, y_pred and groups must have the same length")
    index_of: dict[Hashable, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        index_of[group].append(index)
    return {
        str(group): classification_metrics([y_true[i] for i in rows], [y_pred[i] for i in rows], classes)
        for group, rows in sorted(index_of.items(), key=lambda pair: str(pair[0]))
    }


def summarise_folds(per_fold: Sequence[Mapping[str, Any]], metrics: Iterable[str] = HEADLINE_METRICS) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one fold) of each metric over folds."""
    if not per_fold:
        raise ValueError("no folds to summarise")
    summary = {}
    for name in metrics:
        values = np.array([float(fold[name]) for fold in per_fold if fold.get(name) is not None])
        if values.size == 0:
            continue
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "n": int(values.size),
        }
    return summary


def format_mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """`78.08 ± 3.54`: the paper's way of writing a score over folds (in % by default)."""
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


# --- tables --------------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_table_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned, floats to 4 significant digits."""
    columns = list(columns) if columns is not None else _columns(rows)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(column), int | float) or row.get(column) is None for row in rows) and bool(rows)
        for column in columns
    ]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(columns), rule] + [line(values) for values in cells]) + "\n"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of every row, in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV with a header; missing values are empty cells, floats at full precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns) if columns is not None else _columns(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV file, with numbers turned back into floats and empty cells into None."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def write_json(document: Any, path: str | Path) -> Path:
    """Any metrics document as indented JSON (NumPy scalars converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# --- plots ---------------------------------------------------------------------------------------------------------


def short_class_name(name: Hashable, max_length: int = 24) -> str:
    """A class name short enough for an axis: `Eukaryota>…>Copepoda` → `Copepoda`, and anything still too long cut
    in the middle (`Dolichospermum…_coiled`), where names differ least often. Folder labels such as
    `Copepoda__6666` keep their EcoTaxa id: a label reads the same in models, outputs, tables and plots."""
    text = str(name)
    text = text.rsplit(">", 1)[-1].strip() or text  # EcoTaxa lineage: keep the leaf
    if len(text) > max_length:
        head = (max_length - 1) * 2 // 3
        tail = max_length - 1 - head
        text = f"{text[:head]}…{text[-tail:]}"
    return text


def short_class_names(names: Sequence[Hashable], max_length: int = 24) -> list[str]:
    """`short_class_name` for each name, falling back to the full name wherever two short names would collide."""
    short = [short_class_name(name, max_length) for name in names]
    seen: dict[str, int] = defaultdict(int)
    for text in short:
        seen[text] += 1
    return [text if seen[text] == 1 else str(name) for text, name in zip(short, names)]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_confusion_matrix(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    classes: Sequence[Hashable] | None,
    path: str | Path,
    normalize: str | None = "true",
    title: str | None = None,
) -> Path:
    """Save a confusion matrix as PNG: rows true, columns predicted; `normalize` as in scikit-learn
    ("true", "pred", "all" or None for counts). Size grows with the number of classes; values shown up to 20."""
    from sklearn.metrics import confusion_matrix

    labels = list(classes) if classes is not None else []
    labels += sorted((set(y_true) | set(y_pred)) - set(labels), key=str)  # never drop a predicted class
    matrix = confusion_matrix(y_true, y_pred, labels=labels, normalize=normalize)
    n = len(labels)
    side = min(30.0, max(4.0, 0.4 * n + 2.5))
    figure = _new_figure(side + 1.0, side)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8)
    names = short_class_names(labels)
    font = max(6, min(10, 200 // max(n, 1)))
    axes.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    axes.set_yticks(range(n), names, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or ("confusion matrix" + (f" (normalised over {normalize})" if normalize else "")))
    if n <= MAX_CLASSES_WITH_VALUES:
        high = np.nanmax(matrix) if matrix.size else 0
        for row in range(n):
            for column in range(n):
                value = matrix[row, column]
                if value == 0:
                    continue
                text = f"{value:.2f}" if normalize else str(int(value))
                colour = "white" if value > 0.6 * high else "black"
                axes.text(column, row, text, ha="center", va="center", fontsize=font - 1, color=colour)
    return _save(figure, path)


LEARNING_CURVE_COLUMNS = {
    "train_loss": ("train_loss_epoch", "train_loss", "train/loss"),
    "val_loss": ("val_loss", "val_loss_epoch", "val/loss"),
    "val_macro_f1": ("val_macro_f1", "val/macro_f1", "val_f1"),
}
"""Accepted column names (first found wins) in a Lightning CSVLogger `metrics.csv`."""


def _per_epoch(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> tuple[list[float], list[float]]:
    """Mean of one metric per epoch, over the rows that logged it (step-level rows average to the epoch value)."""
    column = next((name for name in names if any(row.get(name) not in (None, "") for row in rows)), None)
    if column is None:
        return [], []
    by_epoch: dict[float, list[float]] = defaultdict(list)
    for row in rows:
        value, epoch = row.get(column), row.get("epoch")
        if value in (None, "") or epoch in (None, ""):
            continue
        by_epoch[float(epoch)].append(float(value))
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[epoch])) for epoch in epochs]


def plot_learning_curves(metrics: str | Path | Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Train/validation loss and validation macro-F1 against epoch, from a CSVLogger file or rows with `epoch`."""
    rows = read_csv(metrics) if isinstance(metrics, str | Path) else list(metrics)
    curves = {key: _per_epoch(rows, names) for key, names in LEARNING_CURVE_COLUMNS.items()}
    if not any(epochs for epochs, _ in curves.values()):
        wanted = ", ".join(name for names in LEARNING_CURVE_COLUMNS.values() for name in names)
        raise ValueError(f"no learning-curve columns found (looked for: {wanted} with an epoch column)")
    figure = _new_figure(9, 3.5)
    loss_axes, f1_axes = figure.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        epochs, values = curves[key]
        if epochs:
            loss_axes.plot(epochs, values, marker="o", markersize=3, label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axes.legend()
    epochs, values = curves["val_macro_f1"]
    if epochs:
        f1_axes.plot(epochs, values, marker="o", markersize=3, color="tab:green")
    f1_axes.set(xlabel="epoch", ylabel="macro-F1", title="validation macro-F1", ylim=(0, 1))
    for axes in (loss_axes, f1_axes):
        axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_few_label_curve(
    results: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "macro_f1", title: str | None = None
) -> Path:
    """The paper's Figures 4/5: a metric against the labelled fraction, one line per initialisation.

    `results` holds one row per fold and run, with keys `init` (e.g. `imagenet`, `plankton-mae`), `labels` (a label
    spec: `1%`, `10/class`, `all`) and `metric`; the plot shows the mean over folds with the sample std as error bars.
    """
    from plankton_cli.train.protocol import parse_label_fraction

    values: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in results:
        if row.get(metric) is None:
            continue
        spec = parse_label_fraction(str(row["labels"]))
        values[str(row["init"])][spec].append(float(row[metric]))
    if not values:
        raise ValueError(f"no results with {metric!r} to plot")
    specs = sorted({spec for by_spec in values.values() for spec in by_spec}, key=lambda spec: spec.sort_key())
    position = {spec: index for index, spec in enumerate(specs)}

    figure = _new_figure(max(5.0, 1.2 * len(specs) + 2.5), 4)
    axes = figure.add_subplot()
    for init, by_spec in sorted(values.items()):
        ordered = sorted(by_spec, key=lambda spec: spec.sort_key())
        summary = [summarise_folds([{metric: v} for v in by_spec[spec]], [metric])[metric] for spec in ordered]
        axes.errorbar(
            [position[spec] for spec in ordered],
            [s["mean"] for s in summary],
            yerr=[s["std"] for s in summary],
            marker="o", capsize=4, label=init,
        )
    axes.set_xticks(range(len(specs)), [str(spec) for spec in specs])
    axes.set(xlabel="labelled training data", ylabel=METRIC_NAMES.get(metric, metric), title=title or "")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)
