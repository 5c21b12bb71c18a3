"""`plankton evaluate`: metrics, tables and plots from fine-tune runs or from predictions + the store's labels.

Every number comes from scikit-learn through `plankton_cli.train.metrics` (its label-set convention: macro averages are
over the classes present in each fold's true labels; classes only predicted count as errors but are not averaged;
`unclassified` predictions count as errors).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from plankton_cli.train import metrics
from plankton_cli.core.mismatch import run_warnings
from plankton_cli.core.errors import DataError, UsageError
from plankton_cli.train.protocol import label_accounting
from plankton_cli.store import Store

log = logging.getLogger("plankton.evaluate")


def _read_table(path: Path):
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path)
    return pq.read_table(path)


def _column(table, *names):
    for name in names:
        if name in table.column_names:
            return table[name].to_pylist()
    raise KeyError(f"none of the columns {names} in {table.column_names}")


def _fold_dirs(run: Path) -> list[Path]:
    folds = sorted(p for p in run.glob("fold-*") if (p / "test_predictions.parquet").exists())
    if not folds:
        raise UsageError(f"{run} has no fold-*/test_predictions.parquet: is it a `plankton finetune` run?", path=run)
    return folds


def evaluate_run(run: Path, out_dir: Path) -> dict:
    """Per-fold and mean ± std metrics of one fine-tune run, per-instrument results and a confusion matrix."""
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    per_fold, y_true_all, y_pred_all = [], [], []
    per_instrument: dict[str, list] = {}
    classes = None
    for fold in _fold_dirs(run):
        table = pq.read_table(fold / "test_predictions.parquet")
        y_true, y_pred = _column(table, "label", "true"), _column(table, "pred", "prediction")
        model_info = fold / "model.json"
        if classes is None and model_info.exists():
            classes = json.loads(model_info.read_text())["classes"]  # all a table needs; no model is built
        result = metrics.classification_metrics(y_true, y_pred, classes)
        result["fold"] = fold.name
        per_fold.append(result)
        y_true_all += y_true
        y_pred_all += y_pred
        if "instrument" in table.column_names:
            groups = metrics.per_group_metrics(y_true, y_pred, _column(table, "instrument"), classes)
            for group, res in groups.items():
                per_instrument.setdefault(group, []).append(res)
    name = run.name
    baselines = _baselines(run)
    labelled = _labelled(run)
    heads = _heads(run)
    metrics.plot_confusion_matrix(y_true_all, y_pred_all, classes or sorted(set(y_true_all)),
                                  out_dir / f"confusion_{name}.png")
    pooled = metrics.classification_metrics(y_true_all, y_pred_all, classes)
    return {
        "run": str(run),
        "init": config.get("init"),
        "labels": config.get("labels"),
        "store": config.get("store"),
        "classes": classes,
        "instruments": config.get("instruments"),
        "folds": per_fold,
        "summary": metrics.summarise_folds(per_fold),
        "per_instrument": {k: metrics.summarise_folds(v) for k, v in per_instrument.items()},
        "per_class": pooled["per_class"],
        "baselines": baselines,
        "protocol": labelled.pop("protocol"),
        "labelled": labelled,
        "heads": heads,
    }


def _labelled(run: Path) -> dict:
    """Labelled objects per fold for training, for validation and in total (from the folds' result.json), and
    the protocol that drew them: validation labels are labels too, and a comparison must count them."""
    results = [json.loads(p.read_text()) for p in sorted(run.glob("fold-*/result.json"))]
    rows = [{"n_train": r["n_train"], "n_val": r["n_val"], "n_labelled": r.get("n_labelled", r["n_train"] + r["n_val"])}
            for r in results if "n_train" in r]
    protocol = results[0].get("protocol", "paper") if results else "?"  # older runs: the paper's protocol
    return {**label_accounting(rows), "protocol": protocol}


def _heads(run: Path) -> dict[str, int]:
    """How many folds kept each head (`--head auto` chooses per fold; a run without the choice fine-tuned)."""
    counts: dict[str, int] = {}
    for path in sorted(run.glob("fold-*/result.json")):
        head = json.loads(path.read_text()).get("head", "finetune")
        counts[head] = counts.get(head, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def verdict(run: dict) -> str | None:
    """One sentence on a run against its best baseline by mean macro-F1, in points as the tables show them (equal
    to 2 decimals is level), naming the heads its folds kept; None without baselines."""
    model = run["summary"].get("macro_f1", {}).get("mean")
    if not run["baselines"] or model is None:
        return None
    name, best = max(run["baselines"].items(), key=lambda kv: kv[1]["macro_f1"]["mean"])
    ours, theirs = round(model * 100, 2), round(best["macro_f1"]["mean"] * 100, 2)
    folds = sum(run["heads"].values())
    kept = ", ".join(f"{head} on {n} of {folds} folds" for head, n in run["heads"].items())
    if ours > theirs:
        how = f"beats the best baseline, {name} ({theirs:.2f}), by {ours - theirs:.2f} points"
    elif ours == theirs:
        how = f"is level with the best baseline, {name} ({theirs:.2f})"
    else:
        how = f"LOSES to the best baseline, {name} ({theirs:.2f}), by {theirs - ours:.2f} points"
    return f"{Path(run['run']).name}: the model (head kept: {kept}), macro-F1 {ours:.2f}, {how}."


def _baselines(run: Path) -> dict:
    """Mean ± std over folds of the baselines that `plankton finetune` scored beside the model (result.json)."""
    results = [json.loads(p.read_text()) for p in sorted(run.glob("fold-*/result.json"))]
    names = sorted({name for r in results for name in r.get("baselines", {})})
    return {name: metrics.summarise_folds([r["baselines"][name] for r in results if name in r.get("baselines", {})])
            for name in names}


def evaluate_predictions(predictions: Path, store: Store, out_dir: Path, *, statuses=("validated",)) -> dict:
    """Predictions (from `predict --to parquet|csv`, or the store's `predictions` dataset) against stored labels."""
    table = _read_table(predictions) if predictions.exists() else None
    if table is None:
        raise FileNotFoundError(predictions)
    pred = dict(zip(_column(table, "object_id"), _column(table, "label")))
    truth = store.dataset("objects").to_table(
        columns=["object_id", "label", "instrument"],
        filter=ds.field("label").is_valid() & ds.field("label_status").isin(list(statuses)))
    foreign = sorted(set(pred.values()) - set(truth["label"].to_pylist()) - {"unclassified"})
    if foreign:  # a model trained on other classes: its labels can never be right here
        log.warning("%d predicted classes are not labels in %s (%s): the model was trained on other classes",
                    len(foreign), store.root, ", ".join(map(str, foreign[:10])))
    rows = [(o, label, i) for o, label, i in zip(*(truth[c].to_pylist() for c in ("object_id", "label", "instrument")))
            if o in pred]
    if not rows:
        raise DataError(f"no predicted object of {predictions} has a {'/'.join(statuses)} label in {store.root}")
    ids, y_true, groups = zip(*rows)
    y_pred = [pred[o] for o in ids]
    result = metrics.classification_metrics(list(y_true), y_pred)
    metrics.plot_confusion_matrix(list(y_true), y_pred, sorted(set(y_true)), out_dir / "confusion_predictions.png")
    return {
        "predictions": str(predictions),
        "n_matched": len(rows),
        "n_predictions": len(pred),
        "metrics": result,
        "per_instrument": metrics.per_group_metrics(list(y_true), y_pred, list(groups)),
    }


def _labelled_text(labelled: dict) -> str:
    """`41 + 12 = 53` per fold (means, rounded), or `?` for a run without its folds' result.json."""
    if not labelled.get("total"):
        return "?"
    return " + ".join(f"{labelled[k]['mean']:.0f}" for k in ("train", "val")) + f" = {labelled['total']['mean']:.0f}"


def evaluate(runs: list[Path], out_dir: Path, *, predictions: Path | None = None, store: Store | None = None) -> dict:
    """Evaluate fine-tune runs (and/or a predictions file) and write tables (MD, CSV, JSON) and plots to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"runs": [evaluate_run(Path(r), out_dir) for r in runs]}
    rows = []
    for r in report["runs"]:
        row = {"run": Path(r["run"]).name, "init": r["init"], "labels": r["labels"], "folds": len(r["folds"]),
               "protocol": r["protocol"], "labelled (train + val)": _labelled_text(r["labelled"])}
        for m, s in r["summary"].items():
            row[m] = metrics.format_mean_std(s["mean"], s["std"])
        if r["baselines"]:
            # The best baseline by macro-F1 beside the model, and a plain word when the model loses to it.
            name, best = max(r["baselines"].items(), key=lambda kv: kv[1]["macro_f1"]["mean"])
            row["best baseline"] = f"{name} {metrics.format_mean_std(best['macro_f1']['mean'], best['macro_f1']['std'])}"
            model = r["summary"].get("macro_f1", {}).get("mean")
            # Compared as shown (points to 2 decimals), as `verdict` words it: the same predictions are level.
            ours, theirs = round((model or 0.0) * 100, 2), round(best["macro_f1"]["mean"] * 100, 2)
            row["vs baseline"] = "LOSES" if ours < theirs else "level" if ours == theirs else "beats"
        rows.append(row)
    report["verdicts"] = [v for v in map(verdict, report["runs"]) if v]
    if rows:
        (out_dir / "summary.md").write_text(metrics.format_table_markdown(rows) + "\n"
                                            + "".join(f"\n{v}\n" for v in report["verdicts"]))
        metrics.write_csv(rows, out_dir / "summary.csv")
        per_class = [{"run": Path(r["run"]).name, "class": c, **v} for r in report["runs"]
                     for c, v in r["per_class"].items()]
        metrics.write_csv(per_class, out_dir / "per_class.csv")
        curve = [{"init": r["init"] or Path(r["run"]).name, "labels": r["labels"] or "?", **f}
                 for r in report["runs"] for f in r["folds"]]
        if len({(c["init"], c["labels"]) for c in curve}) > 1:
            metrics.plot_few_label_curve(curve, out_dir / "few_label_curve.png")
            report["few_label_curve"] = str(out_dir / "few_label_curve.png")
    if predictions is not None:
        if store is None:
            raise ValueError("evaluating predictions needs the store that holds the labels")
        report["predictions"] = evaluate_predictions(predictions, store, out_dir)
    report["table"] = rows
    report["warnings"] = run_warnings(report["runs"]) if len(report["runs"]) > 1 else []
    for warning in report["warnings"]:
        log.warning("%s", warning)
    metrics.write_json(report, out_dir / "evaluation.json")
    return report
