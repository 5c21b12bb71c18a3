"""`plankton taxa` on EcoTaxa's own reference exports: a taxon map that needs no manual mapping at import."""

from __future__ import annotations

import json

from conftest import plankton, shared_data
from plankton_plugins.ecotaxa.taxa import build_taxon_map
from plankton_plugins.ecotaxa.writer import Taxon, load_taxon_map

EXPORTS = ("ecotaxa", "ecotaxa-back-qa", "ref_exports")


def test_backup_export_gives_category_ids_and_tsv_export_gives_name_parent(tmp_path):
    backup = build_taxon_map([shared_data(*EXPORTS, "bak_all_images")])
    assert backup.unresolved == [] and all(category_id for _, _, category_id in backup.entries)
    assert ("detritus", "detritus", "84963") in backup.entries
    by_acquisition = build_taxon_map([shared_data(*EXPORTS, "tsv_by_acquisition")])
    assert ("Oncaeidae", "Oncaeidae<Ergasilida", None) in by_acquisition.entries
    assert ("detritus", "detritus<not-living", None) in by_acquisition.entries


def test_model_classes_folder_labels_resolve_by_the_export_s_ids_only(tmp_path):
    export = shared_data(*EXPORTS, "bak_all_images")
    result = build_taxon_map([export], ["detritus", "Copepoda__25828", "Oncaeidae__78418", "detritus__8888",
                                        "Noctiluca"])
    assert result.entries == [("detritus", "detritus", "84963"),
                              ("Oncaeidae__78418", "Oncaeidae", "78418")]  # found in the export by its id
    reasons = dict(result.unresolved)
    assert list(reasons) == ["Copepoda__25828", "detritus__8888", "Noctiluca"]
    # the folder's id is never taken on trust; where the export knows the name, the reason gives its id
    assert reasons["Copepoda__25828"] == "category id 25828 (from the folder name) is not in the export"
    assert "the export has 'detritus' as id 84963" in reasons["detritus__8888"]
    assert reasons["Noctiluca"] == "not a category of the export"


def test_cli_writes_a_map_the_ecotaxa_writer_reads(tmp_path):
    export = shared_data(*EXPORTS, "tsv_by_acquisition")
    out = tmp_path / "taxa.tsv"
    proc = plankton("taxa", "--from", str(export), "--out", str(out), "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary["mapped"] == summary["categories"] == 7 and summary["unresolved"] == {}
    mapping = load_taxon_map(out)
    assert mapping["Cyclopoida"] == Taxon("Cyclopoida<Podoplea", None)
    assert len(mapping) == 7
