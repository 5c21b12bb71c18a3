"""EcoTaxa reader on EcoTaxa's own QA bundles and reference exports (GPL, read from /work/shared/data)."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from plankton_cli.core.records import ReadOptions, Record, Rejection
from plankton_plugins.ecotaxa.reader import EcoTaxaReader, parse_coordinate, parse_time
from plankton_plugins.ecotaxa.tsv import TsvReader, detect_encoding, normalize_category
from conftest import SHARED

READER = EcoTaxaReader()
OPTIONS = ReadOptions()



QA = SHARED / "ecotaxa" / "ecotaxa-back-qa"
needs_qa = pytest.mark.skipif(
    not QA.is_dir(), reason=f"EcoTaxa QA bundles (GPL-3.0, not shipped in the repo) not found at {QA}"
)


def read_all(path: Path, options: ReadOptions = OPTIONS) -> tuple[list[Record], list[Rejection]]:
    records, rejections = [], []
    for source in READER.discover(path, options):
        for item in READER.read(source, options):
            (records if isinstance(item, Record) else rejections).append(item)
    return records, rejections


def local(item: Record | Rejection) -> str:
    """The id within its collection: what EcoTaxa calls the object (plus `#rank` for further images)."""
    collection, _, rest = item.object_id.partition("/")
    assert collection and rest, item.object_id
    return rest


def opener(path: Path):
    return lambda: path.open("rb")


# -- the QA layouts --------------------------------------------------------------------------------------------


@needs_qa
def test_import_test_labels_statuses_and_fields():
    records, rejections = read_all(QA / "import_test")
    assert rejections == []
    got = [(local(r), r.label, r.label_status) for r in records]
    assert got == [
        ("m106_mn01_n1_sml_409", "t001", "predicted"),
        ("m106_mn01_n1_sml_821", "Oncaeidae", "predicted"),
        ("m106_mn01_n1_sml_822", "Cyclopoida", "predicted"),
        ("m106_mn01_n1_sml_850", "other<Biota", "predicted"),
        ("m106_mn01_n1_sml_851", "Oncaeidae", "predicted"),
        ("m106_mn01_n1_sml_852", "Other<Biota", "predicted"),  # written `Other (Biota)` in the TSV
        ("m106_mn01_n1_sml_853", "other", "predicted"),
        ("m106_mn01_n1_sml_854", "ozzeur", "predicted"),
        ("m106_mn01_n2_sml_1", "detritus", "predicted"),
        ("m106_mn01_n2_sml_1081", "detritus", "predicted"),
        ("m106_mn01_n2_sml_1111", "egg<other", "predicted"),
    ]
    first = records[0]
    tsv = QA / "import_test" / "m106_mn01_n1_sml" / "ecotaxa_m106_mn01_n1_sml.tsv"
    assert first.source_file == str(tsv.absolute()) and first.source_row == 1
    assert first.image == (tsv.parent / "m106_mn01_n1_sml_409.jpg").read_bytes()
    assert (first.lat, first.lon) == (-44.72543333333333, 145.5351)
    assert first.acquired_at == datetime(2014, 4, 20, 4, 20, tzinfo=timezone.utc)  # object_time "420"
    assert first.depth == 800.0  # mean of 600 and 1000
    assert first.instrument == "epson" and first.sample_id == "m106_mn01_n1_sml"
    assert first.metadata["object_new_field"] == "1"
    assert first.metadata["process_id"] == "zooprocess_m106_mn01_n1_sml"
    assert first.metadata["object_depth_min"] == "600.0" and first.metadata["img_file_name"].endswith("_409.jpg")
    assert "object_id" not in first.metadata and "object_annotation_category" not in first.metadata
    # three objects share one image file: each is its own record
    shared = [r for r in records if r.metadata["img_file_name"] == "m106_mn01_n1_sml_850.jpg"]
    assert len(shared) == 4 and len({r.object_id for r in shared}) == 4


@needs_qa
def test_doi_export_labels_lineage_and_image_ranks():
    records, rejections = read_all(QA / "ref_exports" / "doi")
    assert rejections == []
    assert Counter(r.label for r in records) == {
        "detritus": 4, "egg<other": 3, "Oncaeidae": 2, "t001": 1, "Cyclopoida": 1, "other<Biota": 1,
    }
    assert {r.label_status for r in records} == {"predicted"}
    assert [r.source_row for r in records] == list(range(1, 13))
    ids = [local(r) for r in records]
    assert len(set(ids)) == 12 and ids[-2:] == ["m106_mn01_n3_sml_1111", "m106_mn01_n3_sml_1111#1"]
    by_id = {local(r): r for r in records}
    assert by_id["m106_mn01_n1_sml_822"].lineage == (
        "Biota>Animalia>Arthropoda>Crustacea>Multicrustacea>Copepoda>Neocopepoda>Podoplea>Cyclopoida"
    )
    second_image = QA / "ref_exports" / "doi" / "images" / "egg_other" / "13_1.jpg"
    assert by_id["m106_mn01_n3_sml_1111#1"].image == second_image.read_bytes()


@needs_qa
@pytest.mark.parametrize(
    ("layout", "n_sources", "n_records"),
    [
        ("import_sparse", 1, 6),
        ("import_just_predicted", 1, 1),
        ("ref_exports/tsv_by_acquisition", 3, 13),
        ("ref_exports/bak_all_images", 3, 12),
    ],
)
def test_other_layouts(layout, n_sources, n_records):
    sources = list(READER.discover(QA / layout, OPTIONS))
    assert len(sources) == n_sources and all(s.files == (Path(s.key),) for s in sources)
    records, rejections = read_all(QA / layout)
    assert rejections == [] and len(records) == n_records
    assert len({r.object_id for r in records}) == n_records
    assert all(r.image[:2] == b"\xff\xd8" or r.image[:4] == b"\x89PNG" for r in records)


@needs_qa
def test_sparse_vpr_import():
    records, _ = read_all(QA / "import_sparse")
    first = records[0]
    assert (local(first), first.label, first.label_status) == ("roi.0729931500", None, "none")
    assert first.instrument == "VPR"
    assert first.acquired_at == datetime(2016, 7, 19, 2, 1, 39, tzinfo=timezone.utc)  # "020139.315"
    assert first.metadata["sample_ship"] == "Healy"


@needs_qa
def test_backup_and_acquisition_exports_rank_suffix():
    for layout, suffix in (("ref_exports/bak_all_images", "#2"), ("ref_exports/tsv_by_acquisition", "#2")):
        records, _ = read_all(QA / layout)
        assert "m106_mn01_n3_sml_1111" + suffix in {local(r) for r in records}


@needs_qa
def test_annotations_only_rows_are_rejected_with_file_and_row():
    tsv = QA / "ref_exports" / "just_annotations" / "ref.tsv"
    assert READER.sniff(tsv)
    records, rejections = read_all(tsv)
    assert records == [] and len(rejections) == 15
    assert [r.source_row for r in rejections] == list(range(1, 16))
    assert all(r.source_file == str(tsv.absolute()) and "no image file" in r.reason for r in rejections)
    assert local(rejections[0]) == "20200205-111823_3"


@needs_qa
def test_cr_only_ambiguous_categories(tmp_path):
    tsv = QA / "import de categories ambigues" / "ecotaxa.tsv"
    assert b"\n" not in tsv.read_bytes()  # CR-only line ends
    with TsvReader(opener(tsv)) as table:
        assert table.types == ["[t]", "[n]", "[n]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]"]
        rows = list(table)
    assert [row.number for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [normalize_category(row.values["object_annotation_category"]) for row in rows] == [
        "part<Annelida", "part<Cnidaria", "part", "part", "part", "part",
    ]
    # As shipped the bundle has no images: every row is rejected, naming its row.
    _, rejections = read_all(tsv.parent)
    assert [(r.source_row, "no image file" in r.reason) for r in rejections] == [(n, True) for n in range(1, 7)]
    # With images beside it, the rows come through with their labels and statuses.
    jpg = (QA / "import_test" / "m106_mn01_n2_sml" / "m106_mn01_n2_sml_1.jpg").read_bytes()
    shutil.copy(tsv, tmp_path / "ecotaxa.tsv")
    for n in range(1, 7):
        (tmp_path / f"{n}.jpg").write_bytes(jpg)
    records, rejections = read_all(tmp_path)
    assert rejections == []
    assert [(r.label, r.label_status) for r in records] == [
        ("part<Annelida", "validated"), ("part<Cnidaria", "validated"), ("part", "predicted"),
        ("part", "predicted"), ("part", "dubious"), ("part", "dubious"),
    ]
    assert records[0].metadata["object_annotation_parent_category"] == "Annelida"


@needs_qa
def test_zip_gives_the_same_records_as_the_folder(tmp_path):
    folder = QA / "import_test"
    archive = tmp_path / "import_test.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
    assert READER.sniff(archive)
    sources = list(READER.discover(archive, OPTIONS))
    assert [s.key for s in sources] == [
        f"{archive}!m106_mn01_n1_sml/ecotaxa_m106_mn01_n1_sml.tsv",
        f"{archive}!m106_mn01_n2_sml/ecotaxa_m106_mn01_n2_sml.tsv",
    ]
    assert all(s.files == (archive,) for s in sources)
    from_zip, zip_rejections = read_all(archive)
    from_folder, _ = read_all(folder)
    assert zip_rejections == []

    def comparable(r: Record):
        return (local(r), r.image, r.label, r.label_status, r.source_row, r.acquired_at, r.depth, r.metadata)

    assert [comparable(r) for r in from_zip] == [comparable(r) for r in from_folder]
    assert from_zip[0].source_file == sources[0].key


@needs_qa
def test_broken_rows_are_rejected_and_the_rest_read(tmp_path):
    sample = tmp_path / "m106_mn01_n2_sml"
    shutil.copytree(QA / "import_test" / "m106_mn01_n2_sml", sample)
    tsv = sample / "ecotaxa_m106_mn01_n2_sml.tsv"
    header, types, *rows = tsv.read_text(encoding="utf-8").splitlines()
    columns = header.split("\t")

    def variant(object_id: str, image: str) -> str:
        cells = rows[0].split("\t")
        cells[columns.index("object_id")], cells[columns.index("img_file_name")] = object_id, image
        return "\t".join(cells)

    (sample / "empty.jpg").write_bytes(b"")
    (sample / "text.jpg").write_text("not a jpeg")
    broken = [
        "\t".join(rows[0].split("\t")[:5]),  # row 2: too few fields
        variant("", "m106_mn01_n2_sml_1.jpg"),  # row 3: no object_id
        variant("gone", "missing.jpg"),  # row 4: image not there
        variant("empty", "empty.jpg"),  # row 5: 0-byte image
        variant("text", "text.jpg"),  # row 6: not an image
        variant("m106_mn01_n2_sml_1", "m106_mn01_n2_sml_1.jpg"),  # row 7: the same object and image again
    ]
    tsv.write_text("\n".join([header, types, rows[0], *broken, *rows[1:]]) + "\n", encoding="utf-8")
    records, rejections = read_all(sample)
    # rows 5 and 6 have image bytes: decoding them, and rejecting what does not decode, is the store's job (below)
    assert [local(r) for r in records] == ["m106_mn01_n2_sml_1", "empty", "text", "m106_mn01_n2_sml_1081",
                                              "m106_mn01_n2_sml_1111"]
    assert [r.source_row for r in records] == [1, 5, 6, 8, 9]
    reasons = {r.source_row: r.reason for r in rejections}
    assert sorted(reasons) == [2, 3, 4, 7]
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store

    store = Store(tmp_path / "store")
    summary = ingest(store, [sample])
    assert (summary.read, summary.stored, summary.n_rejected) == (9, 3, 6)
    stored = {r["source_row"]: r for r in store.dataset("rejections").to_table().to_pylist()}
    reasons[5], reasons[6] = stored["5"]["reason"], stored["6"]["reason"]
    assert stored["6"]["source_file"] == str(tsv)
    assert "fields" in reasons[2] and "object_id" in reasons[3] and "no image file" in reasons[4]
    assert "empty" in reasons[5] and "undecodable image" in reasons[6] and "duplicate" in reasons[7]
    assert all(r.source_file == str(tsv) for r in rejections)


# -- parsing details (synthetic TSVs, no shared data needed) -----------------------------------------------------


def test_encodings_give_the_same_text(tmp_path):
    text = "object_id\tprocess_particle_pixel_size_µm\tobject_annotation_category\nobj_1\t2.5\tCérataulina\n"
    copies = {
        "latin-1": text.encode("latin-1"),
        "utf-8": text.encode("utf-8"),
        "utf-8-sig": text.encode("utf-8-sig"),
    }
    seen = []
    for encoding, data in copies.items():
        path = tmp_path / f"ecotaxa_{encoding}.tsv"
        path.write_bytes(data)
        assert detect_encoding(opener(path)) == encoding
        with TsvReader(opener(path)) as table:
            seen.append((table.header, [row.values for row in table]))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][0][1] == "process_particle_pixel_size_µm"
    assert seen[0][1] == [{"object_id": "obj_1", "process_particle_pixel_size_µm": "2.5",
                           "object_annotation_category": "Cérataulina"}]


def test_tsv_without_types_row_keeps_its_first_object(tmp_path):
    path = tmp_path / "ecotaxa_x.tsv"
    path.write_bytes(b' "Object_ID" \tIMG_FILE_NAME\r\nfirst\ta.png\r\nsecond\tb.png\r\n')
    with TsvReader(opener(path)) as table:
        assert table.header == ["object_id", "img_file_name"] and table.types is None
        assert [(row.number, row.values["object_id"]) for row in table] == [(1, "first"), (2, "second")]


def test_quoted_types_row_is_consumed(tmp_path):
    path = tmp_path / "ecotaxa_x.tsv"
    path.write_bytes(b'"object_id"\t"img_rank"\n"[t]"\t"[f]"\n"a"\t0\n')
    with TsvReader(opener(path)) as table:
        assert table.types == ["[t]", "[f]"]
        assert [row.values for row in table] == [{"object_id": "a", "img_rank": "0"}]


def test_field_parsers():
    assert parse_coordinate("43°41 30", 90) == pytest.approx(43 + 41 / 60 + 30 / 3600)
    assert parse_coordinate("-24.5", 90) == -24.5
    assert parse_coordinate("95", 90) is None and parse_coordinate("nan", 90) is None
    assert [parse_time(t).isoformat() for t in ("420", "0420", "042000", "04:20:00", "020139.315")] == [
        "04:20:00", "04:20:00", "04:20:00", "04:20:00", "02:01:39",
    ]
    assert parse_time("2599") is None


def test_category_id_pixel_size_and_default_instrument(tmp_path):
    png = (Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo" / "demo-images" / "Tripos")
    image = sorted(png.glob("*.jpg"))[0]
    shutil.copy(image, tmp_path / "a.jpg")
    (tmp_path / "ecotaxa_ids.tsv").write_text(
        "object_id\timg_file_name\tobject_annotation_category_id\tobject_annotation_status\t"
        "acq_resolution_pixels_per_micron\tobject_date\n"
        "a\ta.jpg\t85012\tvalidated\t3.4\t2022-05-22\n",
        encoding="utf-8",
    )
    (record,), _ = read_all(tmp_path, ReadOptions(instrument="ifcb"))
    assert (record.label, record.label_status, record.instrument) == ("id:85012", "validated", "IFCB")
    assert record.pixel_size_um == pytest.approx(1 / 3.4)
    assert record.acquired_at == datetime(2022, 5, 22, tzinfo=timezone.utc)
    assert record.metadata["object_annotation_category_id"] == "85012"


def test_zip_slip_members_are_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    jpg = sorted((Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo").rglob("*.jpg"))[0].read_bytes()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(
            "bundle/ecotaxa_evil.tsv",
            "object_id\timg_file_name\n"
            "ok\tok.jpg\n"
            "up\t../../outside.jpg\n"
            "abs\t/etc/passwd\n"
            "sneaky\tsub/../../outside.jpg\n",
        )
        zf.writestr("bundle/ok.jpg", jpg)
        zf.writestr("../outside.jpg", jpg)
        zf.writestr("../ecotaxa_escaped.tsv", "object_id\timg_file_name\nx\tok.jpg\n")
    sources = list(READER.discover(archive, OPTIONS))
    assert [s.extra[0] for s in sources] == ["../ecotaxa_escaped.tsv", "bundle/ecotaxa_evil.tsv"]
    records, rejections = read_all(archive)
    assert [local(r) for r in records] == ["ok"]
    escaped = [r for r in rejections if "escapes the archive" in r.reason]
    assert len(escaped) == 4 and len(rejections) == 4
    assert {r.source_row for r in escaped} == {None, 2, 3, 4}


def test_sniff(tmp_path):
    assert not READER.sniff(tmp_path)
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "ecotaxa_sample.tsv").write_text("object_id\n")
    assert READER.sniff(tmp_path) and READER.sniff(tmp_path / "sample" / "ecotaxa_sample.tsv")
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    assert not READER.sniff(other)


def test_unreadable_zip_is_one_rejection(tmp_path):
    broken = tmp_path / "export.zip"
    broken.write_bytes(b"PK\x03\x04 truncated download")
    assert not READER.sniff(broken)
    records, rejections = read_all(broken)
    assert records == [] and [(r.source_row, r.reason) for r in rejections] == [(None, "not a readable zip archive")]


@pytest.mark.parametrize("encoding, detected", [("utf-16", "utf-16"), ("utf-16-le", "utf-16-le"),
                                                ("utf-16-be", "utf-16-be")])
def test_utf16_tsv_is_read(tmp_path, encoding, detected):
    """Excel's "Unicode text" export is UTF-16 (with a BOM); it used to be rejected as "no object_id column"."""
    jpg = sorted((Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo").rglob("*.jpg"))[0]
    shutil.copy(jpg, tmp_path / "a.jpg")
    path = tmp_path / "ecotaxa_unicode.tsv"
    path.write_bytes("object_id\timg_file_name\tobject_annotation_category\nobj_1\ta.jpg\tCérataulina\n"
                     .encode(encoding))
    assert detect_encoding(opener(path)) == detected
    assert READER.sniff(path)
    (record,), rejections = read_all(tmp_path)
    assert not rejections and (local(record), record.label) == ("obj_1", "Cérataulina")


def test_folder_tsv_cannot_read_outside_its_bundle(tmp_path):
    """`..` in a folder TSV's img_file_name is refused as the zip reader refuses it; a sub folder is fine."""
    jpg = sorted((Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo").rglob("*.jpg"))[0]
    (tmp_path / "bundle" / "sub").mkdir(parents=True)
    shutil.copy(jpg, tmp_path / "bundle" / "sub" / "ok.jpg")
    shutil.copy(jpg, tmp_path / "outside.jpg")
    (tmp_path / "bundle" / "ecotaxa_x.tsv").write_text(
        "object_id\timg_file_name\nok\tsub/ok.jpg\nup\t../outside.jpg\nsneaky\tsub/../../outside.jpg\n"
        f"abs\t{tmp_path / 'outside.jpg'}\n")
    records, rejections = read_all(tmp_path / "bundle")
    assert [local(r) for r in records] == ["ok"]
    assert [(r.source_row, "escapes the bundle" in r.reason) for r in rejections] == [(2, True), (3, True), (4, True)]


def test_store_ids_are_qualified_by_project_or_bundle_and_keep_the_native_id(tmp_path):
    """Two bundles holding the same EcoTaxa object_id are two objects; EcoTaxa's own id stays in the metadata."""
    jpg = sorted((Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo").rglob("*.jpg"))[0]
    for bundle in ("cruise-a", "cruise-b"):
        (tmp_path / bundle).mkdir()
        shutil.copy(jpg, tmp_path / bundle / "a.jpg")
        (tmp_path / bundle / "ecotaxa_x.tsv").write_text("object_id\timg_file_name\nobj_1\ta.jpg\n")
    ids = [(r.object_id, r.metadata["ecotaxa_object_id"]) for b in ("cruise-a", "cruise-b")
           for r in read_all(tmp_path / b)[0]]
    assert ids == [("cruise-a/obj_1", "obj_1"), ("cruise-b/obj_1", "obj_1")]
    export = tmp_path / "export_4321_20240101_1200.zip"  # EcoTaxa's export name says the project
    with zipfile.ZipFile(export, "w") as zf:
        zf.writestr("ecotaxa_export_4321.tsv", "object_id\timg_file_name\nobj_1\ta.jpg\n")
        zf.write(jpg, "a.jpg")
    assert [r.object_id for r in read_all(export)[0]] == ["ecotaxa-4321/obj_1"]
    named = read_all(tmp_path / "cruise-a", ReadOptions(collection="station-7"))[0]
    assert [r.object_id for r in named] == ["station-7/obj_1"]
