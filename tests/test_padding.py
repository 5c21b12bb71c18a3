"""`plankton pad` end to end on real data: objects → padded through the real store, library and CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import BUNDLED, plankton, shared_data
from plankton_cli.prepare.data.pad_on_read import pad_on_read_plan
from plankton_cli.ingest import ingest
from plankton_cli.prepare.square_pad import CropSpec, pad_to_square
from plankton_cli.prepare.pad_store import pad_dataset, preview, preview_pairs
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_cli.store.images import decode, encode_png
from plankton_cli.store.lock import StoreLock

PAD_COLUMNS = ["orig_height", "orig_width", "crop_top", "crop_bottom", "crop_left", "crop_right",
               "pad_top", "pad_bottom", "pad_left", "pad_right"]


@pytest.fixture(scope="module")
def uvp6_ifcb_store(tmp_path_factory) -> Store:
    """UVP6 vignettes (dark background) and IFCB ROIs (light background) ingested once; copy before writing."""
    uvp6 = shared_data("images", "uvp6-vignettes")
    store = Store(tmp_path_factory.mktemp("base") / "store")
    ingest(store, [uvp6], options=ReadOptions(instrument="UVP6"))
    ingest(store, [BUNDLED / "ifcb" / "pyifcb-testdata"])
    return store


def copy_store(store: Store, dest) -> Store:
    shutil.copytree(store.root, dest)
    return Store(dest)


def rows_by_id(store: Store, dataset: str) -> dict[str, dict]:
    """The dataset's rows by id; a padded dataset's images padded on read as every loader does (pad_on_read.py),
    so the pixel checks below check what training sees."""
    rows = {r["object_id"]: r for r in store.dataset(dataset).to_table().to_pylist()}
    plan = pad_on_read_plan(store.root / dataset)
    if plan is not None:
        sources = rows_by_id(store, plan.source_dir.name)
        for oid, row in rows.items():
            assert row["image"] is None  # only the parameters are stored
            square = plan.image(oid, sources[oid]["image"]["bytes"])
            row["image"] = {"bytes": encode_png(np.asarray(square)), "path": sources[oid]["image"]["path"]}
    return rows


def sorted_table(store: Store, dataset: str = "padded"):
    return store.dataset(dataset).to_table().sort_by("object_id")


def assert_padded_from(padded: dict, original: np.ndarray) -> None:
    """`padded` is `original` cropped as recorded, with only background added around it."""
    pixels = decode(padded["image"]["bytes"])
    assert (padded["orig_height"], padded["orig_width"]) == original.shape[:2]
    crop = original[padded["crop_top"] : original.shape[0] - padded["crop_bottom"],
                    padded["crop_left"] : original.shape[1] - padded["crop_right"]]
    h, w = crop.shape[:2]
    assert pixels.shape[0] == pixels.shape[1] == max(h, w) == padded["height"] == padded["width"]
    assert padded["pad_top"] + h + padded["pad_bottom"] == pixels.shape[0]
    assert padded["pad_left"] + w + padded["pad_right"] == pixels.shape[1]
    inner = pixels[padded["pad_top"] : padded["pad_top"] + h, padded["pad_left"] : padded["pad_left"] + w]
    np.testing.assert_array_equal(inner, crop)
    assert pixels.shape[2:] == original.shape[2:]  # channels kept


def test_pads_uvp6_and_ifcb_keeping_every_original_pixel(uvp6_ifcb_store, tmp_path):
    store = copy_store(uvp6_ifcb_store, tmp_path / "s")
    summary = pad_dataset(store)
    assert summary.read == summary.padded == 1274 and summary.n_rejected == 0 and summary.skipped == 0
    assert summary.scale_bar_checked == 1250  # UVP6: a legend was looked for in every vignette ...
    assert sum(summary.crops.values()) == summary.padded
    assert "scale-bar 31px" in summary.crops  # ... and the summary says how many had one

    objects, padded = rows_by_id(store, "objects"), rows_by_id(store, "padded")
    assert padded.keys() == objects.keys()
    for oid, row in padded.items():
        obj = objects[oid]
        assert_padded_from(row, decode(obj["image"]["bytes"]))
        for column in ("label", "instrument", "source_key", "content_hash", "metadata", "ingested_at"):
            assert row[column] == obj[column]
        assert row["pad_preset"] == ("scale-bar 31px" if row["crop_bottom"] else "none")
        assert row["pad_settings"].startswith("pad-v1 crop=")
    # Background: UVP6 vignettes are dark, IFCB ROIs light; the pad takes each image's own.
    fills = {inst: np.median([r["pad_fill"][0] for r in padded.values() if r["instrument"] == inst])
             for inst in ("UVP6", "IFCB")}
    assert fills["UVP6"] < 30 and fills["IFCB"] > 150
    assert any(r["pad_noise_std"][0] > 0 for r in padded.values() if r["instrument"] == "IFCB")
    assert any(r["pad_top"] + r["pad_bottom"] > 0 for r in padded.values())
    assert any(r["pad_left"] + r["pad_right"] > 0 for r in padded.values())


def test_same_bytes_in_two_stores_and_for_any_worker_count(uvp6_ifcb_store, tmp_path):
    one = copy_store(uvp6_ifcb_store, tmp_path / "one")
    two = copy_store(uvp6_ifcb_store, tmp_path / "two")
    assert pq.ParquetFile(one.files("objects")[-1]).num_row_groups > 1  # several tasks for the workers
    pad_dataset(one, workers=1)
    pad_dataset(two, workers=2)
    assert sorted_table(one).equals(sorted_table(two))
    # Rows are written in `objects` order whatever the worker count, so even the files are byte for byte equal.
    assert [f.read_bytes() for f in one.files("padded")] == [f.read_bytes() for f in two.files("padded")]


def test_rerun_pads_nothing_and_settings_change_repads(uvp6_ifcb_store, tmp_path):
    store = copy_store(uvp6_ifcb_store, tmp_path / "s")
    pad_dataset(store)
    files = {f: f.stat().st_mtime_ns for f in store.files("padded")}
    again = pad_dataset(store)
    assert (again.read, again.padded, again.skipped, again.n_rejected) == (1274, 0, 1274, 0)
    assert {f: f.stat().st_mtime_ns for f in store.files("padded")} == files

    # Other settings for the UVP6 rows only (IFCB gets no crop either way): those are padded again, once.
    other = pad_dataset(store, preset="none")
    assert (other.padded, other.skipped, other.removed) == (1250, 24, 1250)
    table = store.dataset("padded").to_table(columns=["object_id", "pad_settings"])
    assert table.num_rows == 1274 and len(set(table["object_id"].to_pylist())) == 1274


def test_changed_object_is_padded_again_exactly_once(demo_images, tmp_path):
    src = tmp_path / "images"
    shutil.copytree(demo_images, src)
    store = Store(tmp_path / "s")
    ingest(store, [src])
    assert pad_dataset(store).padded == 105
    victim = sorted((src / "Tripos").iterdir())[0]
    img = np.asarray(Image.open(victim).convert("L")).T.copy()  # new content (and shape), same name
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    victim.write_bytes(buf.getvalue())
    ingest(store, [src])

    summary = pad_dataset(store)
    assert (summary.read, summary.padded, summary.skipped, summary.removed) == (105, 1, 104, 1)
    padded = rows_by_id(store, "padded")
    assert len(store.dataset("padded").to_table(columns=["object_id"])) == len(padded) == 105
    row = padded[f"{src.name}/Tripos/{victim.name}"]  # qualified by the folder given (its collection)
    assert_padded_from(row, img)
    expected = pad_to_square(img, row["object_id"]).image
    np.testing.assert_array_equal(decode(row["image"]["bytes"]), expected)
    assert pad_dataset(store).padded == 0


def test_cytosense_preset_crops_the_banner_and_rejections_add_up(demo_images, tmp_path):
    store = Store(tmp_path / "s")
    ingest(store, [demo_images], options=ReadOptions(instrument="CytoSense"))
    summary = pad_dataset(store)
    assert summary.crops == {"top 25px": 105} and summary.padded == 105
    objects = rows_by_id(store, "objects")
    for oid, row in rows_by_id(store, "padded").items():
        assert (row["crop_top"], row["crop_bottom"], row["pad_preset"]) == (25, 0, "top 25px")
        assert_padded_from(row, decode(objects[oid]["image"]["bytes"]))

    # --crop-top adds to the preset: images no taller than 25 + 60 px cannot be padded and are rejected.
    heights = [r["height"] for r in objects.values()]
    too_small = sum(h <= 85 for h in heights)
    assert 0 < too_small < 105
    cropped = pad_dataset(store, target="cropped", crop=CropSpec(top=60))
    assert cropped.read == cropped.padded + cropped.skipped + cropped.n_rejected == 105
    assert cropped.n_rejected == too_small and cropped.rejected == {"cannot pad": too_small}
    # a dataset without a schema file of its own is read with the schema of its files
    assert set(store.dataset("cropped").to_table()["crop_top"].to_pylist()) == {85}
    rejections = store.dataset("rejections").to_table().to_pylist()
    assert len(rejections) == too_small and {r["command"] for r in rejections} == {"pad"}
    assert all(r["source_file"] and r["object_id"] in objects for r in rejections)

    # Nothing twice: a re-run neither pads nor rejects again ...
    again = pad_dataset(store, target="cropped", crop=CropSpec(top=60))
    assert (again.padded, again.n_rejected, again.skipped_rejected) == (0, 0, too_small)
    assert store.dataset("rejections").count_rows() == too_small
    # ... until the settings change.
    assert pad_dataset(store, target="cropped", crop=CropSpec(top=10)).padded == 105


def test_size_resizes_after_padding(demo_images, tmp_path):
    store = Store(tmp_path / "s")
    ingest(store, [demo_images])
    summary = pad_dataset(store, size=48)
    rows = list(rows_by_id(store, "padded").values())
    assert summary.padded == len(rows) == 105
    for row in rows:
        assert decode(row["image"]["bytes"]).shape[:2] == (48, 48) == (row["height"], row["width"])
        # offsets stay in original pixels, so sizes can be recovered
        assert row["pad_top"] + row["orig_height"] + row["pad_bottom"] == \
            row["pad_left"] + row["orig_width"] + row["pad_right"]
    assert "size=48" in rows[0]["pad_settings"]


def test_zooscan_scale_bar_is_detected_and_cropped(tmp_path):
    bundle = shared_data("ecotaxa", "ecotaxa-back-qa", "import_test", "m106_mn01_n1_sml")
    store = Store(tmp_path / "s")
    ingest(store, [bundle])
    summary = pad_dataset(store, preset="scale-bar")
    assert summary.crops == {"scale-bar 31px": 8} and summary.scale_bar_checked == 8
    # Its instrument is "epson" (the scanner), no EcoTaxa instrument name: auto finds the legend in the pixels.
    auto = pad_dataset(store, target="auto")
    assert auto.crops == {"scale-bar 31px": 8, "banner 25px": 0} and auto.crops_by_instrument == {
        "epson": {"scale-bar 31px": 8}}
    objects = rows_by_id(store, "objects")
    for oid, row in rows_by_id(store, "padded").items():
        assert row["crop_bottom"] == 31
        assert_padded_from(row, decode(objects[oid]["image"]["bytes"]))


def test_auto_preset_finds_crops_in_the_pixels_when_the_instrument_is_unknown(tmp_path):
    # The ZooScan vignettes and UVP6 vignettes as plain class folders: no instrument, so auto looks at the pixels.
    folders = tmp_path / "folders"
    zooscan = sorted(shared_data("ecotaxa", "ecotaxa-back-qa", "import_test").glob("*/*.jpg"))
    uvp6 = sorted(shared_data("images", "uvp6-vignettes").glob("*/*.png"))[::50]
    for name, paths in (("zooscan_things", zooscan), ("uvp6_things", uvp6)):
        (folders / name).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, folders / name / path.name)
    n_uvp6 = len(list((folders / "uvp6_things").iterdir()))  # vignettes of two classes may share a file name
    store = Store(tmp_path / "s")
    ingest(store, [folders])
    summary = pad_dataset(store)
    assert summary.crops == {"scale-bar 31px": 8, "banner 25px": 0, "none": n_uvp6}
    assert summary.scale_bar_checked == summary.banner_checked == 8 + n_uvp6
    assert summary.crops_by_instrument == {"unknown": {"scale-bar 31px": 8, "none": n_uvp6}}
    for row in rows_by_id(store, "padded").values():
        zoo = row["label"] == "zooscan_things"
        assert (row["crop_bottom"], row["pad_preset"]) == ((31, "scale-bar 31px") if zoo else (0, "none"))
        assert row["pad_settings"].endswith("+scale-bar+banner size=keep on-read=objects")
    # Predict re-pads with the rule the model records: the detection flags survive the round trip.
    from plankton_cli.prepare.pad_store import padding_rules, parse_padding_rule
    (rule,) = padding_rules(store.root / "padded")
    assert parse_padding_rule(rule)[1] == CropSpec(scale_bar=True, banner=True)


def test_objects_that_left_the_store_leave_padded(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(shared_data("ecotaxa", "ecotaxa-back-qa", "import_test", "m106_mn01_n1_sml"), bundle)
    store = Store(tmp_path / "s")
    ingest(store, [bundle])
    assert pad_dataset(store).padded == 8
    tsv = next(bundle.glob("*.tsv"))
    lines = tsv.read_text().splitlines(keepends=True)
    gone = lines[2].split("\t")[1]  # header, [t]/[f] types row, then data: drop the first object
    tsv.write_text("".join(lines[:2] + lines[3:]))
    ingest(store, [bundle])  # the TSV changed: its rows are superseded, one fewer
    summary = pad_dataset(store)
    assert (summary.read, summary.padded, summary.skipped, summary.removed) == (7, 0, 7, 1)
    assert gone not in rows_by_id(store, "padded") and len(rows_by_id(store, "padded")) == 7


def test_preview_shows_what_is_stored(demo_images, tmp_path):
    store = Store(tmp_path / "s")
    ingest(store, [demo_images], options=ReadOptions(instrument="CytoSense"))
    path = preview(store, 6, tmp_path / "look.png")  # standalone: nothing padded yet
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and not store.files("padded")
    pairs = preview_pairs(store, 6)
    assert len({oid for oid, _, _ in pairs}) == 6 and [p[0] for p in preview_pairs(store, 6)] == [p[0] for p in pairs]
    pad_dataset(store)
    stored = rows_by_id(store, "padded")
    for oid, before, after in pairs:
        np.testing.assert_array_equal(decode(stored[oid]["image"]["bytes"]), after)
        assert before.shape[0] == stored[oid]["orig_height"] and after.shape[0] == stored[oid]["height"]


# --- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_pad_json_preview_and_stats(demo_images, tmp_path):
    store = tmp_path / "s"
    plankton("ingest", str(demo_images), "--store", str(store), "--instrument", "CytoSense", check=True)
    sheet = tmp_path / "pad.png"
    proc = plankton("pad", "--store", str(store), "--json", "--workers", "2", "--preview", "8", str(sheet), check=True)
    data = json.loads(proc.stdout)
    assert data["read"] == data["padded"] + data["skipped"] + data["rejected"] == 105
    assert data["crops"] == {"top 25px": 105} and data["preview"] == str(sheet)
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 4 * 128  # 8 pairs: at least two pairs side by side

    human = plankton("pad", "--store", str(store), check=True).stdout
    assert "105 read = 0 padded + 105 skipped" in human

    stats = json.loads(plankton("stats", "--store", str(store), "--json", "--resize", "32", check=True).stdout)
    assert stats["dataset"] == "padded" and stats["n_images"] == 105 and 0 < stats["std"] and 0 < stats["mean"] < 1
    assert (store / "padded" / "_stats.json").is_file()
    assert "objects: mean" in plankton("stats", "--store", str(store), "--dataset", "objects", "--resize", "32",
                                       check=True).stdout


def test_cli_dry_run_writes_only_the_preview(demo_images, tmp_path):
    store = tmp_path / "s"
    plankton("ingest", str(demo_images), "--store", str(store), check=True)
    sheet = tmp_path / "look.png"
    plankton("pad", "--store", str(store), "--dry-run", "--preview", "4", str(sheet), check=True)
    assert sheet.is_file() and not Store(store).files("padded")
    assert plankton("pad", "--store", str(store), "--dry-run").returncode == 2
    assert plankton("pad", "--store", str(tmp_path / "empty")).returncode == 2


def test_cli_pad_exits_75_while_another_writer_holds_the_store(demo_images, tmp_path):
    store = tmp_path / "s"
    plankton("ingest", str(demo_images), "--store", str(store), check=True)
    with StoreLock(store, timeout=1):
        proc = plankton("pad", "--store", str(store), "--lock-timeout", "0.2")
    assert proc.returncode == 75 and "locked" in proc.stderr


def test_pad_help_does_not_import_torch():
    code = ("import sys; from plankton_cli.cli import main\n"
            "try: main(['pad', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
