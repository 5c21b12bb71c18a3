"""Plots of a summary table (`plankton summarize`): a time series per class and a stacked overview.

Concentrations (per mL) when every row has a volume, else counts. matplotlib's object API on an Agg canvas, as in
`metrics.py`; files written atomically.

A plot draws only what samples support: points are joined (line, stacked area) only across gaps no longer than
the sampling interval (`connected`), so a station that was off for a year shows two clusters, not a slope from
one to the other; a lone sample is a marker (per class) or a stacked bar (overview), and so is a stretch too short
to show as an area (a bar of its mean). Classes are shown by their
display name: `detritus__84963` (a folder label holding an EcoTaxa id) is titled `detritus`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from plankton_cli.core.atomic import atomic_path
from plankton_cli.core.writers import UNCLASSIFIED

OVERVIEW_CLASSES = 12  # the most abundant classes get their own colour; the rest are stacked as "other"
GAP_FACTOR = 1.5  # a gap over 1.5 sampling intervals (the median gap) is a pause in sampling: not joined
MAX_JOINED_GAP = pd.Timedelta(days=2)  # and never join across more than this, whatever the median says
_FOLDER_LABEL = re.compile(r"(?P<name>.+)__\d+")


def display_name(label: str) -> str:
    """`Name__12345` (a uvpec / EcoTaxa DOI class folder) -> `Name`; other labels as they are."""
    match = _FOLDER_LABEL.fullmatch(str(label))
    return match["name"] if match else str(label)


def segments(times: pd.DatetimeIndex) -> list[slice]:
    """Runs of consecutive (sorted) times whose gaps are within the sampling interval: the stretches a line or an
    area may join. The interval is the median gap, capped at `MAX_JOINED_GAP` (two samples a year apart have a
    median gap of a year, and still nothing between them)."""
    if len(times) < 2:
        return [slice(0, len(times))]
    gaps = pd.Series(times[1:] - times[:-1])
    limit = min(gaps.median() * GAP_FACTOR, MAX_JOINED_GAP)
    breaks = [i + 1 for i, gap in enumerate(gaps) if gap > limit]
    starts, ends = [0, *breaks], [*breaks, len(times)]
    return [slice(a, b) for a, b in zip(starts, ends)]


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


def plot_summary(table: pd.DataFrame, folder: Path, *, per_class: bool = True) -> list[Path]:
    """`folder/<class>.png` for every class with a count (unless not `per_class`), and `folder/overview.png`;
    returns the paths."""
    value, unit = ("per_ml", "per mL") if table["ml_analyzed"].notna().all() else ("count", "count")
    wide = table.pivot_table(index="acquired_at", columns="class", values=value, aggfunc="sum", sort=True)
    runs = segments(wide.index)
    totals = table.groupby("class")["count"].sum()
    paths = []
    for label in totals[totals > 0].index if per_class else []:
        figure = _figure(6, 2.5)
        axes = figure.add_subplot()
        for run in runs:  # one line per stretch of regular sampling, markers on every sample
            axes.plot(wide.index[run], wide[label].iloc[run], marker="o", markersize=3, linewidth=1, color="C0")
        axes.set_title(display_name(label))
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
        values = stacked.fillna(0).T.to_numpy()
        colors = [f"C{i % 10}" for i in range(len(stacked.columns))]
        names = [display_name(c) for c in stacked.columns]
        # a bar: wide enough to see (1/150 of the time axis), narrow next to it
        span = (wide.index[-1] - wide.index[0]) if len(wide.index) > 1 else pd.Timedelta(days=1)
        width = span / 150 or pd.Timedelta(hours=1)
        for run in runs:
            times = stacked.index[run]
            if times[-1] - times[0] > width:
                axes.stackplot(times, values[:, run], colors=colors)
                continue
            # a lone sample, or a stretch too short to see as an area (minutes on a years-long axis): one stacked
            # bar of its mean, centred on it
            bottom = 0.0
            middle = times[0] + (times[-1] - times[0]) / 2
            for row, color in zip(values[:, run], colors):
                axes.bar(middle, float(row.mean()), width=width, bottom=bottom, color=color)
                bottom += float(row.mean())
        for name, color in zip(names, colors):  # one legend entry per class, however many stretches
            axes.fill_between([], [], color=color, label=name)
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes.set_title(f"all classes ({unit})")
    axes.set_ylabel(unit)
    axes.set_ylim(bottom=0)
    figure.autofmt_xdate()
    paths.append(_save(figure, folder / "overview.png"))
    return paths
