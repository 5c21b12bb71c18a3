"""`plankton taxa` on EcoTaxa's own reference exports: a taxon map that needs no manual mapping at import."""

from __future__ import annotations

import csv
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


def real_taxonomy(path):
    """A taxonomy TSV (id, name, display_name, lineage) of the taxa in EcoTaxa's reference exports: ids from the
    backup export, lineages from the TSV export of the same project."""
    ids, lineages = {}, {}
    for tsv in shared_data(*EXPORTS, "bak_all_images").glob("*/ecotaxa_*.tsv"):
        for row in list(csv.DictReader(tsv.open(encoding="utf-8-sig"), delimiter="\t"))[1:]:  # [1:]: the types row
            ids[row["object_annotation_category"]] = row["object_annotation_category_id"]
    for tsv in shared_data(*EXPORTS, "tsv_by_acquisition").glob("*.tsv"):
        for row in csv.DictReader(tsv.open(encoding="utf-8-sig"), delimiter="\t"):
            lineages[row["object_annotation_category"]] = row["object_annotation_hierarchy"]
    lines = ["id\tname\tdisplay_name\tlineage"]
    lines += [f"{ids[n]}\t{lineages[n].split('>')[-1]}\t{n}\t{lineages[n]}" for n in sorted(ids) if n in lineages]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_taxonomy_gives_ids_and_checks_a_folder_s_id_against_its_name(tmp_path):
    taxonomy = real_taxonomy(tmp_path / "taxonomy.tsv")
    labels = ["detritus", "Oncaeidae__78418", "Copepoda__78418", "detritus__8888", "egg<other", "darksphere__7777"]
    result = build_taxon_map([], labels, taxonomy)
    assert result.entries == [("detritus", "detritus", "84963"), ("Oncaeidae__78418", "Oncaeidae", "78418"),
                              ("egg<other", "egg", "85078")]
    assert dict(result.unresolved) == {
        "Copepoda__78418": "category id 78418 is 'Oncaeidae' in the taxonomy, not 'Copepoda'",
        "detritus__8888": "category id 8888 (from the folder name) is not in the taxonomy",
        "darksphere__7777": "category id 7777 (from the folder name) is not in the taxonomy",
    }
    # a TSV export has names and lineages but no ids: the taxonomy adds them
    with_ids = build_taxon_map([shared_data(*EXPORTS, "tsv_by_acquisition")], ["Oncaeidae", "Noctiluca"], taxonomy)
    assert with_ids.entries == [("Oncaeidae", "Oncaeidae", "78418")]
    assert with_ids.unresolved == [("Noctiluca", "not a category of the export; no taxon named 'Noctiluca' in "
                                                  "the taxonomy")]


def test_cli_taxonomy_needs_the_model_s_classes_and_says_what_a_file_lacks(tmp_path):
    proc = plankton("taxa", "--taxonomy", str(real_taxonomy(tmp_path / "t.tsv")), "--out", str(tmp_path / "m.tsv"))
    assert proc.returncode == 2 and "needs --model" in proc.stderr
    (tmp_path / "bad.tsv").write_text("taxon\tcount\nx\t1\n", encoding="utf-8")
    proc = plankton("taxa", "--taxonomy", str(tmp_path / "bad.tsv"), "--from", str(shared_data(*EXPORTS, "doi")),
                    "--out", str(tmp_path / "m.tsv"))
    assert proc.returncode == 2 and "not a taxonomy TSV" in proc.stderr and not (tmp_path / "m.tsv").exists()
