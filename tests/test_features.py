"""Per-object features: morphometrics (`plankton features`), their selection and scaling, and the round trip
finetune → model file → predict feeding identical inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from skimage.draw import ellipse

from plankton_cli.cli import cli
from plankton_cli.prepare.features.inputs import (
    COVERAGE,
    PREFIX,
    FeatureScaling,
    feature_matrix,
    metadata_features,
    object_features,
    select_features,
)
from plankton_cli.prepare.features.morphometrics import FEATURES, NoObject, measure
from plankton_cli.train.models import Classifier, load_model, save_model
from plankton_cli.train.model_info import ModelInfo
from plankton_cli.infer.predict import FeatureInputs, _source_items, _store_items
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from conftest import shared_data

TINY = ["--model", "vit_base_patch16_224", "--img-size", "32", "--patch-size", "8", "--depth", "2",
        "--embed-dim", "64", "--num-heads", "2"]


def invoke(*args) -> dict:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- scaling and selection, on hand-made values ---------------------------------------------------------------------


def test_scaling_is_median_iqr_with_missing_indicators_and_a_clip():
    rows = [{"a": 1.0, "b": 7.0}, {"a": 2.0, "b": 7.0}, {"a": 3.0}, {"a": 4.0, "b": 7.0}, {"a": 5.0, "b": 7.0}]
    scaling = FeatureScaling.fit(["a", "b", "never"], rows)
    # a: median 3, quartiles 2 and 4 → IQR 2; b: IQR 0 → scale 1; a feature no row has: 0 and 1.
    assert scaling.center == (3.0, 7.0, 0.0) and scaling.scale == (2.0, 1.0, 1.0)
    matrix = scaling.transform([{"a": 6.0, "b": 7.0}, {"b": 9.0}, {"a": 3.0 + 2.0 * 1000}])
    assert matrix.dtype == np.float32 and matrix.shape == (3, 6) and scaling.width == 6
    np.testing.assert_array_equal(matrix[0], [1.5, 0.0, 0.0, 0, 0, 1])  # values, then indicators
    np.testing.assert_array_equal(matrix[1], [0.0, 2.0, 0.0, 1, 0, 1])  # missing a → 0 and its indicator
    np.testing.assert_array_equal(matrix[2], [10.0, 0.0, 0.0, 0, 1, 1])  # 1000 IQRs out → clipped to 10
    assert scaling.missing({"a": 1.0}) == ["b", "never"]


def test_scaling_round_trips_through_the_model_description():
    scaling = FeatureScaling.fit(["object_area", "features.esd"], [{"object_area": 4.0, "features.esd": 1.0},
                                                                   {"object_area": 8.0}])
    info = ModelInfo(architecture="vit_base_patch16_224", img_size=32, in_chans=1, patch_size=8, embed_dim=64,
                     depth=2, num_heads=2, mean=[0.5], std=[0.25], **scaling.info_fields())
    again = ModelInfo.from_dict(json.loads(info.to_json()))
    assert FeatureScaling.from_info(again) == scaling and again.feature_dim == 4


def test_auto_takes_features_at_least_90_percent_of_objects_have():
    values = {f"o{i}": {"object_area": float(i)} for i in range(10)}
    for i in range(9):
        values[f"o{i}"]["object_major"] = 1.0  # 9 of 10 = 90 %
    for i in range(8):
        values[f"o{i}"]["adc.PMT_A"] = 1.0  # 8 of 10 = 80 %
    assert COVERAGE == 0.9
    assert select_features("auto", values) == ["object_area", "object_major"]
    assert select_features("none", values) == []
    assert select_features("adc.*, object_area", values) == ["adc.PMT_A", "object_area"]
    with pytest.raises(ValueError, match="object_nothing"):
        select_features("object_nothing", values)


def test_metadata_features_keep_measurements_only():
    metadata = {"object_area": "516.0", "object_major": "50.1", "object_lat": "43.7", "object_date": "20151111",
                "object_annotation_date": "20151111", "object_depth_min": "600", "object_note": "n/a",
                "adc.PMT_A": "0.007", "adc.ROI_X": "1060", "adc.GRAB_TIME_START": "54.7",
                "adc.TIME_OF_FLIGHT": "-999.00000", "sample_volconc": "13.1", "object_nan": "nan"}
    assert metadata_features(metadata) == {"object_area": 516.0, "object_major": 50.1, "adc.PMT_A": 0.007}
    pairs = [{"key": k, "value": v} for k, v in metadata.items()]  # the store's list of pairs
    assert metadata_features(pairs) == metadata_features(metadata)


# --- morphometrics ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("background, ink", [(20, 200), (235, 60)])  # IFCB-like dark, ZooScan-like light
def test_measure_finds_a_drawn_ellipse_on_either_background(background, ink):
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(background, 3, (80, 120)), 0, 255).astype(np.uint8)
    rows, cols = ellipse(40, 60, 12, 30, shape=img.shape)  # semi-axes 12 and 30 px
    img[rows, cols] = ink
    img[5, 5] = ink  # a speck: not the largest component
    values = measure(img, None, pixel_size_um=2.0)
    assert set(values) == set(FEATURES)
    assert values["area"] == len(rows)
    assert values["major_axis"] == pytest.approx(60, rel=0.03) and values["minor_axis"] == pytest.approx(24, rel=0.05)
    assert values["esd"] == pytest.approx(math.sqrt(4 * values["area"] / math.pi))
    assert values["biovolume"] == pytest.approx(math.pi / 6 * values["major_axis"] * values["minor_axis"] ** 2)
    assert values["grey_mean"] == ink
    assert values["contrast"] == pytest.approx(abs(ink - background), abs=3)  # the background is the noisy edge mode
    assert values["esd_um"] == pytest.approx(2 * values["esd"]) and values["area_um2"] == 4 * values["area"]
    assert measure(img, None)["esd_um"] is None  # no pixel size, no micrometres
    with pytest.raises(NoObject):
        measure(np.full((30, 30), background, np.uint8), None)


def test_zooscan_legend_and_corner_marks_are_not_measured():
    """ZooScan vignettes (ingested without an instrument) carry a "100 µm" legend and black corner marks; the
    areas must be close to ZooProcess's own (`object_area`), never a 21-px mark or the legend."""
    bundle = shared_data("ecotaxa", "ecotaxa-back-qa", "import_test")
    from plankton_plugins.ecotaxa.reader import EcoTaxaReader

    from plankton_cli.store.images import decode

    reader, options = EcoTaxaReader(), ReadOptions()
    ratios = {}
    for source in reader.discover(bundle, options):
        for record in reader.read(source, options):
            ours = measure(decode(record.image), record.instrument)["area"]
            ratios[record.object_id] = ours / float(record.metadata["object_area"])
    assert len(ratios) == 11 and min(ratios.values()) > 0.8  # never a mark or the legend
    assert 0.85 < float(np.median(list(ratios.values()))) < 1.0  # Li keeps slightly fewer pixels than ZooProcess


# --- `plankton features` on the bundled IFCB bins ----------------------------------------------------------------


def test_features_command_counts_add_up_and_rerun_changes_nothing(tmp_path, ifcb_bins):
    store = tmp_path / "store"
    invoke("ingest", ifcb_bins, "--store", store, "--json")
    n_objects = Store(store).dataset("objects").count_rows()
    first = invoke("features", "--store", store, "--json")
    assert first["read"] == n_objects == first["computed"] + first["skipped"] + first["rejected"]
    assert first["computed"] > 0 and first["skipped"] == 0
    table = Store(store).dataset("features").to_table()
    assert table.num_rows == first["computed"] and len(set(table["object_id"].to_pylist())) == table.num_rows
    files = sorted(p.name for p in Store(store).files("features"))

    again = invoke("features", "--store", store, "--json")
    assert again["read"] == n_objects and again["computed"] == 0 and again["rejected"] == 0
    assert again["skipped"] == n_objects and again["removed"] == 0
    assert sorted(p.name for p in Store(store).files("features")) == files  # nothing rewritten
    # Stored values are what measuring the stored image gives (what predict recomputes).
    objects = {r["object_id"]: r for r in Store(store).dataset("objects").to_table().to_pylist()}
    from plankton_cli.store.images import decode

    for row in table.to_pylist()[:5]:
        obj = objects[row["object_id"]]
        assert measure(decode(obj["image"]["bytes"]), obj["instrument"], obj["pixel_size_um"]) == {
            name: row[name] for name in FEATURES}


def test_features_command_never_imports_torch(tmp_path):
    code = textwrap.dedent("""
        import sys
        from plankton_cli.cli import main
        try:
            main(["features", "--help"])
        except SystemExit:
            pass
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip().endswith("ok"), proc.stderr


# --- the round trip: training inputs == predict inputs ------------------------------------------------------------


@pytest.fixture(scope="module")
def ecotaxa_store(tmp_path_factory):
    """The EcoTaxa QA ZooScan bundle (object_* morphometrics in every row) plus `plankton features`."""
    bundle = shared_data("ecotaxa", "ecotaxa-back-qa", "import_test")
    store = tmp_path_factory.mktemp("eco") / "store"
    invoke("ingest", bundle, "--store", store, "--json")
    invoke("features", "--store", store, "--json")
    return bundle, Store(store)


def _training_view(store: Store, names: list[str], ids: list[str]) -> tuple[FeatureScaling, np.ndarray]:
    """The scaling and inputs finetune computes (``PoolFeatures``): store values, fitted on these ids."""
    values = object_features(store.root, "objects", ids)
    scaling = FeatureScaling.fit(names, [values[i] for i in ids])
    return scaling, feature_matrix(store.root, ids, scaling)


def test_model_file_gives_predict_the_training_inputs(ecotaxa_store, tmp_path):
    bundle, store = ecotaxa_store
    ids = sorted(store.dataset("objects").to_table(columns=["object_id"])["object_id"].to_pylist())
    names = select_features("auto", object_features(store.root, "objects", ids))
    assert any(n.startswith("object_") for n in names) and any(n.startswith(PREFIX) for n in names)
    scaling, trained = _training_view(store, names, ids)

    model = Classifier("vit_base_patch16_224", 2, img_size=32, in_chans=1, patch_size=8, depth=1, embed_dim=32,
                       num_heads=2, feature_dim=scaling.width)
    save_model(tmp_path / "m", model.state_dict(), {**model.arch, "classes": ["a", "b"], "mean": [0.5],
                                                    "std": [0.25], **scaling.info_fields()})
    loaded, info = load_model(tmp_path / "m")
    inputs = FeatureInputs(FeatureScaling.from_info(info))

    from_store = sorted(_store_items(store, instrument=None, since=None, exclude=set()), key=lambda i: i.object_id)
    np.testing.assert_array_equal(inputs(from_store), trained)  # bit for bit
    assert inputs.report() == []

    from_disk = sorted(_source_items([bundle], "auto", ReadOptions(), lambda r: None), key=lambda i: i.object_id)
    np.testing.assert_array_equal(inputs(from_disk), trained)  # sources on disk: measured again, same numbers
    with torch.no_grad():
        assert loaded(torch.zeros(2, 1, 32, 32), torch.from_numpy(trained[:2])).shape == (2, 2)


@pytest.mark.slow
def test_finetune_features_auto_then_predict_end_to_end(ecotaxa_store, tmp_path, ifcb_bins):
    """`finetune --features auto` on an EcoTaxa export, then `predict` with that model: on the store (every
    feature there) and on IFCB bins (no EcoTaxa features: one line per bin says which are missing)."""
    _, store = ecotaxa_store
    out = tmp_path / "ft"
    summary = invoke("finetune", "--store", store.root, "--init", "scratch", *TINY, "--label-status", "any",
                     "--folds", "1", "--epochs", "2", "--batch-size", "4", "--warmup-epochs", "0", "--workers", "0",
                     "--features", "auto", "--out", out, "--json")
    assert summary["complete"]
    info = ModelInfo.load(out / "fold-0" / "model.json")
    assert "object_area" in info.features and "features.esd" in info.features and info.feature_dim > 0
    config = json.loads((out / "config.json").read_text())
    assert config["features"] == "auto"

    on_store = invoke("predict", "--store", store.root, "--model", out / "fold-0" / "model.safetensors",
                      "--to", "parquet", "--out", tmp_path / "p1", "--json")
    assert on_store["predicted"] == 11 and on_store["features_lacking"] == []

    on_bins = invoke("predict", "--store", store.root, "--model", out / "fold-0" / "model.safetensors",
                     "--to", "csv", "--out", tmp_path / "p2", "--json", ifcb_bins)
    assert on_bins["predicted"] > 0
    lacking = on_bins["features_lacking"]
    assert lacking and all(".roi lacks object_" in line and "features." not in line for line in lacking)


def test_forest_head_is_the_model_file_and_predict_gives_its_test_probabilities(ecotaxa_store, tmp_path):
    """`--head forest`: no training; the fold's model file carries the forest, and predict's probabilities on the
    fold's test objects are the ones the fold was scored with."""
    _, store = ecotaxa_store
    out = tmp_path / "forest"
    summary = invoke("finetune", "--store", store.root, "--init", "scratch", *TINY, "--label-status", "any",
                     "--folds", "1", "--workers", "0", "--features", "auto", "--head", "forest", "--out", out,
                     "--json")
    assert summary["complete"] and set(summary["heads"]) == {"forest"}
    info = ModelInfo.load(out / "fold-0" / "model.json")
    assert info.head_kind == "forest" and info.hidden_dim is None and info.feature_dim > 0
    assert not (out / "fold-0" / "metrics.csv").exists()  # nothing was trained

    invoke("predict", "--store", store.root, "--model", out / "fold-0" / "model.safetensors", "--to", "parquet",
           "--out", tmp_path / "p", "--json")
    predicted = pq.read_table(tmp_path / "p", columns=["object_id", "probabilities"]).to_pylist()
    by_id = {row["object_id"]: row["probabilities"] for row in predicted}
    scored = pq.read_table(out / "fold-0" / "test_predictions.parquet").to_pylist()
    assert scored
    for row in scored:
        np.testing.assert_allclose(by_id[row["object_id"]], row["probabilities"], atol=1e-6)


def test_forest_head_without_features_is_refused_in_one_line(ecotaxa_store, tmp_path):
    _, store = ecotaxa_store
    result = CliRunner().invoke(cli, [str(a) for a in (
        "finetune", "--store", store.root, "--init", "scratch", *TINY, "--label-status", "any", "--folds", "1",
        "--workers", "0", "--features", "none", "--head", "forest", "--out", tmp_path / "f")])
    assert result.exit_code == 2 and "--head forest reads the objects' features" in result.output


def test_new_settings_measure_again_and_replace_the_old_rows_in_one_commit(tmp_path, ifcb_bins, monkeypatch):
    from plankton_cli.prepare.features import dataset as features_dataset

    store = Store(tmp_path / "store")
    invoke("ingest", ifcb_bins, "--store", store.root, "--json")
    first = features_dataset.compute_features(store)
    monkeypatch.setattr(features_dataset, "SETTINGS", "features-v999 test")
    again = features_dataset.compute_features(store)
    assert again.computed == first.computed and again.removed == first.computed and again.skipped == 0
    table = store.dataset("features").to_table()
    assert table.num_rows == first.computed and set(table["features_settings"].to_pylist()) == {"features-v999 test"}
