"""A station's tenth year against its first: each nightly step's time as the store grows, as ratios to night 1.

A simulated IFCB station adds NIGHTS of BINS bins x ROIS ROIs to one store, running the nightly job's steps each
night (ingest, predict into the store and IFCB class files, summarize, report). At the nights given by --at (and at
each tenth night after the last one while the --minutes budget lasts), every step is timed on the night just added
(and the no-op re-runs of ingest and predict, and `plankton info`), and printed as a ratio to its time at night 1
(the report's to night 8: it reads the trailing week).
Times are CPU seconds of this process (all its threads), as issue #22 measured them: on a machine shared with other
work, wall time measures the neighbours; a step that can run again without changing anything (a no-op re-run,
report, info) is timed REPEAT times and its least time kept.

The bins are real IFCB V2 bins made from the bundled pyifcb test bin (tests/data/ifcb, MIT): its 19 ROIs (pixels
and ADC lines) repeated to ROIS per bin under bin ids one hour apart, one day per night. The model is a real
exported classifier, a tiny ViT at 32 px (2 blocks, width 64; untrained weights: the steps' costs, not accuracy,
are measured here), predicting through the real CPU path. The clock of predict and ingest is the simulated night's
(predictions and rejections are stamped with it), so the report's night is the night's, as at a station.

    python bench/scale.py [--bins 24] [--rois 1000] [--at 1 30 300] [--minutes 20]

One function per measurement (`STEPS`): another measurement is another function and a line in `STEPS`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "tests/data/ifcb/pyifcb-testdata/white/D2013/D201305/D20130526/D20130526T095207_IFCB013"
FIRST_NIGHT = date(2024, 1, 1)
ADC_TRIGGER, ADC_START_BYTE = 0, 17  # V2 ADC columns (plankton_plugins.ifcb.bins SCHEMA_V2)


def make_bin(base: Path, rois: int) -> None:
    """A V2 bin at `base` (.hdr/.adc/.roi) with `rois` ROIs: the template's ROIs repeated, triggers and START_BYTE
    renumbered so every ROI has its own bytes."""
    from plankton_plugins.ifcb.bins import SCHEMA_V2, allowed_column_counts, parse_adc

    adc = TEMPLATE.with_suffix(".adc").read_bytes()
    roi = TEMPLATE.with_suffix(".roi").read_bytes()
    rows = [r for r in parse_adc(adc, SCHEMA_V2, allowed_column_counts(SCHEMA_V2)) if getattr(r, "has_image", False)]
    lines, chunks, offset = [], [], 0
    for i in range(rois):
        row = rows[i % len(rows)]
        fields = list(row.fields)
        fields[ADC_TRIGGER], fields[ADC_START_BYTE] = str(i + 1), str(offset)
        lines.append(",".join(fields))
        chunks.append(roi[row.start_byte:row.start_byte + row.n_bytes])
        offset += row.n_bytes
    base.with_suffix(".adc").write_text("\n".join(lines) + "\n")
    base.with_suffix(".roi").write_bytes(b"".join(chunks))
    base.with_suffix(".hdr").write_bytes(TEMPLATE.with_suffix(".hdr").read_bytes())


@contextlib.contextmanager
def clock(when: datetime):
    """The store writers' clock set to `when` (the simulated night): predictions and rejections carry its date."""
    import plankton_cli.ingest as ingest_module
    import plankton_cli.infer.predictions as predictions_module

    class Night(datetime):
        @classmethod
        def now(cls, tz=None):
            return when

    saved = ingest_module.datetime, predictions_module.datetime
    ingest_module.datetime = predictions_module.datetime = Night
    try:
        yield
    finally:
        ingest_module.datetime, predictions_module.datetime = saved


@dataclass
class Station:
    root: Path
    bins: int
    rois: int
    nights: int = 0
    classes: list[str] = field(default_factory=lambda: [f"class_{i:02d}" for i in range(20)])

    def __post_init__(self) -> None:
        sys.path.insert(0, str(REPO / "tests"))
        from plankton_cli.store import Store
        from test_predict import PADDING, tiny_model

        self.data = self.root / "ifcb"
        self.store = Store(self.root / "store")
        self.model = tiny_model(self.root / "model" / "fold-0", self.classes, PADDING)
        self.out = self.root / "out"

    @property
    def night(self) -> date:
        return FIRST_NIGHT + timedelta(days=self.nights - 1)

    @property
    def when(self) -> datetime:
        return datetime(self.night.year, self.night.month, self.night.day, 23, tzinfo=UTC)

    def new_night(self) -> None:
        """The instrument writes tomorrow's bins into its day folder (D<year>/D<yyyymmdd>/)."""
        self.nights += 1
        day = self.data / f"D{self.night:%Y}" / f"D{self.night:%Y%m%d}"
        day.mkdir(parents=True)
        for i in range(self.bins):
            make_bin(day / f"D{self.night:%Y%m%d}T{i:02d}0000_IFCB013", self.rois)
        written = self.when.timestamp()  # the folder's mtime is the night the instrument wrote it (settled)
        os.utime(day, (written, written))

    def ingest(self):
        from plankton_cli.ingest import ingest

        with clock(self.when):
            return ingest(self.store, [self.data])

    def predict(self):
        from plankton_cli.infer.predict import predict

        with clock(self.when):
            return predict(self.model, store=self.store, to=["store", "ifcb-h5"], out_dir=self.out, threads=2)

    def summarize(self):
        from plankton_cli.publish.summarize import summarize

        return summarize(self.store, self.model, "bin", self.out / "summary")

    def report(self):
        from plankton_cli.publish.report import night_report

        return night_report(self.store, self.model, self.out / "reports", night=self.night,
                            summary_dir=self.out / "summary")

    def info(self):
        from plankton_cli.store.info import store_info

        return store_info(self.store)


# One function per measurement: (name, what it runs). Each runs right after the night's files appeared, in order.
def ingest_night(s: Station) -> None:
    summary = s.ingest()
    assert summary.stored == s.bins * s.rois, summary.to_dict()


def ingest_noop(s: Station) -> None:
    summary = s.ingest()
    assert summary.stored == 0 and summary.sources["unchanged"] == s.bins * s.nights, summary.to_dict()


def predict_night(s: Station) -> None:
    summary = s.predict()
    assert summary.predicted == s.bins * s.rois, summary.to_dict()
    assert len(summary.writers["ifcb-h5"]["files"]) == s.bins  # class files for the new bins only


def predict_noop(s: Station) -> None:
    assert s.predict().predicted == 0


def summarize_night(s: Station) -> None:
    assert s.summarize().new_samples == s.bins


def summarize_noop(s: Station) -> None:
    assert s.summarize().new_samples == 0


def report_night(s: Station) -> None:
    assert s.report().samples == s.bins


def info(s: Station) -> None:
    assert s.info()["datasets"]["objects"]["rows"] == s.nights * s.bins * s.rois


STEPS: list[tuple[str, Callable[[Station], None]]] = [
    ("ingest (the night's bins)", ingest_night),
    ("ingest, nothing new", ingest_noop),
    ("predict + class files (the night's ROIs)", predict_night),
    ("predict, nothing new", predict_noop),
    ("summarize (the night's bins)", summarize_night),
    ("summarize, nothing new", summarize_noop),
    ("report", report_night),
    ("info", info),
]
UNMEASURED = {"ingest, nothing new", "predict, nothing new", "summarize, nothing new", "info"}  # skipped between points
REPEATABLE = UNMEASURED | {"report"}  # running them again changes nothing
REPEAT = 3
REFERENCE_NIGHT = {"report": 8}
"""The night a step's ratios are taken against when not night 1: the report reads the trailing week of
predictions (`publish.report.TRAILING_NIGHTS` = 7), so its own work grows until the week is full, by design."""


def night(s: Station, measure: bool) -> dict[str, float]:
    """Add one night and run the nightly steps on it; their CPU seconds when `measure`."""
    from plankton_cli.store import layout

    s.new_night()
    times = {}
    for name, step in STEPS:
        if not measure and name in UNMEASURED:
            continue
        runs = []
        for _ in range(REPEAT if measure and name in REPEATABLE else 1):
            layout._read_cache.clear()  # each step of the nightly job is a process of its own: it parses the list
            start = time.process_time()
            step(s)
            runs.append(time.process_time() - start)
        times[name] = min(runs)
    return times


def table(points: dict[int, dict[str, float]], bins: int, rois: int) -> str:
    nights = sorted(points)
    head = "| step (CPU time at its reference night) | " + " | ".join(f"× at night {n}" for n in nights[1:]) + " |"
    lines = [f"{bins} bins x {rois} ROIs a night; each step's CPU time at night N over its CPU time at night 1 "
             f"(report: at night {REFERENCE_NIGHT['report']}, its trailing week full)", "",
             head, "|---|" + "--:|" * (len(nights) - 1)]
    for name, _ in STEPS:
        at = REFERENCE_NIGHT.get(name.split(" ")[0], 1)
        ratios = " | ".join(f"{points[n][name] / points[at][name]:.2f} ({points[n][name] * 1000:.1f} ms)" if n >= at
                            else "" for n in nights[1:])
        lines.append(f"| {name} ({points[at][name] * 1000:.1f} ms at night {at}) | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=24, help="bins a night")
    parser.add_argument("--rois", type=int, default=1000, help="ROIs a bin")
    parser.add_argument("--at", type=int, nargs="+", default=[1, 30, 300], help="nights at which to measure")
    parser.add_argument("--minutes", type=float, default=20, help="stop adding nights after this long")
    parser.add_argument("--keep", type=Path, help="build the station here (kept) instead of a temporary folder")
    args = parser.parse_args()
    at = sorted(set(args.at) | {1, *REFERENCE_NIGHT.values()})
    deadline = time.monotonic() + args.minutes * 60
    points: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        station = Station(args.keep or Path(tmp), args.bins, args.rois)
        while time.monotonic() < deadline:
            n = station.nights + 1
            measure = n in at or (n > at[-1] and n % 10 == 0)
            times = night(station, measure)
            if measure:
                points[n] = times
                print(f"night {n}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items()), flush=True)
            elif n % 10 == 0:
                print(f"night {n} added", flush=True)
    print()
    print(table(points, args.bins, args.rois))


if __name__ == "__main__":
    main()
