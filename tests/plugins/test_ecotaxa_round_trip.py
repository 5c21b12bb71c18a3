"""EcoTaxa export -> ingest -> predict (tiny model) -> import zip, compared field by field with the export.

Every real EcoTaxa layout in ../shared/data that has images (import bundles, acquisition TSV export, backup, DOI).
What may differ: the annotation columns (the prediction's), `img_file_name` (the image is compared byte for byte
instead) and columns the writer adds (its score columns, `sample_id`/`acq_id` where the export had none). Numbers
the reader parses into record fields (lat/lon, date/time, `img_rank`) are compared as values.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from conftest import plankton, shared_data
from plankton_cli.ingest import ingest
from plankton_cli.infer.predict import predict
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_plugins.ecotaxa.checker import PREDEFINED, check_import_zip
from plankton_plugins.ecotaxa.reader import (
    EcoTaxaReader, parse_coordinate, parse_date, parse_number, parse_time,
)
from plankton_plugins.ecotaxa.tsv import TsvReader
from test_predict import tiny_model

QA = ("ecotaxa", "ecotaxa-back-qa")
LAYOUTS = {  # layout -> (images in the export, objects in it)
    "import_test": (11, 11),
    "import_just_predicted": (1, 1),
    "import_sparse": (6, 6),
    "ref_exports/tsv_by_acquisition": (13, 12),
    "ref_exports/bak_all_images": (12, 11),
    "ref_exports/doi": (12, 11),
}
AS_VALUES = {
    "object_lat": lambda t: parse_coordinate(t, 90), "object_lon": lambda t: parse_coordinate(t, 180),
    "object_date": parse_date, "object_time": parse_time, "img_rank": lambda t: parse_number(t) or 0.0,
}
NOT_COMPARED = ("img_file_name",)  # the image itself is compared


def importable(column: str) -> bool:
    """A column EcoTaxa imports (the DOI export adds `objid` and the like, which an import would refuse)."""
    return column in PREDEFINED or re.fullmatch(r"(object|sample|acq|process)_\S+", column) is not None


def export_rows(layout: Path) -> dict[tuple[str, float], tuple[dict[str, str], bytes]]:
    """(object_id, img_rank) -> (the export's row, its image bytes), from every TSV of the layout."""
    rows = {}
    reader = EcoTaxaReader()
    for source in reader.discover(layout, ReadOptions()):
        tsv = source.files[0]
        with TsvReader(lambda tsv=tsv: tsv.open("rb")) as table:
            for row in table:
                values = {k: v.strip() for k, v in (row.values or {}).items()}
                image = (tsv.parent / values["img_file_name"]).read_bytes()
                rows[(values["object_id"], AS_VALUES["img_rank"](values.get("img_rank", "")))] = (values, image)
    return rows


def zip_rows(files: list[str], mode: str) -> dict[tuple[str, float], tuple[dict[str, str], bytes | None]]:
    rows = {}
    for file in files:
        assert check_import_zip(file, mode=mode) == [], file
        with zipfile.ZipFile(file) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith(".tsv")]
            with TsvReader(lambda m=member: archive.open(m)) as table:
                for row in table:
                    values = row.values or {}
                    image = archive.read(values["img_file_name"]) if mode == "new" else None
                    key = (values["object_id"], AS_VALUES["img_rank"](values.get("img_rank", "")))
                    assert key not in rows, key
                    rows[key] = (values, image)
    return rows


def favouring(model: Path, index: int) -> Path:
    """The model file with its last layer's bias set so that it predicts class `index` for every image."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(model), "pt") as weights:
        metadata = weights.metadata()
    tensors = load_file(str(model))
    bias = torch.zeros_like(tensors["head.3.bias"])
    bias[index] = 100.0
    tensors["head.3.bias"] = bias
    save_file(tensors, str(model), metadata=metadata)
    return model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # classes the exports use, so some predictions are confirmed by EcoTaxa's own labels in the store
    return tiny_model(tmp_path_factory.mktemp("model") / "fold-0", ["detritus", "Oncaeidae", "egg<other"], {})


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_what_goes_back_is_what_came_out_plus_the_prediction(tmp_path, model, layout):
    export = shared_data(*QA, *layout.split("/"))
    store = Store(tmp_path / "store")
    ingest(store, [export], fmt="ecotaxa")
    expected = export_rows(export)
    n_images, n_objects = LAYOUTS[layout]
    assert (len(expected), len({object_id for object_id, _ in expected})) == (n_images, n_objects)

    new = predict(model, store=store, to=["ecotaxa"], out_dir=tmp_path / "new",
                  writer_options={"ecotaxa_mode": "new"}).writers["ecotaxa"]
    assert (new["images"], new["new_objects"], new["duplicates"]) == (n_images, n_objects, 0)
    written = zip_rows(new["files"], "new")
    assert set(written) == set(expected)  # every image of every object, under the export's id and rank
    compared = 0
    for key, (row, image) in expected.items():
        back, back_image = written[key]
        assert back_image == image, key
        for column, value in row.items():
            if column.startswith("object_annotation_") or column in NOT_COMPARED or not importable(column):
                assert importable(column) or column not in back, column  # never written: EcoTaxa would refuse it
                continue
            parse = AS_VALUES.get(column)
            assert (parse(back[column]) == parse(value)) if parse else (back.get(column, "") == value), (key, column, back.get(column), value)
            compared += 1
        # all images of an object carry one prediction: the first image's
        first = written[(key[0], min(rank for object_id, rank in written if object_id == key[0]))][0]
        assert back["object_annotation_category"] == first["object_annotation_category"]
        assert back["object_score"] == first["object_score"]
    assert compared >= 5 * n_images
    print(f"{layout}: {compared} fields compared on {n_images} images of {n_objects} objects")

    # by default the same objects, already in EcoTaxa, go to update zips: one row per object, EcoTaxa's own id
    update = predict(model, store=store, to=["ecotaxa"], out_dir=tmp_path / "auto", force=True).writers["ecotaxa"]
    assert update["new_objects"] == 0 and update["images"] == 0
    assert update["update_objects"] + sum(update["left_out"].values()) == n_objects
    rows = zip_rows(update["files"], "update")
    assert {object_id for object_id, _ in rows} <= {object_id for object_id, _ in expected}
    assert all(row["object_annotation_status"] == "predicted" for row, _ in rows.values())
    assert any("'Cla'" in note or '"Cla"' in note for note in update["notes"]) == bool(update["files"])


def test_labels_no_export_confirms_are_counted_and_strict_refuses_them(tmp_path):
    """detritus is EcoTaxa's (id 84963 in the backup export); darksphere__7777 is only a folder name."""
    store = Store(tmp_path / "store")
    ingest(store, [shared_data(*QA, "ref_exports", "bak_all_images")], fmt="ecotaxa")
    classes = ["detritus", "darksphere__7777"]
    for favoured in classes:  # an untrained model gives every object one class: bias it to each in turn
        model = favouring(tiny_model(tmp_path / favoured / "fold-0", classes, {}), classes.index(favoured))
        ecotaxa = predict(model, store=store, to=["ecotaxa"], out_dir=tmp_path / favoured).writers["ecotaxa"]
        if favoured == "detritus":  # EcoTaxa's own category, with the export's id, in update zips
            assert ecotaxa["classified"] == ecotaxa["with_category_id"] == ecotaxa["update_objects"] == 11
            rows = zip_rows(ecotaxa["files"], "update")
            assert len(rows) == 11 and {(row["object_annotation_category"], row["object_annotation_category_id"])
                                        for row, _ in rows.values()} == {("detritus", "84963")}
        else:  # never 7777: counted, and left out of the update (which would otherwise unclassify nothing)
            assert ecotaxa["unmapped"] == {"darksphere__7777": 11} and ecotaxa["files"] == []
            assert ecotaxa["left_out"] == {"unmapped (update mode)": 11}
            assert any("darksphere__7777 11" in note and "--taxon-map" in note for note in ecotaxa["notes"])

    proc = plankton("predict", "--store", str(store.root), "--model", str(model), "--to", "ecotaxa", "--strict",
                    "--force", "--out", str(tmp_path / "strict"))
    assert proc.returncode == 65
    (line,) = proc.stderr.strip().splitlines()
    assert "darksphere__7777" in line and "plankton taxa --from EXPORT" in line
    assert not (tmp_path / "strict" / "ecotaxa-update").exists()
