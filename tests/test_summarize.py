"""`plankton summarize` on the bundled IFCB bins: counts add up, concentrations follow ml_analyzed, the numbers match
iRfcb's summary of the same class files, and a nightly re-run adds new bins only."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLED, plankton
from plankton_cli.prepare.features.dataset import compute_features
from plankton_cli.ingest import ingest
from plankton_cli.infer.predict import predict
from plankton_cli.store import Store
from plankton_cli.publish.summarize import read_counts, summarize
from plankton_cli.core.writers import UNCLASSIFIED
from test_predict import PADDING, tiny_model

IFCB = BUNDLED / "ifcb" / "pyifcb-testdata"
V2, V1 = "D20130526T095207_IFCB013", "IFCB5_2012_028_081515"
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A real tiny model; class `a` has a threshold no score reaches, `b` and `c` none (NaN: argmax stands)."""
    path = tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, PADDING)
    info_path = path.with_suffix(".json")
    info = json.loads(info_path.read_text())
    info["thresholds"] = {"a": 0.999}
    info_path.write_text(json.dumps(info))
    return path


def bins_store(tmp_path, model, folders=("white", "data")):
    store = Store(tmp_path / "store")
    for folder in folders:
        ingest(store, [IFCB / folder])
    predict(model, store=store, to=["store", "ifcb-h5"], out_dir=tmp_path / "out")
    return store


def volumes(store) -> dict[str, float]:
    table = store.dataset("objects").to_table(columns=["sample_id", "metadata"]).to_pylist()
    return {row["sample_id"]: float(dict((m["key"], m["value"]) for m in row["metadata"])["ml_analyzed"])
            for row in table}


def irfcb_summarize_tbclass(path) -> tuple[list[str], list[int], list[int]]:
    """iRfcb `summarize_TBclass` (R/ifcb_helper_functions.R, EuropeanIFCBGroup/iRfcb 9efb501) on one h5 file:
    per class of `class_labels`, `sum(TBclass == class)` with TBclass = class_name_auto (classcount) and
    `sum(TBclass_above_threshold == class)` with class_name (classcount_above_optthresh)."""
    with h5py.File(path, "r") as f:
        labels = [x.decode() for x in f["class_labels"][:]]
        auto = [x.decode() for x in f["class_name_auto"][:]]
        above = [x.decode() for x in f["class_name"][:]]
    return labels, [auto.count(c) for c in labels], [above.count(c) for c in labels]


def test_counts_add_up_follow_ml_analyzed_and_match_irfcb_on_the_class_files(tmp_path, model):
    store = bins_store(tmp_path, model)
    result = summarize(store, model, "bin", tmp_path / "summary")
    assert result.new_samples == 2 and result.groups_written == 2 and result.objects == 24
    table = read_counts(tmp_path / "summary")
    assert list(table.columns[:5]) == ["sample_id", "class", "count", "ml_analyzed", "per_ml"]
    assert set(table["class"]) == {*CLASSES, UNCLASSIFIED}
    per_bin = table.groupby("sample_id")[["count", "count_auto"]].sum()
    assert per_bin.loc[V2].tolist() == [19, 19] and per_bin.loc[V1].tolist() == [5, 5]  # predicted ROIs
    ml = volumes(store)
    for _, row in table.iterrows():
        assert row["ml_analyzed"] == pytest.approx(ml[row["sample_id"]])
        assert row["per_ml"] * row["ml_analyzed"] == pytest.approx(row["count"])
    assert table.loc[table["class"] == "a", "count"].sum() == 0  # nothing reaches a's threshold
    assert table.loc[table["class"] == UNCLASSIFIED, "count"].sum() == table.loc[table["class"] == "a",
                                                                                 "count_auto"].sum()
    for bin_id in (V2, V1):  # iRfcb's counts from the class files predict wrote in the same run
        class_file = next((tmp_path / "out").rglob(f"{bin_id}_class.h5"))
        with h5py.File(class_file, "r") as f:  # b and c have no threshold: NaN, as iRfcb's NA
            assert f["thresholds"][0] == 0.999 and np.isnan(f["thresholds"][1:]).all()
        labels, classcount, above = irfcb_summarize_tbclass(class_file)
        mine = table[table["sample_id"] == bin_id].set_index("class")
        assert mine.loc[labels, "count_auto"].tolist() == classcount
        assert mine.loc[labels, "count"].tolist() == above
    # by hand: the store's predictions counted per bin and label
    rows = store.dataset("predictions").to_table(columns=["sample_id", "label"]).to_pylist()
    for row in table.itertuples():
        assert row.count == sum(r["sample_id"] == row.sample_id and r["label"] == row._2 for r in rows)

    wide = pd.read_csv(tmp_path / "summary" / "counts_wide.csv")
    assert list(wide.columns) == ["sample_id", "acquired_at", "ml_analyzed", *CLASSES, UNCLASSIFIED]
    assert wide.set_index("sample_id")[[*CLASSES, UNCLASSIFIED]].sum(axis=1).to_dict() == {V1: 5, V2: 19}
    long_csv = pd.read_csv(tmp_path / "summary" / "counts.csv")
    assert long_csv["count"].tolist() == table["count"].tolist()
    assert long_csv["acquired_at"].iloc[0] == "2012-01-28T08:15:15Z"  # oldest bin first
    plots = {p.name for p in (tmp_path / "summary" / "plots").iterdir()}
    assert "overview.png" in plots and len(plots) >= 2


def test_a_nightly_rerun_adds_new_bins_only_and_nothing_when_none_is_new(tmp_path, model):
    store = bins_store(tmp_path, model, folders=("white",))
    out = tmp_path / "summary"
    assert summarize(store, model, "bin", out).new_samples == 1
    before = read_counts(out)
    shutil.rmtree(out / "by-month")  # as a summary written before the months were: its next run writes them all
    ingest(store, [IFCB / "data"])
    predict(model, store=store, to=["store"], out_dir=tmp_path / "out")
    second = summarize(store, model, "bin", out)
    assert (second.new_samples, second.groups_written, second.groups_kept) == (1, 1, 1)
    months = sorted(p.name for p in (out / "by-month").iterdir())
    assert months == ["2012-01", "2013-05"]
    assert len(pd.read_csv(out / "counts.csv")) == sum(len(pd.read_csv(out / "by-month" / m / "counts.csv"))
                                                       for m in months) == 2 * (len(CLASSES) + 1)
    after = read_counts(out)
    pd.testing.assert_frame_equal(after[after["sample_id"] == V2].reset_index(drop=True), before)
    assert after.groupby("sample_id")["count"].sum().to_dict() == {V1: 5, V2: 19}
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    third = summarize(store, model, "bin", out)
    assert third.new_samples == 0 and third.files == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    with pytest.raises(ValueError, match="--rebuild"):
        summarize(store, model, "day", out)


def test_a_night_rewrites_only_its_month_and_the_tables_equal_a_summary_from_scratch(tmp_path, model):
    """Issue 22: the bundled bins lie in 2013-05 (V2) and 2012-01 (V1). A night bringing V1 writes 2012-01's
    partition only (2013-05's Parquet part and CSV files keep their bytes and mtime); the whole tables, joined from
    the months, and the long table equal those of a summary of the same store from scratch."""
    store = bins_store(tmp_path, model, folders=("white",))
    out = tmp_path / "summary"
    summarize(store, model, "bin", out)
    may = [out / "by-month" / "2013-05", out / "counts" / "month=2013-05"]

    def stamps_of_may():
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for folder in may for p in folder.rglob("*") if p.is_file()}

    stamps = stamps_of_may()
    assert {p.name for p in stamps} >= {"counts.csv", "counts_wide.csv", "per_ml_wide.csv", "overview.png",
                                        "part-0.parquet"}
    ingest(store, [IFCB / "data"])
    predict(model, store=store, to=["store"], out_dir=tmp_path / "out")
    written = summarize(store, model, "bin", out).files
    assert stamps_of_may() == stamps  # not written again
    assert not [f for f in written if "2013-05" in f] and [f for f in written if "2012-01" in f]
    scratch = tmp_path / "scratch"
    summarize(store, model, "bin", scratch)
    for name in ("counts.csv", "counts_wide.csv", "per_ml_wide.csv"):
        assert (out / name).read_bytes() == (scratch / name).read_bytes(), name
    pd.testing.assert_frame_equal(read_counts(out), read_counts(scratch))
    long = pd.read_csv(out / "counts.csv")
    assert list(long["sample_id"].unique()) == [V1, V2]  # in time, across months
    assert long.groupby("sample_id")["count"].sum().to_dict() == {V1: 5, V2: 19}
    assert (out / "plots" / "overview.png").exists()


def test_by_day_sums_volumes_and_biovolume_comes_from_features(tmp_path, model):
    store = bins_store(tmp_path, model)
    compute_features(store)  # `plankton features`: biovolume in µm³ from the IFCB pixel size
    biovolume = store.dataset("features").to_table(columns=["object_id", "biovolume_um3"]).to_pandas()
    predicted = store.dataset("predictions").to_table(columns=["object_id", "label"]).to_pandas()
    predicted = predicted[predicted["object_id"].str.startswith(V2)]  # the day of the V2 bin
    summarize(store, model, "day", tmp_path / "summary")
    table = read_counts(tmp_path / "summary")
    assert sorted(set(table["sample_id"])) == ["2012-01-28", "2013-05-26"]
    ml = volumes(store)
    day = table[table["sample_id"] == "2013-05-26"]
    assert day["ml_analyzed"].iloc[0] == pytest.approx(ml[V2]) and day["samples"].iloc[0] == 1
    per_class = predicted.merge(biovolume, on="object_id").groupby("label")["biovolume_um3"].sum()
    for cls, value in zip(day["class"], day["biovolume_um3_per_ml"]):
        assert value == pytest.approx(per_class.get(cls, 0.0) / ml[V2], rel=1e-6)
    assert day["biovolume_um3_per_ml"].sum() > 0


def test_cli_summarize_json_and_objects_without_a_sample_are_left_out_with_a_line(tmp_path, model, demo_images):
    store = bins_store(tmp_path, model, folders=("white",))
    ingest(store, [demo_images / "Tripos"], fmt="folders")
    predict(model, store=store, to=["store"], out_dir=tmp_path / "out")
    proc = plankton("summarize", "--store", str(store.root), "--model", str(model), "--by", "bin", "--out",
                    str(tmp_path / "s"), "--no-plots", "--json", check=True)
    summary = json.loads(proc.stdout)
    tripos = len(list((demo_images / "Tripos").iterdir()))
    assert summary["new_samples"] == 1 and summary["objects"] == 19
    assert summary["skipped"] == {"no sample id": tripos}  # a class folder is no sample
    assert "no sample id" in proc.stderr
    assert not (tmp_path / "s" / "plots").exists()


class Killed(BaseException):
    """The process died here (a BaseException: no `except Exception` handles it)."""


def killed_after(k: int, folder, real_replace):
    """`os.replace` that dies at the (k+1)-th rename into `folder`: k output files are in place."""
    renamed = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(folder)) and len(renamed) == k:
            raise Killed(dst)
        renamed.append(dst)
        return real_replace(src, dst, *args, **kwargs)
    return replace


def test_a_summarize_killed_between_its_files_is_completed_by_the_next_run(tmp_path, model, monkeypatch):
    """Issue 19: killed after its k-th output file (k = 1, 2, 3), the re-run must leave counts.csv,
    counts_wide.csv and per_ml_wide.csv agreeing, and equal to a summary that was never killed."""
    import os
    import shutil

    store = bins_store(tmp_path, model, folders=("white",))
    first = tmp_path / "first-night"
    summarize(store, model, "bin", first, plots=False)
    ingest(store, [IFCB / "data"])  # the second night's bin
    predict(model, store=store, to=["store"], out_dir=tmp_path / "out")
    reference = tmp_path / "reference"
    shutil.copytree(first, reference)
    summarize(store, model, "bin", reference, plots=False)
    tables = ["counts.csv", "counts_wide.csv", "per_ml_wide.csv", "summary.json"]
    expected = {name: (reference / name).read_bytes() for name in tables}
    real_replace = os.replace

    for k in (1, 2, 3):
        out = tmp_path / f"killed-after-{k}"
        shutil.copytree(first, out)
        with monkeypatch.context() as m:
            m.setattr(os, "replace", killed_after(k, out, real_replace))
            with pytest.raises(Killed):
                summarize(store, model, "bin", out, plots=False)
        assert summarize(store, model, "bin", out, plots=False).new_samples == 1  # the killed run's bin
        assert {name: (out / name).read_bytes() for name in tables} == expected, f"killed after {k} files"
        pd.testing.assert_frame_equal(read_counts(out), read_counts(reference))
        long = pd.read_csv(out / "counts.csv")
        wide = pd.read_csv(out / "counts_wide.csv").set_index("sample_id")
        assert set(wide.index) == set(long["sample_id"]) == set(pd.read_csv(out / "per_ml_wide.csv")["sample_id"])
        assert all(wide.loc[r.sample_id, r["class"]] == r["count"] for _, r in long.iterrows())


def test_summarize_against_a_store_without_this_models_predictions_fails_and_names_store_options(tmp_path, model):
    store = Store(tmp_path / "other")
    with store.locked():  # a store, but not the one predict wrote to
        pass
    proc = plankton("summarize", "--store", str(store.root), "--model", str(model), "--out", str(tmp_path / "s"))
    assert proc.returncode == 65 and "no new samples" not in proc.stdout
    assert "holds no predictions by model" in proc.stderr and "$PLANKTON_STORE" in proc.stderr


def test_rebuild_replaces_what_the_months_held(tmp_path, model):
    """--rebuild summarises everything again: rows of a bin no longer predicted and a month no longer summarised
    are gone, not kept beside the new rows."""
    store = bins_store(tmp_path, model)
    out = tmp_path / "summary"
    summarize(store, model, "bin", out, plots=False)
    part = out / "counts" / "month=2013-05" / "part-0.parquet"
    table = pd.read_parquet(part)
    stale = pd.concat([table, table.assign(sample_id="D20130526T000000_IFCB013")], ignore_index=True)
    stale.to_parquet(part, index=False)
    gone = out / "counts" / "month=1999-01"
    gone.mkdir()
    table.to_parquet(gone / "part-0.parquet", index=False)
    summarize(store, model, "bin", out, plots=False, rebuild=True)
    summarize(store, model, "bin", tmp_path / "scratch", plots=False)
    pd.testing.assert_frame_equal(read_counts(out), read_counts(tmp_path / "scratch"))
    assert not gone.exists()
