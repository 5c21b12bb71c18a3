"""`plankton report`: the night's page, and the drift alarm when the model grows unsure against the trailing week."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image

from plankton_cli.infer.predictions import StoreWriter
from plankton_cli.publish.report import night_report
from plankton_cli.store import Store
from plankton_cli.publish.summarize import model_info
from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun
from test_predict import PADDING, tiny_model

CLASSES = ["a", "b", "c"]


def predict_night(store: Store, model, when: datetime, confidence: float, n: int, prefix: str,
                  instrument: str | None = None) -> None:
    info = model_info(model)
    run = PredictionRun(model_id=info.model_id, model_hash=info.model_hash, classes=CLASSES, thresholds=None,
                        classifier_name="t", options={"store": str(store.root)})
    session = StoreWriter().open(store.root, run)
    session.predicted_at = when  # as if predict had run that night
    rest = (1 - confidence) / 2
    batch = [Prediction(f"{prefix}_{i:05d}", np.array([confidence, rest, rest], np.float32),
                        "a" if i % 4 else UNCLASSIFIED, "a", sample_id=f"{prefix}-bin{i % 2}", instrument=instrument)
             for i in range(n)]
    session.write(batch)
    session.close()


def test_a_night_less_sure_than_the_trailing_week_raises_the_alarm_and_reruns_leave_the_page(tmp_path):
    model = tiny_model(tmp_path / "model" / "fold-0", CLASSES, PADDING)
    store = Store(tmp_path / "store")
    night = datetime(2026, 6, 10, 2, 30, tzinfo=UTC)
    for days in (1, 2, 3):
        predict_night(store, model, night - timedelta(days=days), 0.9, 8, f"old{days}")
    predict_night(store, model, night - timedelta(days=9), 0.2, 8, "too-old")  # outside the week: ignored
    predict_night(store, model, night, 0.6, 8, "new")
    report = night_report(store, model, tmp_path / "reports", night=night.date())
    assert report.written and report.objects == 8 and report.samples == 2 and not report.ifcb_bins
    assert report.counts == {"a": 6, UNCLASSIFIED: 2} and report.unclassified_share == 0.25
    assert abs(report.mean_confidence - 0.6) < 1e-6 and abs(report.trailing_mean_confidence - 0.9) < 1e-6
    assert report.drift_alarm
    page = (tmp_path / "reports" / "night-2026-06-10.html").read_text()
    assert "DRIFT ALARM" in page and "new-bin0" in page and "old1-bin0" not in page
    assert "in 2 new samples" in page and "bins" not in page  # no instrument: not IFCB bins
    stamp = (tmp_path / "reports" / "night-2026-06-10.html").stat().st_mtime_ns
    again = night_report(store, model, tmp_path / "reports", night=night.date())
    assert not again.written and (tmp_path / "reports" / "night-2026-06-10.html").stat().st_mtime_ns == stamp
    calm = night_report(store, model, tmp_path / "reports", night=night.date(), drift_drop=0.5)
    assert calm.written and not calm.drift_alarm


def test_ifcb_nights_count_bins_and_the_page_embeds_its_plot(tmp_path):
    """The overview plot is in the page itself (a data URI), so the page mailed on its own is whole."""
    model = tiny_model(tmp_path / "model" / "fold-0", CLASSES, PADDING)
    store = Store(tmp_path / "store")
    night = datetime(2026, 6, 10, 2, 30, tzinfo=UTC)
    predict_night(store, model, night, 0.6, 8, "D20260610T023000_IFCB013", instrument="IFCB")
    plot = tmp_path / "summary" / "plots" / "overview.png"
    plot.parent.mkdir(parents=True)
    Image.new("L", (4, 3), 128).save(plot)  # what summarize's plot is, for this page: a PNG file
    report = night_report(store, model, tmp_path / "reports", night=night.date(), summary_dir=tmp_path / "summary")
    assert report.ifcb_bins and report.samples == 2
    page = (tmp_path / "reports" / "night-2026-06-10.html").read_text()
    assert "in 2 new bins" in page and "<h2>New bins</h2>" in page and "samples" not in page
    src = page.split("<img src='")[1].split("'")[0]
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.removeprefix("data:image/png;base64,")) == plot.read_bytes()
