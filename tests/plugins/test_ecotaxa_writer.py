"""EcoTaxa writer and import checker, on real IFCB ROIs and real EcoTaxa-exported JPEGs.

Predictions carry seeded random probabilities; everything else (images, ids, bins, times) comes from the real data.
"""

from __future__ import annotations

import codecs
import io
import shutil
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from plankton_cli.core.records import ReadOptions, Record
from plankton_cli.store.images import encode_png
from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun
from plankton_plugins.ecotaxa.checker import check_import_zip
from plankton_plugins.ecotaxa.reader import EcoTaxaReader
from plankton_plugins.ecotaxa.writer import EcoTaxaWriter, load_taxon_map
from plankton_plugins.ifcb.reader import IFCBBinReader
from conftest import SHARED

DATA = Path(__file__).resolve().parents[1] / "data"
IFCB = DATA / "ifcb" / "pyifcb-testdata"
DEMO = DATA / "planktonclass-demo" / "demo-images"
CLASSES = ["Ciliophora", "Mesodinium_rubrum", "detritus"]
THRESHOLDS = np.array([0.5, 0.5, 0.6])
BINS = {"D20130526T095207_IFCB013": 19, "IFCB5_2012_028_081515": 5}  # ROIs (the V1 pair 3+4 stitched)



def make_run(**options: str) -> PredictionRun:
    return PredictionRun(model_id="vit-test-fold0", model_hash="b2-0123abcd", classes=CLASSES,
                         thresholds=THRESHOLDS, classifier_name="plankton-cli vit test", top_k=3,
                         package_version="0.1.0", options=dict(options))


def predict(probabilities: np.ndarray) -> tuple[str, str]:
    """(label after thresholds, argmax label), as `plankton predict` decides them."""
    best = int(np.argmax(probabilities))
    label = CLASSES[best] if probabilities[best] >= THRESHOLDS[best] else UNCLASSIFIED
    return label, CLASSES[best]


def ifcb_predictions(seed: int = 0) -> list[Prediction]:
    reader, rng, out = IFCBBinReader(), np.random.default_rng(seed), []
    for folder in (IFCB / "white", IFCB / "data"):
        for source in reader.discover(folder):
            for rec in reader.read(source):
                assert isinstance(rec, Record), rec
                probabilities = rng.dirichlet(np.ones(len(CLASSES)) * 0.5).astype(np.float32)
                label, auto = predict(probabilities)
                out.append(Prediction(rec.object_id, probabilities, label, auto, sample_id=rec.sample_id,
                                      source_row=rec.source_row, instrument=rec.instrument,
                                      acquired_at=rec.acquired_at, lat=57.7, lon=11.5, depth=3.0,
                                      image=encode_png(rec.image)))
    return out


def demo_predictions(n: int = 6, seed: int = 1) -> list[Prediction]:
    """Real JPEG vignettes without a sample (they land in a zip named after their folder)."""
    rng = np.random.default_rng(seed)
    files = sorted(DEMO.glob("*/*.jpg"))[:n]
    out = []
    for path in files:
        probabilities = rng.dirichlet(np.ones(len(CLASSES))).astype(np.float32)
        label, auto = predict(probabilities)
        out.append(Prediction(f"{path.parent.name}/{path.name}", probabilities, label, auto,
                              image=path.read_bytes(), image_name=path.name))
    return out


def identity_map(folder: Path) -> Path:
    """A taxon map confirming each class as the EcoTaxa name it already is (no id): what `plankton taxa` gives
    for categories of a TSV export."""
    path = folder / "classes.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{c}\t{c}\n" for c in CLASSES), encoding="utf-8")
    return path


def write(out: Path, predictions: list[Prediction], batch: int = 7, **options: str) -> dict:
    """The writer's summary; the classes are confirmed by `identity_map` unless a test gives `taxon_map`."""
    if "taxon_map" not in options:
        options["taxon_map"] = str(identity_map(out.parent))
    session = EcoTaxaWriter().open(out, make_run(**options))
    for start in range(0, len(predictions), batch):
        session.write(predictions[start : start + batch])
    return session.close()


def read_back(zip_path: Path) -> dict[str, Record]:
    reader = EcoTaxaReader()
    records = {}
    for source in reader.discover(zip_path, ReadOptions()):
        for item in reader.read(source, ReadOptions()):
            assert isinstance(item, Record), item
            records[item.metadata["ecotaxa_object_id"]] = item  # the id EcoTaxa sees (the store's is qualified)
    return records


def tsv_lines(zip_path: Path) -> list[list[str]]:
    with zipfile.ZipFile(zip_path) as archive:
        tsv = next(n for n in archive.namelist() if n.endswith(".tsv"))
        data = archive.read(tsv)
    assert data.startswith(codecs.BOM_UTF8)
    return [line.split("\t") for line in data[3:].decode("utf-8").splitlines()]


# -- the writer ------------------------------------------------------------------------------------------------


def test_one_valid_zip_per_bin_with_images_next_to_the_tsv(tmp_path):
    predictions = ifcb_predictions()
    summary = write(tmp_path, predictions)

    zips = sorted((tmp_path / "ecotaxa").glob("*.zip"))
    assert [z.stem for z in zips] == sorted(BINS)
    assert summary["files"] == [str(z) for z in zips] and summary["objects"] == len(predictions) == 24
    for z in zips:
        assert check_import_zip(z) == []
        with zipfile.ZipFile(z) as archive:
            names = archive.namelist()
            assert names[0] == f"ecotaxa_{z.stem}.tsv"
            assert len(names) == 1 + BINS[z.stem]
        header, types, first = tsv_lines(z)[:3]
        assert "object_annotation_hierarchy" not in header
        assert len(types) == len(header) and set(types) == {"[t]", "[f]"}
        row = dict(zip(header, first))
        assert row["img_file_name"] == row["object_id"] + ".png"
        assert row["sample_id"] == row["acq_id"] == z.stem
        assert row["acq_instrument"] == "IFCB"
        assert row["process_id"] == "plankton_vit-test-fold0" and row["process_software"] == "plankton-cli 0.1.0"
        assert row["object_date"] == ("20130526" if z.stem.startswith("D") else "20120128")

    # images are shipped byte for byte
    by_id = {p.object_id: p for p in predictions}
    with zipfile.ZipFile(tmp_path / "ecotaxa" / "IFCB5_2012_028_081515.zip") as archive:
        for name in archive.namelist()[1:]:
            assert archive.read(name) == by_id[name.removesuffix(".png")].image


def test_round_trip_through_the_reader(tmp_path):
    predictions = ifcb_predictions()
    write(tmp_path, predictions)
    records = {}
    for z in (tmp_path / "ecotaxa").glob("*.zip"):
        records |= read_back(z)

    assert set(records) == {p.object_id for p in predictions}
    for p in predictions:
        rec = records[p.object_id]
        order = np.argsort(-p.probabilities, kind="stable")
        if p.label == UNCLASSIFIED:
            assert rec.label is None and "object_annotation_status" not in rec.metadata
        else:
            assert (rec.label, rec.label_status) == (p.label, "predicted")
        assert float(rec.metadata["object_score"]) == pytest.approx(p.probabilities.max(), abs=1e-6)
        assert rec.metadata["object_label_auto"] == p.label_auto
        assert rec.metadata["object_top2_label"] == CLASSES[order[1]]
        assert float(rec.metadata["object_top3_score"]) == pytest.approx(p.probabilities[order[2]], abs=1e-6)
        assert int(rec.metadata["object_roi_number"]) == p.source_row
        assert rec.acquired_at == p.acquired_at and rec.sample_id == p.sample_id
        assert (rec.lat, rec.lon, rec.depth) == (57.7, 11.5, 3.0)


def test_taxon_map_names_and_unmapped_labels_reported_never_guessed(tmp_path):
    mapping = tmp_path / "taxa.tsv"
    mapping.write_text("label\tecotaxa_name\n# model class -> EcoTaxa\nCiliophora\tCiliophora\n"
                       "Mesodinium_rubrum\tMesodinium rubrum (Mesodinium)\n", encoding="utf-8")
    assert load_taxon_map(mapping) == {"Ciliophora": ("Ciliophora", None),
                                       "Mesodinium_rubrum": ("Mesodinium rubrum<Mesodinium", None)}
    predictions = ifcb_predictions()
    n_detritus = sum(p.label == "detritus" for p in predictions)
    assert n_detritus > 0

    summary = write(tmp_path / "omit", predictions, taxon_map=str(mapping))
    assert summary["unmapped"] == {"detritus": n_detritus} and summary["unmapped_policy"] == "omit"
    assert summary["objects"] == len(predictions)
    records = {}
    for z in (tmp_path / "omit" / "ecotaxa").glob("*.zip"):
        records |= read_back(z)
    for p in predictions:
        expected = {"Ciliophora": "Ciliophora", "Mesodinium_rubrum": "Mesodinium rubrum<Mesodinium"}.get(p.label)
        assert records[p.object_id].label == expected  # detritus and unclassified: no category at all

    skipped = write(tmp_path / "skip", predictions, taxon_map=str(mapping), unmapped="skip")
    assert skipped["objects"] == len(predictions) - n_detritus
    assert skipped["left_out"] == {"unmapped label": n_detritus}


def test_without_a_map_no_label_is_confirmed_so_every_object_stays_unclassified(tmp_path):
    predictions = ifcb_predictions()
    summary = write(tmp_path, predictions, taxon_map="")
    labelled = Counter(p.label for p in predictions if p.label != UNCLASSIFIED)
    assert summary["taxon_map"] is None and summary["classified"] == 0
    assert summary["unmapped"] == dict(labelled)  # counted per label
    assert summary["unclassified"] + sum(labelled.values()) == summary["objects"] == len(predictions)
    (note,) = [n for n in summary["notes"] if "no EcoTaxa category confirmed" in n]
    assert f"{sum(labelled.values())} written unclassified" in note and "plankton taxa --from EXPORT --model MODEL" in note
    for z in summary["files"]:
        header, _, *rows = tsv_lines(Path(z))
        assert all(dict(zip(header, cells))["object_annotation_category"] == "" for cells in rows)


def test_same_predictions_give_identical_bytes_whatever_the_batching(tmp_path):
    predictions = ifcb_predictions()
    write(tmp_path / "a", predictions, batch=5)
    shuffled = [predictions[i] for i in np.random.default_rng(3).permutation(len(predictions))]
    write(tmp_path / "b", shuffled, batch=3)  # each bin spans several batches, interleaved
    for z in (tmp_path / "a" / "ecotaxa").glob("*.zip"):
        assert z.read_bytes() == (tmp_path / "b" / "ecotaxa" / z.name).read_bytes()
    assert not list((tmp_path / "a" / "ecotaxa").glob(".*"))  # no temporary files left behind


def test_an_object_predicted_twice_keeps_its_last_prediction(tmp_path):
    predictions = ifcb_predictions()
    again = Prediction(**{f: getattr(predictions[0], f) for f in Prediction.__slots__})
    again.probabilities = np.array([0.9, 0.05, 0.05], np.float32)
    again.label = again.label_auto = "Ciliophora"
    summary = write(tmp_path, predictions + [again])
    assert summary["duplicates"] == 1 and summary["objects"] == len(predictions)
    record = read_back(tmp_path / "ecotaxa" / f"{again.sample_id}.zip")[again.object_id]
    assert record.label == "Ciliophora" and float(record.metadata["object_score"]) == pytest.approx(0.9)


def test_update_mode_writes_only_id_status_category(tmp_path):
    predictions = ifcb_predictions()
    summary = write(tmp_path, predictions, ecotaxa_mode="update")
    classified = [p for p in predictions if p.label != UNCLASSIFIED]
    assert summary["objects"] == len(classified)
    assert summary["left_out"] == {"unclassified (update mode)": len(predictions) - len(classified)}
    for z in sorted((tmp_path / "ecotaxa-update").glob("*.zip")):
        assert check_import_zip(z, mode="update") == []
        with zipfile.ZipFile(z) as archive:
            assert archive.namelist() == [f"ecotaxa_{z.stem}.tsv"]  # no images
        lines = tsv_lines(z)
        assert lines[0] == ["object_id", "object_annotation_status", "object_annotation_category"]
        assert lines[1] == ["[t]", "[t]", "[t]"]
        assert all(status == "predicted" and category for _, status, category in lines[2:])


def test_jpegs_keep_their_extension_and_bytes_and_odd_ids_get_safe_names(tmp_path):
    predictions = demo_predictions()
    summary = write(tmp_path, predictions)
    folder = PurePosixPath(predictions[0].object_id).parent.name  # no sample: the source folder stands in
    assert {PurePosixPath(p.object_id).parent.name for p in predictions} == {folder}
    z = tmp_path / "ecotaxa" / f"{folder}.zip"
    assert summary["files"] == [str(z)] and check_import_zip(z) == []
    header, _, *rows = tsv_lines(z)
    by_id = {p.object_id: p for p in predictions}
    with zipfile.ZipFile(z) as archive:
        for cells in rows:
            row = dict(zip(header, cells))
            assert "/" not in row["img_file_name"] and row["img_file_name"].endswith(".jpg")
            assert archive.read(row["img_file_name"]) == by_id[row["object_id"]].image
            assert row["sample_id"] == row["acq_id"] == folder  # never empty: EcoTaxa would invent dummies


def test_formats_ecotaxa_refuses_are_converted_to_png(tmp_path):
    predictions = demo_predictions(n=2)
    with Image.open(io.BytesIO(predictions[0].image)) as image:
        pixels = np.asarray(image.convert("RGB"))
        tiff = io.BytesIO()
        image.save(tiff, format="TIFF")
    predictions[0].image, predictions[0].image_name = tiff.getvalue(), "x.tif"
    summary = write(tmp_path, predictions)
    assert summary["converted_to_png"] == 1
    with zipfile.ZipFile(summary["files"][0]) as archive:
        png = next(n for n in archive.namelist() if n.endswith(".png"))
        with Image.open(io.BytesIO(archive.read(png))) as image:
            assert image.format == "PNG" and np.array_equal(np.asarray(image.convert("RGB")), pixels)


# -- the checker -----------------------------------------------------------------------------------------------


def valid_zip(tmp_path: Path) -> Path:
    write(tmp_path / "valid", ifcb_predictions())
    return tmp_path / "valid" / "ecotaxa" / "IFCB5_2012_028_081515.zip"


def rewrite(source: Path, target: Path, edit) -> Path:
    """A copy of `source` whose TSV text went through `edit(text) -> text or bytes` (the BOM is kept)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = old.read(name)
            if name.endswith(".tsv"):
                edited = edit(data[3:].decode("utf-8"))
                data = edited if isinstance(edited, bytes) else codecs.BOM_UTF8 + edited.encode("utf-8")
            new.writestr(name, data)
    return target


def edit_cell(column: str, value: str, row: int = 2):
    def edit(text: str) -> str:
        lines = [line.split("\t") for line in text.split("\n")]
        lines[row][lines[0].index(column)] = value
        return "\n".join("\t".join(cells) for cells in lines)
    return edit


def drop_column(column: str):
    def edit(text: str) -> str:
        lines = [line.split("\t") for line in text.split("\n") if line]
        i = lines[0].index(column)
        return "\n".join("\t".join(c[:i] + c[i + 1:]) for c in lines) + "\n"
    return edit


def add_columns(names: list[str], kind: str, value: str):
    def edit(text: str) -> str:
        lines = [line.split("\t") for line in text.split("\n") if line]
        lines[0] += names
        lines[1] += [kind] * len(names)
        for cells in lines[2:]:
            cells += [value] * len(names)
        return "\n".join("\t".join(c) for c in lines) + "\n"
    return edit


REJECTED = {
    "no BOM": (lambda t: t.encode("utf-8"), "byte-order mark"),
    "no types row": (lambda t: "\n".join(line for i, line in enumerate(t.split("\n")) if i != 1), "types row"),
    "types row one short": (lambda t: t.replace("\t[t]\n", "\n", 1), "tokens for"),
    "not tab-separated": (lambda t: t.replace("\t", ","), "not tab-separated"),
    "category without status": (edit_cell("object_annotation_status", ""), "without a status"),
    "status without category": (edit_cell("object_annotation_category", "", row=2), "without a category"),
    "unknown status": (edit_cell("object_annotation_status", "guessed"), "unknown status"),
    "duplicate object_id": (edit_cell("object_id", "IFCB5_2012_028_081515_00001", row=3), "appears twice"),
    "empty object_id": (edit_cell("object_id", ""), "empty object_id"),
    "missing image": (edit_cell("img_file_name", "nowhere.png"), "no 'nowhere.png' in the zip"),
    "image path escaping": (edit_cell("img_file_name", "../IFCB5_2012_028_081515_00001.png"), "escapes"),
    "the TSV is not an image": (edit_cell("img_file_name", "ecotaxa_IFCB5_2012_028_081515.tsv"), "not readable"),
    "non-numeric [f]": (edit_cell("object_score", "high"), "not a number"),
    "latitude out of range": (edit_cell("object_lat", "91.5"), "within ±90"),
    "bad date": (edit_cell("object_date", "20121328"), "not a date"),
    "bad time": (edit_cell("object_time", "256100"), "not a time"),
    "hierarchy": (add_columns(["object_annotation_hierarchy"], "[t]", "Biota>Ciliophora"), "hierarchy"),
    "21 custom text fields": (add_columns([f"object_note{i}" for i in range(19)], "[t]", "x"), "allows 20"),
    "odd header": (add_columns(["score"], "[f]", "1"), "neither predefined"),
    "no object_id": (drop_column("object_id"), "no object_id column"),
    "no img_file_name": (drop_column("img_file_name"), "no img_file_name column"),
    "acq columns without acq_id": (drop_column("acq_id"), "without acq_id"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_checker_rejects(tmp_path, case):
    source = valid_zip(tmp_path)
    edit, expected = REJECTED[case]
    problems = check_import_zip(rewrite(source, tmp_path / "broken.zip", edit))
    assert any(expected in p for p in problems), problems


def test_checker_rejects_zips_without_a_tsv_or_escaping_members(tmp_path):
    empty = tmp_path / "none.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("data.tsv", "object_id\n")
    assert "no file named ecotaxa*.tsv" in check_import_zip(empty)[0]
    evil = tmp_path / "evil.zip"
    shutil.copy(valid_zip(tmp_path), evil)
    with zipfile.ZipFile(evil, "a") as archive:
        archive.writestr("../../etc/ecotaxa_x.tsv", "x")
    assert any("escapes the archive" in p for p in check_import_zip(evil))
    (tmp_path / "not.zip").write_bytes(b"PK junk")
    assert "not a readable zip" in check_import_zip(tmp_path / "not.zip")[0]


def test_checker_accepts_nested_tsv_and_multi_image_objects(tmp_path):
    source = valid_zip(tmp_path)
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(nested, "w") as new:
        for name in old.namelist():
            new.writestr(f"export/IFCB5/{name}", old.read(name))
    assert check_import_zip(nested) == []  # images are resolved relative to the TSV, at any depth

    def second_image(text: str) -> str:  # the same object again with another image: EcoTaxa adds an image rank
        lines = text.split("\n")
        header = lines[0].split("\t")
        row = lines[2].split("\t")
        other = lines[3].split("\t")[header.index("img_file_name")]
        row[header.index("img_file_name")], row[header.index("img_rank")] = other, "1"
        return "\n".join(lines[:3] + ["\t".join(row)] + lines[3:])

    assert check_import_zip(rewrite(source, tmp_path / "ranks.zip", second_image)) == []


def test_checker_on_ecotaxas_own_import_bundle(tmp_path):
    bundle = SHARED / "ecotaxa" / "ecotaxa-back-qa" / "import_test" / "m106_mn01_n1_sml"
    if not bundle.is_dir():
        pytest.skip(f"EcoTaxa QA bundles (GPL-3.0, not shipped in the repo) not found at {bundle}")

    def zipped(folder: Path, target: Path) -> Path:
        with zipfile.ZipFile(target, "w") as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, file.name)
        return target

    as_shipped = check_import_zip(zipped(bundle, tmp_path / "shipped.zip"))
    assert len(as_shipped) == 1 and "byte-order mark" in as_shipped[0]  # EcoTaxa's QA TSV is plain ASCII
    copy = shutil.copytree(bundle, tmp_path / "bom")
    tsv = copy / f"ecotaxa_{bundle.name}.tsv"
    tsv.write_bytes(codecs.BOM_UTF8 + tsv.read_bytes())
    assert check_import_zip(zipped(copy, tmp_path / "bom.zip")) == []


# -- category ids: imports without manual mapping --------------------------------------------------------------


def test_labels_from_ecotaxa_are_written_with_their_category_id(tmp_path):
    """Objects ingested from EcoTaxa's own backup export keep their category ids; predictions with those labels
    carry `object_annotation_category_id`, which EcoTaxa resolves before any name."""
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store
    from conftest import shared_data

    export = shared_data("ecotaxa", "ecotaxa-back-qa", "ref_exports", "bak_all_images")
    store = Store(tmp_path / "store")
    ingest(store, [export], fmt="ecotaxa")
    objects = store.dataset("objects").to_table(columns=["object_id", "label", "sample_id", "image"]).to_pylist()
    labels = sorted({o["label"] for o in objects if o["label"]})
    assert "detritus" in labels
    rng = np.random.default_rng(0)
    predictions = []
    for o in objects:
        probabilities = rng.dirichlet(np.ones(len(labels))).astype(np.float32)
        label = o["label"] or labels[0]
        predictions.append(Prediction(o["object_id"], probabilities, label, label, sample_id=o["sample_id"],
                                      image=o["image"]["bytes"]))
    run = PredictionRun(model_id="m", model_hash="h", classes=labels, thresholds=None, classifier_name="t",
                        options={"store": str(store.root)})
    session = EcoTaxaWriter().open(tmp_path / "out", run)
    session.write(predictions)
    summary = session.close()
    assert summary["with_category_id"] == summary["classified"] == len(predictions)
    for z in summary["files"]:
        assert check_import_zip(Path(z)) == []
        header, types, *rows = tsv_lines(Path(z))
        assert types[header.index("object_annotation_category_id")] == "[f]"
        for cells in rows:
            row = dict(zip(header, cells))
            if row["object_annotation_category"] == "detritus":
                assert row["object_annotation_category_id"] == "84963"  # as in the export


def test_taxon_map_ids_and_update_mode_summary_says_unmapped_objects_were_left_out(tmp_path):
    mapping = tmp_path / "taxa.tsv"
    mapping.write_text("label\tecotaxa_name\tcategory_id\nCiliophora\tCiliophora\t11514\n", encoding="utf-8")
    predictions = ifcb_predictions()
    summary = write(tmp_path, predictions, taxon_map=str(mapping), ecotaxa_mode="update")
    unmapped = sum(p.label in ("Mesodinium_rubrum", "detritus") for p in predictions)
    assert sum(summary["unmapped"].values()) == unmapped
    assert summary["left_out"]["unmapped (update mode)"] == unmapped
    assert any(f"{unmapped} objects" in note and f"{unmapped} left out" in note for note in summary["notes"])
    for z in (tmp_path / "ecotaxa-update").glob("*.zip"):
        header, _, *rows = tsv_lines(z)
        assert header[-1] == "object_annotation_category_id"
        assert all(cells[-1] == "11514" and cells[2] == "Ciliophora" for cells in rows)


def test_a_folder_label_s_id_is_never_written(tmp_path):
    """`Copepoda__6666` says nothing EcoTaxa confirmed: unclassified by default, by name only on request."""
    classes = ["Copepoda__6666", "detritus__8888", "other"]
    predictions = [Prediction(p.object_id, np.array([0.7, 0.2, 0.1], np.float32), "Copepoda__6666",
                              "Copepoda__6666", sample_id=p.sample_id, image=p.image) for p in ifcb_predictions()[:3]]
    for policy, category in (("omit", ""), ("name", "Copepoda")):
        run = PredictionRun(model_id="m", model_hash="h", classes=classes, thresholds=None, classifier_name="t",
                            options={"unmapped": policy})
        session = EcoTaxaWriter().open(tmp_path / policy, run)
        session.write(predictions)
        summary = session.close()
        assert summary["unmapped"] == {"Copepoda__6666": 3} and summary["with_category_id"] == 0
        header, _, *rows = tsv_lines(Path(summary["files"][0]))
        assert "object_annotation_category_id" not in header
        for cells in rows:
            row = dict(zip(header, cells))
            assert row["object_annotation_category"] == category
            assert row["object_label_auto"] == "Copepoda__6666"  # our label, as everywhere else


def test_strict_refuses_a_run_with_unconfirmed_labels_before_anything_is_written(tmp_path):
    from plankton_cli.core.errors import DataError

    with pytest.raises(DataError, match=r"2 of the model's 3 labels .*Mesodinium_rubrum, detritus.*plankton taxa"):
        write(tmp_path, ifcb_predictions(), taxon_map=str(confirm(tmp_path, "Ciliophora\tCiliophora\t11514")),
              strict="1")
    assert not (tmp_path / "ecotaxa").exists()


def confirm(folder: Path, *lines: str) -> Path:
    path = folder / "map.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def one_object_from_ecotaxa(tmp_path: Path):
    """The record the EcoTaxa reader makes of `obj_1` (sample s1) in a bundle folder `cruise-a`."""
    jpg = sorted(DEMO.rglob("*.jpg"))[0]
    bundle = tmp_path / "cruise-a"
    bundle.mkdir()
    (bundle / "a.jpg").write_bytes(jpg.read_bytes())
    (bundle / "ecotaxa_s1.tsv").write_text("object_id\timg_file_name\tsample_id\nobj_1\ta.jpg\ts1\n")
    (record,) = read_back(bundle).values()
    return record


def test_objects_read_from_ecotaxa_go_back_under_ecotaxa_s_own_id(tmp_path):
    """The store id is qualified (`<bundle>/<object_id>`); update mode must name the object as EcoTaxa does."""
    record = one_object_from_ecotaxa(tmp_path)
    assert record.object_id == "cruise-a/obj_1"
    probabilities = np.eye(len(CLASSES), dtype=np.float32)[0]
    prediction = Prediction(record.object_id, probabilities, CLASSES[0], CLASSES[0], sample_id=record.sample_id,
                            metadata=record.metadata)
    write(tmp_path / "out", [prediction], ecotaxa_mode="update")
    (z,) = (tmp_path / "out" / "ecotaxa-update").glob("*.zip")
    assert [row[0] for row in tsv_lines(z)[2:]] == ["obj_1"]


def test_a_map_from_an_export_lacking_some_labels_leaves_their_objects_unclassified_and_listed(tmp_path):
    """The issue's case: folder-labelled classes, an export that knows only some of them. No id is invented."""
    from conftest import shared_data
    from plankton_plugins.ecotaxa.taxa import build_taxon_map

    export = shared_data("ecotaxa", "ecotaxa-back-qa", "ref_exports", "bak_all_images")
    classes = ["detritus", "Oncaeidae__78418", "darksphere__7777", "detritus__8888"]
    taxa = build_taxon_map([export], classes)
    assert [label for label, _ in taxa.unresolved] == ["darksphere__7777", "detritus__8888"]
    (tmp_path / "taxa.tsv").write_text(taxa.to_tsv(), encoding="utf-8")
    run = PredictionRun(model_id="m", model_hash="h", classes=classes, thresholds=None, classifier_name="t",
                        options={"taxon_map": str(tmp_path / "taxa.tsv")})
    predictions = []
    for i, p in enumerate(ifcb_predictions()):
        probabilities = np.roll(np.array([0.7, 0.1, 0.1, 0.1], np.float32), i % 4)
        label = classes[i % 4]
        predictions.append(Prediction(p.object_id, probabilities, label, label, sample_id=p.sample_id, image=p.image))
    session = EcoTaxaWriter().open(tmp_path / "out", run)
    session.write(predictions)
    summary = session.close()
    expected = Counter(p.label for p in predictions)
    assert summary["unmapped"] == {"darksphere__7777": expected["darksphere__7777"],
                                   "detritus__8888": expected["detritus__8888"]}
    assert summary["classified"] == summary["with_category_id"] == expected["detritus"] + expected["Oncaeidae__78418"]
    assert summary["classified"] + sum(summary["unmapped"].values()) == summary["objects"] == len(predictions)
    assert any("darksphere__7777" in note and "--taxon-map" in note for note in summary["notes"])
    written = {}
    for z in summary["files"]:
        assert check_import_zip(Path(z), taxa={"detritus": "84963", "Oncaeidae": "78418"}) == []
        header, _, *rows = tsv_lines(Path(z))
        for cells in rows:
            row = dict(zip(header, cells))
            written[row["object_id"]] = (row["object_annotation_category"], row["object_annotation_category_id"])
    for p in predictions:
        assert written[p.object_id] == {"detritus": ("detritus", "84963"), "Oncaeidae__78418": ("Oncaeidae", "78418"),
                                        }.get(p.label, ("", ""))  # 7777 and 8888 are nowhere in the zips


def test_checker_holds_categories_to_the_confirmed_taxa(tmp_path):
    source = valid_zip(tmp_path)  # Ciliophora, Mesodinium_rubrum, detritus by name, no ids
    assert check_import_zip(source, taxa={c: None for c in CLASSES}) == []
    problems = check_import_zip(source, taxa={"Ciliophora": None})
    assert problems and all("is not a confirmed EcoTaxa taxon" in p for p in problems)
    with_id = rewrite(source, tmp_path / "id.zip", add_columns(["object_annotation_category_id"], "[f]", "8888"))
    problems = check_import_zip(with_id, taxa={c: "84963" for c in CLASSES})
    assert problems and all("with id 8888, but the taxon map or export gives it id 84963" in p for p in problems)
    two_samples = rewrite(source, tmp_path / "acq.zip", edit_cell("sample_id", "elsewhere", row=3))
    assert any("in two samples" in p for p in check_import_zip(two_samples))
    assert any("empty acq_id" in p for p in check_import_zip(rewrite(source, tmp_path / "e.zip",
                                                                     edit_cell("acq_id", ""))))


def test_one_run_sends_objects_from_ecotaxa_to_update_zips_and_the_others_to_new_zips(tmp_path):
    record = one_object_from_ecotaxa(tmp_path)
    from_ecotaxa = Prediction(record.object_id, np.eye(len(CLASSES), dtype=np.float32)[0], CLASSES[0], CLASSES[0],
                              sample_id=record.sample_id, metadata=record.metadata, image=record.image)
    predictions = ifcb_predictions()
    summary = write(tmp_path / "out", predictions + [from_ecotaxa])  # ecotaxa_mode: auto, the default
    assert (summary["mode"], summary["update_objects"], summary["new_objects"]) == ("auto", 1, len(predictions))
    (update,) = (tmp_path / "out" / "ecotaxa-update").glob("*.zip")
    assert check_import_zip(update, mode="update") == []
    assert [row[:3] for row in tsv_lines(update)[2:]] == [["obj_1", "predicted", CLASSES[0]]]
    assert sorted(p.stem for p in (tmp_path / "out" / "ecotaxa").glob("*.zip")) == sorted(BINS)
    notes = " ".join(summary["notes"])
    assert "'Update data including classification' (\"Cla\")" in notes and "score 1.0" in notes
    assert "object_score" in notes
