"""One HTML page per night for a station (`plankton report`): what the nightly job did, and whether to worry.

For the UTC night `night` (the day the predictions were made) and one model, from the store:

- counts per class of the night's predictions (after thresholds) and the unclassified share;
- the new samples with their objects and, when `plankton summarize` ran into `summary_dir`, their total
  concentration per mL; "bins" when they all are IFCB bins, else "samples" (EcoTaxa samples, image folders);
- the objects rejected that night (the store's `rejections`), grouped by reason;
- a drift alarm: the night's mean confidence (top-1 probability) against the mean of the trailing 7 nights. A drop
  of more than `drift_drop` (absolute) raises the alarm: a changed instrument, a new season or a broken focus shows
  up as a model that is less sure of itself before anyone labels a thing.

The page holds no clock time, so the same night's data gives the same bytes and a re-run that found nothing new
leaves the file untouched (`reports/night-YYYY-MM-DD.html`). The summary's overview plot is embedded in the page (a
data URI), so a page mailed or copied elsewhere is whole.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc

from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.store import Store
from plankton_cli.publish.summarize import model_info, read_counts
from plankton_cli.core.writers import UNCLASSIFIED
from plankton_cli.store.layout import may_hold, may_overlap

TRAILING_NIGHTS = 7
DRIFT_DROP = 0.05


@dataclass
class NightReport:
    night: str
    path: str
    written: bool
    objects: int = 0
    samples: int = 0
    ifcb_bins: bool = False  # every one of the night's samples is an IFCB bin: the page says "bins"
    rejected: int = 0
    unclassified_share: float | None = None
    mean_confidence: float | None = None
    trailing_mean_confidence: float | None = None
    drift_alarm: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _between(start: date, days: int) -> tuple[datetime, datetime]:
    first = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return first, first + timedelta(days=days)


def night_report(store: Store, model_path: Path, out_dir: Path, *, night: date | None = None,
                 summary_dir: Path | None = None, drift_drop: float = DRIFT_DROP) -> NightReport:
    """Write `out_dir/night-<night>.html` (only when its content changed) and return what it says."""
    night = night or datetime.now(UTC).date()
    model = model_info(model_path)
    start, end = _between(night, 1)
    week_start, _ = _between(night - timedelta(days=TRAILING_NIGHTS), TRAILING_NIGHTS)
    low, high = week_start.isoformat(), end.isoformat()
    files = list(store.stats("predictions", lambda stats: may_hold(stats, "model_hash", [model.model_hash])  # `layout.py`
                             and may_overlap(stats, "predicted_at", low, high)))  # this model's week only
    table = store.dataset("predictions", files).to_table(
        columns=["sample_id", "instrument", "label", "score", "predicted_at"],
        filter=(pc.field("model_hash") == model.model_hash) & (pc.field("predicted_at") >= pc.scalar(week_start))
        & (pc.field("predicted_at") < pc.scalar(end))).to_pandas()
    for column in ("sample_id", "instrument", "label"):
        table[column] = table[column].astype(object)
    tonight = table[table["predicted_at"] >= start]
    week = table[table["predicted_at"] < start]
    path = Path(out_dir) / f"night-{night.isoformat()}.html"
    report = NightReport(night.isoformat(), str(path), False, objects=len(tonight),
                         samples=int(tonight["sample_id"].nunique()),
                         ifcb_bins=bool(len(tonight)) and bool((tonight["instrument"] == "IFCB").all()))
    report.counts = {str(k): int(v) for k, v in tonight["label"].value_counts().sort_index().items()}
    if len(tonight):
        report.unclassified_share = report.counts.get(UNCLASSIFIED, 0) / len(tonight)
        report.mean_confidence = float(tonight["score"].mean())
    if len(week):
        report.trailing_mean_confidence = float(week.groupby(week["predicted_at"].dt.date)["score"].mean().mean())
    if report.mean_confidence is not None and report.trailing_mean_confidence is not None:
        report.drift_alarm = report.trailing_mean_confidence - report.mean_confidence > drift_drop
    rejections = _rejections(store, start, end)
    report.rejected = int(rejections.sum())
    bins = _bins(tonight, summary_dir)
    page = _page(report, model.model_id, bins, rejections, drift_drop, summary_dir)
    if not path.exists() or path.read_bytes() != page:
        atomic_write_bytes(path, page)
        report.written = True
    return report


def _rejections(store: Store, start: datetime, end: datetime) -> pd.Series:
    """Objects rejected in [start, end), counted by reason (a row rejected again by a retry counts once)."""
    if not store.files("rejections"):
        return pd.Series(dtype=int)
    low, high = start.isoformat(), end.isoformat()
    files = list(store.stats("rejections", lambda stats: may_overlap(stats, "rejected_at", low, high)))
    table = store.dataset("rejections", files).to_table(
        columns=["source_file", "source_row", "object_id", "reason"],
        filter=(pc.field("rejected_at") >= pc.scalar(start)) & (pc.field("rejected_at") < pc.scalar(end)))
    frame = table.to_pandas().astype(object).drop_duplicates()
    return frame["reason"].value_counts().sort_index()


def _bins(tonight: pd.DataFrame, summary_dir: Path | None) -> pd.DataFrame:
    """sample_id, objects, per_ml (summed over classes, when the summary has it) of the night's samples."""
    bins = tonight.groupby("sample_id").size().rename("objects").to_frame()
    bins["per_ml"] = float("nan")
    if summary_dir is not None and len(bins):
        counts = read_counts(Path(summary_dir), samples=list(bins.index), columns=["sample_id", "per_ml"])
        total = counts.groupby("sample_id")["per_ml"].sum(min_count=1)
        bins["per_ml"] = total.reindex(bins.index)
    return bins.reset_index()


def _number(value: float | None, form: str = "{:.3f}") -> str:
    return "–" if value is None or pd.isna(value) else form.format(value)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if rows else "<p>none</p>"


def _page(report: NightReport, model_id: str, bins: pd.DataFrame, rejections: pd.Series, drift_drop: float,
          summary_dir: Path | None) -> bytes:
    samples = "bins" if report.ifcb_bins else "samples"
    alarm = ("<p class=alarm>DRIFT ALARM: mean confidence {} is more than {} below the trailing {}-night mean {}"
             "</p>".format(_number(report.mean_confidence), drift_drop, TRAILING_NIGHTS,
                           _number(report.trailing_mean_confidence)) if report.drift_alarm else
             f"<p>Mean confidence {_number(report.mean_confidence)} (trailing {TRAILING_NIGHTS} nights: "
             f"{_number(report.trailing_mean_confidence)}; alarm below it by more than {drift_drop}).</p>")
    share = _number(report.unclassified_share, "{:.1%}")
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>plankton night {report.night}</title>",
        "<style>body{font-family:sans-serif;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}.alarm{color:#b00;font-weight:bold}"
        "</style></head><body>",
        f"<h1>Night {report.night}</h1>",
        f"<p>Model {html.escape(model_id)}: {report.objects} objects classified in {report.samples} new {samples}, "
        f"{report.rejected} objects rejected, {share} unclassified.</p>",
        alarm,
        "<h2>Counts per class</h2>",
        _table(["class", "objects"], [[k, v] for k, v in report.counts.items()]),
        f"<h2>New {samples}</h2>",
        _table([samples[:-1], "objects", "per mL"], [[r.sample_id, r.objects, _number(r.per_ml, "{:.1f}")]
                                             for r in bins.itertuples()]),
        "<h2>Rejected objects</h2>",
        _table(["reason", "objects"], [[k, v] for k, v in rejections.items()]),
    ]
    overview = Path(summary_dir) / "plots" / "overview.png" if summary_dir is not None else None
    if overview is not None and overview.exists():
        # Embedded, not linked: the page is mailed and copied on its own, away from the summary folder.
        encoded = base64.b64encode(overview.read_bytes()).decode("ascii")
        parts.append(f"<h2>Summary</h2><img src='data:image/png;base64,{encoded}' alt='overview'>")
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")
