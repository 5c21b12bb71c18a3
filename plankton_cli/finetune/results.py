"""Results: every fold's ``result.json`` collected into summary.{json,csv,md} with mean ± std."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plankton_cli import metrics as M

def summarise_run(out: Path) -> dict[str, Any]:
    """Collect every ``fold-*/result.json`` of OUT into summary.{json,csv,md}; returns the summary document."""
    from plankton_cli.training import write_summary

    out = Path(out)
    results = sorted(
        (json.loads(p.read_text()) for p in out.glob("fold-*/result.json")), key=lambda r: r["fold"]
    )
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    if not results:
        return {"config": config, "folds": [], "mean_std": {}, "per_instrument": {}, "complete": False}
    summary = M.summarise_folds(results)
    instruments = sorted({name for r in results for name in r["per_instrument"]})
    per_instrument = {
        name: M.summarise_folds([r["per_instrument"][name] for r in results if name in r["per_instrument"]])
        for name in instruments
    }
    columns = ("fold", "n_train", "n_val", "n_test", *M.HEADLINE_METRICS)
    rows = [{c: r[c] for c in columns} for r in results]
    document = {
        "config": config,
        "folds": rows,
        "mean_std": summary,
        "per_instrument": per_instrument,
        "complete": len(results) == config.get("folds", len(results)),
    }
    write_summary(out, document)
    mean_row = {"fold": "mean ± std", **{m: M.format_mean_std(s["mean"], s["std"]) for m, s in summary.items()}}
    M.write_csv([*rows, {"fold": "mean", **{m: s["mean"] for m, s in summary.items()}},
                 {"fold": "std", **{m: s["std"] for m, s in summary.items()}}], out / "summary.csv", columns)
    (out / "summary.md").write_text(_summary_markdown(config, rows, mean_row, per_instrument), encoding="utf-8")
    return document


def _summary_markdown(config: dict, rows: list[dict], mean_row: dict, per_instrument: dict) -> str:
    shown = [{**row, **{m: f"{row[m] * 100:.2f}" for m in M.HEADLINE_METRICS}} for row in rows]
    lines = [
        f"# Fine-tuning: {config.get('init', '?')}, labels {config.get('labels', '?')}",
        "",
        f"Dataset `{config.get('dataset', '?')}` of `{config.get('store', '?')}`, {len(rows)} of "
        f"{config.get('folds', '?')} folds done; test scores in %, mean ± sample std over folds.",
        "",
        M.format_table_markdown([*shown, mean_row], ["fold", "n_train", "n_val", "n_test", *M.HEADLINE_METRICS]),
    ]
    if len(per_instrument) > 1:
        lines += ["## Per instrument", ""]
        lines.append(M.format_table_markdown([
            {"instrument": name, **{m: M.format_mean_std(s["mean"], s["std"]) for m, s in values.items()}}
            for name, values in per_instrument.items()
        ]))
    return "\n".join(lines)
