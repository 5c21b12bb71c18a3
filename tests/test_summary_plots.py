"""`plankton summarize` plots draw only what samples support: nothing across a pause in sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from plankton_cli.publish.summary_plots import display_name, plot_summary, segments


def table(times: list[str]) -> pd.DataFrame:
    rows = []
    for i, when in enumerate(times):
        for label, count in (("bubble__5555", 30 + i), ("detritus__84963", 50 - i)):
            rows.append({"acquired_at": pd.Timestamp(when, tz="UTC"), "class": label, "count": count,
                         "ml_analyzed": 5.0, "per_ml": count / 5.0})
    return pd.DataFrame(rows)


def coloured_runs(path) -> list[tuple[int, int]]:
    """(first, last) pixel columns of each run of columns holding a saturated (class-coloured) pixel: axes, ticks
    and text are black or grey, so only data and legend patches count."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    columns = np.flatnonzero(saturated.any(axis=0))
    runs, start = [], columns[0]
    for previous, column in zip(columns, columns[1:]):
        if column != previous + 1:
            runs.append((start, previous))
            start = column
    return runs + [(start, columns[-1])]


def test_two_bins_sixteen_months_apart_are_two_bars_not_an_area_across_the_gap(tmp_path):
    paths = plot_summary(table(["2023-01-10T10:00", "2024-05-20T10:00"]), tmp_path)
    overview = tmp_path / "overview.png"
    assert overview in paths
    width = Image.open(overview).width
    first, second, *legend = coloured_runs(overview)
    assert legend, "the legend's colour patches are right of the data"
    assert second[0] - first[1] > 0.4 * width  # background all the way between the two bars
    assert first[1] - first[0] < 0.05 * width and second[1] - second[0] < 0.05 * width
    # each class plot: two markers, no line between them
    first, second = coloured_runs(tmp_path / "bubble__5555.png")
    assert second[0] - first[1] > 0.5 * Image.open(tmp_path / "bubble__5555.png").width


def test_regular_sampling_is_joined_and_a_pause_breaks_it():
    times = pd.DatetimeIndex(pd.to_datetime(["2024-01-01T00:00", "2024-01-01T00:20", "2024-01-01T00:40",
                                             "2024-01-01T01:00", "2024-01-03T00:00", "2024-01-03T00:20"]))
    assert segments(times) == [slice(0, 4), slice(4, 6)]
    assert segments(times[:1]) == [slice(0, 1)]
    far = pd.DatetimeIndex(pd.to_datetime(["2023-01-10", "2024-05-20"]))
    assert segments(far) == [slice(0, 1), slice(1, 2)]  # the median gap is the gap: the cap keeps them apart


def test_plots_show_display_names():
    assert display_name("bubble__5555") == "bubble" and display_name("Mesodinium_rubrum") == "Mesodinium_rubrum"
