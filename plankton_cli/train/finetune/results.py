"""Results: every fold's ``result.json`` collected into summary.{json,csv,md} with mean ± std."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plankton_cli.train import metrics as M
from plankton_cli.train.protocol import describe_labelled, label_accounting

COMPARED_METRIC = "macro_f1"  # what "the model loses to a baseline" is judged by (the recommended single metric)


def summarise_run(out: Path) -> dict[str, Any]:
    """Collect every ``fold-*/result.json`` of OUT into summary.{json,csv,md}; returns the summary document."""
    from plankton_cli.train.training import write_summary

    out = Path(out)
    results = sorted(
        (json.loads(p.read_text()) for p in out.glob("fold-*/result.json")), key=lambda r: r["fold"]
    )
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    if not results:
        return {"config": config, "folds": [], "mean_std": {}, "per_instrument": {}, "complete": False,
                "protocol": config.get("protocol", "paper"), "labelled": label_accounting([]),
                "heads": {}, "baselines": {}, "loses_to": []}
    summary = M.summarise_folds(results)
    instruments = sorted({name for r in results for name in r["per_instrument"]})
    per_instrument = {
        name: M.summarise_folds([r["per_instrument"][name] for r in results if name in r["per_instrument"]])
        for name in instruments
    }
    columns = ("fold", "head", "n_train", "n_val", "n_labelled", "n_test", *M.HEADLINE_METRICS)
    rows = [{c: r.get(c, "finetune" if c == "head" else None) for c in columns} for r in results]
    for row, r in zip(rows, results):  # results written before n_labelled was recorded
        row["n_labelled"] = r.get("n_labelled", r["n_train"] + r["n_val"])
    heads, baselines = _summarise_named(results, "heads"), _summarise_named(results, "baselines")
    document = {
        "config": config,
        "folds": rows,
        "mean_std": summary,
        "per_instrument": per_instrument,
        "complete": len(results) == config.get("folds", len(results)),
        # Folds written before the protocol was recorded used the paper's.
        "protocol": results[0].get("protocol", config.get("protocol", "paper")),
        "labelled": label_accounting(rows),
        "heads": heads,
        "baselines": baselines,
        "loses_to": loses_to(summary, baselines),
    }
    write_summary(out, document)
    mean_row = {"fold": "mean ± std", **{m: M.format_mean_std(s["mean"], s["std"]) for m, s in summary.items()}}
    M.write_csv([*rows, {"fold": "mean", **{m: s["mean"] for m, s in summary.items()}},
                 {"fold": "std", **{m: s["std"] for m, s in summary.items()}}], out / "summary.csv", columns)
    markdown = (_summary_markdown(config, rows, mean_row, per_instrument, document)
                + _comparison_markdown(document))
    (out / "summary.md").write_text(markdown, encoding="utf-8")
    return document


def _summarise_named(results: list[dict], key: str) -> dict[str, dict[str, Any]]:
    """Mean ± std over folds of each candidate head or baseline in the folds' ``result[key]``."""
    names = sorted({name for r in results for name in r.get(key, {})})
    return {name: M.summarise_folds([r[key][name] for r in results if name in r.get(key, {})]) for name in names}


def loses_to(model: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> list[str]:
    """The baselines whose mean test macro-F1 beats the model's."""
    if COMPARED_METRIC not in model:
        return []
    ours = model[COMPARED_METRIC]["mean"]
    return [name for name, s in baselines.items() if s[COMPARED_METRIC]["mean"] > ours]


def _comparison_markdown(document: dict[str, Any]) -> str:
    """The model beside its candidate heads and the baselines, and a plain sentence when it loses."""
    if not document["baselines"] and len(document["heads"]) < 2:
        return ""
    def row(name: str, scores: dict) -> dict:
        return {"": name, **{m: M.format_mean_std(s["mean"], s["std"]) for m, s in scores.items()}}

    table = [row("**model** (chosen head per fold)", document["mean_std"])]
    if len(document["heads"]) > 1:
        table += [row(f"head {name}", {m: s for m, s in scores.items() if m in M.HEADLINE_METRICS})
                  for name, scores in document["heads"].items()]
    table += [row(f"baseline {name}", {m: s for m, s in scores.items() if m in M.HEADLINE_METRICS})
              for name, scores in document["baselines"].items()]
    total = document["labelled"]["total"]
    fitted = f"{int(total['mean'])}" if total and total["min"] == total["max"] else "the same"
    lines = ["", "", "## Beside the baselines", "",
             f"Same folds and test parts; each baseline is fitted on {fitted} labelled objects per fold, every one the "
             "model used (training + validation); test scores in %.", "",
             M.format_table_markdown(table, ["", *M.HEADLINE_METRICS])]
    if document["loses_to"]:
        ours = document["mean_std"][COMPARED_METRIC]["mean"] * 100
        worse = ", ".join(f"{name} ({document['baselines'][name][COMPARED_METRIC]['mean'] * 100:.2f})"
                          for name in document["loses_to"])
        lines += ["", f"**The model loses to a baseline**: macro-F1 {ours:.2f} against {worse}."]
    return "\n".join(lines)


def _summary_markdown(config: dict, rows: list[dict], mean_row: dict, per_instrument: dict, document: dict) -> str:
    shown = [{**row, **{m: f"{row[m] * 100:.2f}" for m in M.HEADLINE_METRICS}} for row in rows]
    columns = ["fold", "head", "n_train", "n_val", "n_labelled", "n_test", *M.HEADLINE_METRICS]
    lines = [
        f"# Fine-tuning: {config.get('init', '?')}, labels {config.get('labels', '?')}",
        "",
        f"Dataset `{config.get('dataset', '?')}` of `{config.get('store', '?')}`, {len(rows)} of "
        f"{config.get('folds', '?')} folds done; test scores in %, mean ± sample std over folds.",
        "",
        describe_labelled(document["labelled"], document["protocol"]).capitalize() + ".",
        "",
        M.format_table_markdown([*shown, mean_row], columns),
    ]
    if len(per_instrument) > 1:
        lines += ["## Per instrument", ""]
        lines.append(M.format_table_markdown([
            {"instrument": name, **{m: M.format_mean_std(s["mean"], s["std"]) for m, s in values.items()}}
            for name, values in per_instrument.items()
        ]))
    return "\n".join(lines)
