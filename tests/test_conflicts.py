"""Object identity on the store side: the same id with other pixels from another source is never silently skipped."""

import json
import shutil

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from conftest import BUNDLED, plankton, shared_data
from plankton_cli.ingest import ingest
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_cli.store.images import decode

DEMO = BUNDLED / "planktonclass-demo" / "demo-images"


def _folder(parent, flip: bool):
    """`<parent>/plankton/<class>/<file>`: the same class and file names in every copy; `flip` changes the pixels
    of one image (mirrored), as a re-export or another station's files would."""
    root = parent / "plankton"
    for cls in ("Ciliophora", "Tripos"):
        (root / cls).mkdir(parents=True)
        for f in sorted((DEMO / cls).iterdir())[:3]:
            shutil.copy(f, root / cls / f.name)
    if flip:
        first = sorted((root / "Tripos").iterdir())[0]
        Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first, quality=95)
    return root, first if flip else None


def _rejections(store):
    return store.dataset("rejections").to_table().to_pylist() if store.files("rejections") else []


def test_two_folders_with_the_same_names_but_other_pixels_conflict(tmp_path):
    a, _ = _folder(tmp_path / "station-a", flip=False)
    b, changed = _folder(tmp_path / "station-b", flip=True)
    store = Store(tmp_path / "s")
    ingest(store, [a])
    summary = ingest(store, [b])
    assert summary.read == 6 and summary.stored == 0
    assert summary.skipped_duplicate == 5  # identical images: the same objects
    assert summary.rejected == {"conflict": 1}
    (rej,) = _rejections(store)
    assert rej["source_file"] == str(changed)  # this source's file ...
    assert str(a / "Tripos" / changed.name) in rej["reason"]  # ... and the stored one, both named
    assert store.dataset("objects").count_rows() == 6


def test_on_conflict_replace_stores_the_new_pixels_once(tmp_path):
    a, _ = _folder(tmp_path / "station-a", flip=False)
    b, changed = _folder(tmp_path / "station-b", flip=True)
    store = tmp_path / "s"
    plankton("ingest", str(a), "--store", str(store), check=True)
    strict = plankton("ingest", str(b), "--store", str(store), "--strict", "--json")
    assert strict.returncode == 65, strict.stderr
    assert "conflict" in strict.stderr and json.loads(strict.stdout)["rejected"] == 1
    replace = plankton("ingest", str(b), "--store", str(store), "--on-conflict", "replace", "--retry-rejected",
                       "--strict", "--json")
    assert replace.returncode == 0, replace.stderr
    table = Store(store).dataset("objects").to_table()
    assert table.num_rows == 6 and len(set(table["object_id"].to_pylist())) == 6
    row = table.filter(pc.equal(table["source_file"], str(changed))).to_pylist()
    assert len(row) == 1
    assert np.array_equal(decode(row[0]["image"]["bytes"]), np.asarray(Image.open(changed)))


def test_same_ecotaxa_object_id_in_two_tsvs_conflicts(tmp_path):
    sample = shared_data("ecotaxa", "ecotaxa-back-qa", "import_test", "m106_mn01_n1_sml")
    first, second = tmp_path / "a" / sample.name, tmp_path / "b" / sample.name
    shutil.copytree(sample, first)
    shutil.copytree(sample, second)
    image = second / "m106_mn01_n1_sml_409.jpg"
    Image.open(image).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(image, quality=95)
    store = Store(tmp_path / "s")
    stored = ingest(store, [first], fmt="ecotaxa").stored
    again = ingest(store, [second], fmt="ecotaxa")
    assert again.stored == 0 and again.skipped_duplicate == stored - 1 and again.rejected == {"conflict": 1}
    (rej,) = [r for r in _rejections(store) if r["reason"].startswith("conflict")]
    assert rej["object_id"].endswith("m106_mn01_n1_sml_409") and str(first) in rej["reason"]
    assert store.dataset("objects").count_rows() == stored


def test_the_same_object_again_is_a_duplicate_not_a_conflict(tmp_path):
    a, _ = _folder(tmp_path / "station-a", flip=False)
    b, _ = _folder(tmp_path / "station-b", flip=False)
    store = Store(tmp_path / "s")
    ingest(store, [a], options=ReadOptions(instrument="FlowCam"))
    summary = ingest(store, [b], options=ReadOptions(instrument="FlowCam"))
    assert summary.skipped_duplicate == 6 and not summary.rejected and not _rejections(store)


def test_an_ifcb_bin_and_its_stretched_png_export_conflict(tmp_path, ifcb_bins):
    """Real PNG exports are often min-max stretched: the same `<bin>_<roi>` ids with other pixels."""
    from plankton_plugins.ifcb.reader import IFCBBinReader

    v2 = ifcb_bins / "white" / "D2013" / "D201305" / "D20130526" / "D20130526T095207_IFCB013"
    raw = tmp_path / "raw"
    raw.mkdir()
    for suffix in (".adc", ".hdr", ".roi"):
        shutil.copy(v2.with_suffix(suffix), raw / (v2.name + suffix))
    (source,) = IFCBBinReader().discover(raw / v2.name, ReadOptions())
    records = [r for r in IFCBBinReader().read(source, ReadOptions()) if hasattr(r, "image")][:10]
    export = tmp_path / "png" / v2.name
    export.mkdir(parents=True)
    for rec in records:
        pixels = rec.image.astype(np.float32)
        stretched = (pixels - pixels.min()) * 255 / max(float(np.ptp(pixels)), 1.0)
        Image.fromarray(stretched.round().astype(np.uint8)).save(export / f"{v2.name}_{rec.source_row:05d}.png")
    store = Store(tmp_path / "s")
    ingest(store, [raw])
    summary = ingest(store, [tmp_path / "png"], fmt="ifcb-png")
    changed = sum(not np.array_equal(r.image, np.asarray(Image.open(export / f"{v2.name}_{r.source_row:05d}.png")))
                  for r in records)
    assert changed >= 5  # the stretch changed most images
    assert summary.stored == 0 and summary.rejected == {"conflict": changed}
    assert summary.skipped_duplicate == len(records) - changed
    conflicts = [r for r in _rejections(store) if r["reason"].startswith("conflict")]
    assert all(str(raw / v2.name) in r["reason"] for r in conflicts)  # the raw bin is named as the stored source
