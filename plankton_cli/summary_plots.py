"""Plots of a summary table (`plankton summarize`): a time series per class and a stacked overview.

Concentrations (per mL) when every row has a volume, else counts. matplotlib's object API on an Agg canvas, as in
`metrics.py`; files written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from plankton_cli.atomic import atomic_path
from plankton_cli.writers import UNCLASSIFIED

OVERVIEW_CLASSES = 12  # the most abundant classes get their own colour; the rest are stacked as "other"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return path


def file_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "class"


def plot_summary(table: pd.DataFrame, folder: Path) -> list[Path]:
    """`folder/<class>.png` for every class with a count, and `folder/overview.png`; returns the paths."""
    value, unit = ("per_ml", "per mL") if table["ml_analyzed"].notna().all() else ("count", "count")
    wide = table.pivot_table(index="acquired_at", columns="class", values=value, aggfunc="sum", sort=True)
    totals = table.groupby("class")["count"].sum()
    paths = []
    for label in totals[totals > 0].index:
        figure = _figure(6, 2.5)
        axes = figure.add_subplot()
        axes.plot(wide.index, wide[label], marker="o", markersize=3, linewidth=1)
        axes.set_title(label)
        axes.set_ylabel(unit)
        axes.set_ylim(bottom=0)
        figure.autofmt_xdate()
        paths.append(_save(figure, folder / f"{file_stem(label)}.png"))
    ranked = [c for c in totals.sort_values(ascending=False).index if c != UNCLASSIFIED and totals[c] > 0]
    shown = ranked[:OVERVIEW_CLASSES]
    stacked = wide[shown].copy()
    rest = [c for c in wide.columns if c not in shown]
    if rest:
        stacked["other"] = wide[rest].sum(axis=1)
    figure = _figure(9, 4)
    axes = figure.add_subplot()
    if len(stacked.columns):
        axes.stackplot(stacked.index, stacked.fillna(0).T.to_numpy(), labels=list(stacked.columns))
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes.set_title(f"all classes ({unit})")
    axes.set_ylabel(unit)
    figure.autofmt_xdate()
    paths.append(_save(figure, folder / "overview.png"))
    return paths
