"""Sources that try to reach outside themselves, or to pass for predict's output (issue 19): a symlink out of an
image folder or an EcoTaxa bundle is rejected like a `..` path, a class named `unclassified` is refused; each
with the file and the reason, the run goes on and the counts add up."""

from __future__ import annotations

import shutil

from conftest import shared_data
from plankton_cli.ingest import ingest
from plankton_cli.store import Store


def _rejections(store: Store) -> list[tuple[str, str]]:
    table = store.dataset("rejections").to_table(columns=["source_file", "reason"])
    return sorted(zip(table["source_file"].to_pylist(), table["reason"].to_pylist()))


def _adds_up(summary) -> None:
    assert summary.read == summary.stored + summary.skipped_duplicate + summary.n_rejected


def test_a_symlink_out_of_an_image_folder_and_an_unclassified_class_are_rejected(tmp_path, demo_images):
    src = tmp_path / "images"
    for cls in ("Tripos", "Ciliophora"):
        shutil.copytree(demo_images / cls, src / cls)
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    shutil.copy(next((demo_images / "Noctilucales").iterdir()), secret)
    (src / "Tripos" / "escape.jpg").symlink_to(secret)
    inside = next((src / "Ciliophora").iterdir())
    (src / "Tripos" / "alias.jpg").symlink_to(inside)  # stays within the folder: read as any image
    (src / "unclassified").mkdir()
    shutil.copy(next((demo_images / "Dinoflagellata").iterdir()), src / "unclassified" / "d.jpg")
    n_images = sum(1 for p in src.rglob("*.jpg"))

    store = Store(tmp_path / "s")
    summary = ingest(store, [src])
    _adds_up(summary)
    assert summary.read == n_images and summary.n_rejected == 2, summary.rejected
    rejected = _rejections(store)
    assert [f for f, _ in rejected] == [str(src / "Tripos" / "escape.jpg"), str(src / "unclassified" / "d.jpg")]
    assert "symlink escapes the folder" in rejected[0][1] and str(secret) in rejected[0][1]
    assert rejected[1][1].startswith("reserved label: 'unclassified'")
    ids = store.dataset("objects").to_table(columns=["object_id"])["object_id"].to_pylist()
    assert "images/Tripos/alias.jpg" in ids and not any("escape" in i or "unclassified" in i for i in ids)


def test_a_symlink_out_of_an_ecotaxa_bundle_is_rejected_like_a_dotdot_path(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(shared_data("ecotaxa", "ecotaxa-back-qa", "import_test", "m106_mn01_n1_sml"), bundle)
    first = Store(tmp_path / "first")
    clean = ingest(first, [bundle], fmt="ecotaxa")
    image = bundle / "m106_mn01_n1_sml_409.jpg"
    outside = tmp_path / "elsewhere.jpg"
    image.rename(outside)
    image.symlink_to(outside)

    store = Store(tmp_path / "s")
    summary = ingest(store, [bundle], fmt="ecotaxa")
    _adds_up(summary)
    assert summary.read == clean.read and summary.stored == clean.stored - 1 and summary.n_rejected == 1
    [(file, reason)] = [r for r in _rejections(store) if "symlink" in r[1]]
    assert file == str(bundle / "ecotaxa_m106_mn01_n1_sml.tsv")
    assert "escapes the bundle through a symlink" in reason and "m106_mn01_n1_sml_409.jpg" in reason
