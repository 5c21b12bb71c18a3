"""IFCB class-score files (extended v3 HDF5) from predictions on the real pyifcb test bins."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from plankton_cli.core.records import Record
from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun
from plankton_plugins.ifcb.class_scores import IFCBClassScoresWriter, class_file
from plankton_plugins.ifcb.bins import parse_bin_id
from plankton_plugins.ifcb.reader import IFCBBinReader

IFCB = Path(__file__).resolve().parents[1] / "data" / "ifcb" / "pyifcb-testdata"
CLASSES = ["Ciliophora", "Mesodinium_rubrum", "detritus", "Tripos"]
THRESHOLDS = np.array([0.4, 0.5, 0.6, 0.3])
V2, V1 = "D20130526T095207_IFCB013", "IFCB5_2012_028_081515"


def make_run(thresholds: np.ndarray | None = THRESHOLDS) -> PredictionRun:
    return PredictionRun(model_id="vit-test-fold0", model_hash="b2-0123abcd", classes=CLASSES,
                         thresholds=thresholds, classifier_name="plankton-cli vit_base_patch16_224 vit-test-fold0",
                         package_version="0.1.0")


def ifcb_predictions(seed: int = 0) -> list[Prediction]:
    reader, rng, out = IFCBBinReader(), np.random.default_rng(seed), []
    for folder in (IFCB / "white", IFCB / "data"):
        for source in reader.discover(folder):
            for rec in reader.read(source):
                assert isinstance(rec, Record), rec
                probabilities = rng.dirichlet(np.ones(len(CLASSES)) * 0.5).astype(np.float32)
                best = int(probabilities.argmax())
                label = CLASSES[best] if probabilities[best] >= THRESHOLDS[best] else UNCLASSIFIED
                out.append(Prediction(rec.object_id, probabilities, label, CLASSES[best], sample_id=rec.sample_id,
                                      source_row=rec.source_row, instrument=rec.instrument,
                                      acquired_at=rec.acquired_at))
    return out


def write(out: Path, predictions: list[Prediction], batch: int = 6, run: PredictionRun | None = None) -> dict:
    session = IFCBClassScoresWriter().open(out, run or make_run())
    for start in range(0, len(predictions), batch):
        session.write(predictions[start : start + batch])
    return session.close()


def is_vlen_ascii(dataset: h5py.Dataset) -> bool:
    info = h5py.check_string_dtype(dataset.dtype)
    return info is not None and info.encoding == "ascii" and info.length is None


def test_datasets_names_dtypes_shapes_and_values(tmp_path):
    predictions = ifcb_predictions()
    summary = write(tmp_path, predictions)
    path = tmp_path / "ifcb-h5" / "D2013" / "D20130526" / f"{V2}_class.h5"
    assert summary["files"] == [str(path), str(tmp_path / "ifcb-h5" / "D2012" / "D2012_028" / f"{V1}_class.h5")]
    assert summary["rois"] == len(predictions) == 24 and summary["skipped"] == {}

    mine = sorted((p for p in predictions if p.sample_id == V2), key=lambda p: p.source_row)
    with h5py.File(path, "r") as f:
        assert set(f) == {"output_scores", "class_labels", "roi_numbers", "class_name", "class_name_auto",
                          "thresholds", "classifier_name"}
        assert f["output_scores"].dtype == np.float64 and f["output_scores"].shape == (19, 4)
        assert f["roi_numbers"].dtype == np.int32 and f["roi_numbers"].shape == (19,)
        assert f["thresholds"].dtype == np.float64 and f["thresholds"].shape == (4,)
        for name, shape in (("class_labels", (4,)), ("class_name", (19,)), ("class_name_auto", (19,)),
                            ("classifier_name", (1,))):
            assert is_vlen_ascii(f[name]) and f[name].shape == shape, name
        for name in ("output_scores", "roi_numbers", "class_name", "class_name_auto"):  # as the real files
            assert f[name].compression == "gzip" and f[name].chunks is not None, name
        assert f["roi_numbers"][:].tolist() == [p.source_row for p in mine]
        assert np.all(np.diff(f["roi_numbers"][:]) > 0)
        np.testing.assert_array_equal(f["output_scores"][:], np.stack([p.probabilities for p in mine]))
        assert f["class_labels"].asstr()[:].tolist() == CLASSES
        assert f["class_name"].asstr()[:].tolist() == [p.label for p in mine]
        assert f["class_name_auto"].asstr()[:].tolist() == [p.label_auto for p in mine]
        assert "unclassified" in f["class_name"].asstr()[:].tolist()
        np.testing.assert_array_equal(f["thresholds"][:], THRESHOLDS)
        assert f["classifier_name"].asstr()[0] == "plankton-cli vit_base_patch16_224 vit-test-fold0"
        assert f.attrs["model_hash"] == "b2-0123abcd" and f.attrs["software"] == "plankton-cli 0.1.0"


def test_dashboard_folder_layout_from_the_bin_id(tmp_path):
    assert class_file(tmp_path, parse_bin_id(V1)) == tmp_path / "ifcb-h5/D2012/D2012_028" / f"{V1}_class.h5"
    assert class_file(tmp_path, parse_bin_id(V2)) == tmp_path / "ifcb-h5/D2013/D20130526" / f"{V2}_class.h5"


def test_a_bin_spanning_shuffled_batches_ends_up_in_one_identical_file(tmp_path):
    predictions = ifcb_predictions()
    write(tmp_path / "a", predictions, batch=50)
    shuffled = [predictions[i] for i in np.random.default_rng(7).permutation(len(predictions))]
    write(tmp_path / "b", shuffled, batch=2)
    files = sorted((tmp_path / "a").rglob("*.h5"))
    assert len(files) == 2
    for a in files:
        assert a.read_bytes() == (tmp_path / "b" / a.relative_to(tmp_path / "a")).read_bytes()
    assert not [p for p in (tmp_path / "b").rglob("*") if p.name.startswith(".")]  # no temporaries left


def test_a_roi_predicted_twice_keeps_its_last_scores(tmp_path):
    predictions = ifcb_predictions()
    first = predictions[0]
    again = Prediction(first.object_id, np.array([0.7, 0.1, 0.1, 0.1], np.float32), "Ciliophora", "Ciliophora",
                       sample_id=first.sample_id, source_row=first.source_row)
    summary = write(tmp_path, predictions + [again])
    assert summary["duplicates"] == 1
    with h5py.File(class_file(tmp_path, parse_bin_id(first.sample_id)), "r") as f:
        row = f["roi_numbers"][:].tolist().index(first.source_row)
        np.testing.assert_allclose(f["output_scores"][row], again.probabilities)


def test_non_ifcb_samples_are_skipped_and_counted_and_missing_thresholds_are_nan(tmp_path):
    predictions = ifcb_predictions()[:3]
    predictions.append(Prediction("Ciliophora/x.jpg", np.full(4, 0.25, np.float32), UNCLASSIFIED, "Ciliophora",
                                  sample_id="Ciliophora"))
    predictions.append(Prediction(f"{V1}_00002", np.full(4, 0.25, np.float32), UNCLASSIFIED, "Ciliophora",
                                  sample_id=V1))  # no source_row: the ROI number comes from the id
    summary = write(tmp_path, predictions, run=make_run(thresholds=None))
    assert summary["skipped"] == {"not an IFCB bin": 1}
    with h5py.File(class_file(tmp_path, parse_bin_id(V1)), "r") as f:
        assert 2 in f["roi_numbers"][:].tolist()
        assert np.isnan(f["thresholds"][:]).all()


# pyifcb v1.3.0 (joefutrelle/pyifcb, tag v1.3.0 = 7d7ea77): ifcb/data/products/class_scores.py
# `ClassScoresDirectory._get_v3_file` and ifcb/data/products/files.py `find_product_file`, re-implemented line by
# line (pyifcb is not on PyPI); IFCB Dashboard calls `ClassScoresDirectory(path, 3)[bin_lid]`.
def pyifcb_find_product_file(directory: str, filename: str, exhaustive: bool = False) -> str | None:
    candidate = os.path.join(directory, filename)
    if os.path.exists(candidate):
        return candidate
    for dir_entry in os.scandir(directory):
        fn = dir_entry.name
        if dir_entry.is_dir():
            if not exhaustive and fn not in filename:
                continue
            result = pyifcb_find_product_file(os.path.join(directory, fn), filename)  # exhaustive not passed on
            if result is not None:
                return result
        elif fn == filename:
            return os.path.join(directory, filename)
    return None


def pyifcb_v3_lookup(path: str, bin_lid: str) -> str:
    filename = f"{bin_lid}_class.h5"
    when = parse_bin_id(bin_lid).acquired_at  # pyifcb: Pid(bin_lid).timestamp (UTC)
    possible_path = os.path.join(path, f"D{when.year}", f"D{when.year}_{when.timetuple().tm_yday:03d}", filename)
    found = possible_path if os.path.exists(possible_path) else pyifcb_find_product_file(path, filename)
    if found is None:
        raise KeyError(bin_lid)
    return found


def pyifcb_v3_class_scores(path: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """`ClassScoresFile._class_scores_v3`: labels decoded as ASCII."""
    with h5py.File(path, "r") as f:
        scores = f["output_scores"][:]
        class_labels = [label.decode("ascii") for label in f["class_labels"][:]]
        return scores, class_labels, f["roi_numbers"][:]


def test_ifcb_dashboard_lookup_finds_and_reads_v1_and_v2_files(tmp_path):
    predictions = ifcb_predictions()
    write(tmp_path, predictions)
    for bin_lid in (V1, V2):
        path = pyifcb_v3_lookup(str(tmp_path / "ifcb-h5"), bin_lid)
        assert path == str(class_file(tmp_path, parse_bin_id(bin_lid)))
        scores, labels, rois = pyifcb_v3_class_scores(path)
        mine = sorted((p for p in predictions if p.sample_id == bin_lid), key=lambda p: p.source_row)
        assert labels == CLASSES and rois.tolist() == [p.source_row for p in mine]
        np.testing.assert_array_equal(scores, np.stack([p.probabilities for p in mine]))


def test_the_old_v1_layout_was_not_found_by_the_dashboard(tmp_path):
    """Why V1 bins moved: `D20120128` is not a substring of `IFCB5_2012_028_081515_class.h5`."""
    old = tmp_path / "D2012" / "D20120128" / f"{V1}_class.h5"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"")
    try:
        pyifcb_v3_lookup(str(tmp_path), V1)
    except KeyError:
        pass
    else:
        raise AssertionError("pyifcb found a V1 file in the D<yyyymmdd> layout")


def test_non_ascii_labels_are_transliterated_with_the_original_kept_and_a_warning(tmp_path, caplog):
    classes = ["Chaetoceros_<20µm", "Thalassiosira_>20µm", "Pseudo-nitzschia", "Ceratium_tripos_Ørsted"]
    run = make_run()
    run.classes = classes
    predictions = [Prediction(p.object_id, p.probabilities, classes[CLASSES.index(p.label)]
                              if p.label in CLASSES else UNCLASSIFIED, classes[CLASSES.index(p.label_auto)],
                              sample_id=p.sample_id, source_row=p.source_row) for p in ifcb_predictions()]
    with caplog.at_level(logging.WARNING, logger="plankton"):
        write(tmp_path, predictions, run=run)
    assert sum("not ASCII" in r.getMessage() for r in caplog.records) == 3
    scores, labels, _ = pyifcb_v3_class_scores(pyifcb_v3_lookup(str(tmp_path / "ifcb-h5"), V2))
    assert labels == ["Chaetoceros_<20um", "Thalassiosira_>20um", "Pseudo-nitzschia", "Ceratium_tripos_Orsted"]
    with h5py.File(class_file(tmp_path, parse_bin_id(V2)), "r") as f:
        assert json.loads(f["class_labels"].attrs["original_labels"]) == classes
        assert all(name.isascii() for name in f["class_name"].asstr()[:])
