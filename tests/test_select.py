"""`plankton select`: the strategies on hand-made probabilities and embeddings (seeded), then the command on the
real EcoTaxa QA export with a tiny model: the files it writes, and a whole round select → validate → ingest →
finetune."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import shared_data
from plankton_cli.infer import select_strategies as S
from plankton_cli.cli import cli
from plankton_cli.ingest import ingest
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_plugins.ecotaxa.checker import check_import_zip
from plankton_plugins.ecotaxa.tsv import TsvReader
from test_predict import tiny_model

PADDING = {"pad_settings": []}


def invoke(*args) -> dict:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- strategies, on hand-made values -----------------------------------------------------------------------------


def blobs(seed: int = 0, per_blob: int = 60, centres=((0, 0), (10, 0), (0, 10), (10, 10))) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(c, 1.0, size=(per_blob, 2)) for c in centres]).astype(np.float32)


def test_margin_picks_the_smallest_top1_top2_gaps_and_entropy_the_flattest():
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.1, 0.4], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]])
    picks = S.pick("margin", 2, probabilities=p)
    assert picks.rows.tolist() == [3, 1]  # gaps 0.01 and 0.05; 0.1 (row 2) is next
    np.testing.assert_allclose(picks.scores, [0.01, 0.05], atol=1e-6)
    assert picks.reasons[0] == "margin 0.010 between its two likeliest classes"
    assert S.pick("entropy", 1, probabilities=p).rows.tolist() == [3]


def test_coreset_covers_the_embedding_space_better_than_random_by_its_own_objective():
    x = blobs()
    labelled = x[:3]
    picks = S.pick("coreset", 8, embeddings=x, labelled=labelled, seed=0)
    assert len(set(picks.rows.tolist())) == 8
    covered = S.coverage_radius(x, np.vstack([labelled, x[picks.rows]]))
    randoms = [S.coverage_radius(x, np.vstack([labelled, x[S.pick("random", 8, embeddings=x, seed=s).rows]]))
               for s in range(20)]
    # greedy k-centre is within twice the best radius, so a lucky sample may beat it, but not a typical one
    assert covered < np.median(randoms) and np.mean(np.array(randoms) > covered) >= 0.8
    assert np.all(np.diff(picks.scores) <= 1e-6)  # each pick is no farther than the one before (greedy)
    again = S.pick("coreset", 8, embeddings=x, labelled=labelled, seed=0)
    assert again.rows.tolist() == picks.rows.tolist()  # deterministic


def test_typiclust_picks_typical_points_of_clusters_without_labels():
    x = blobs(per_blob=60)
    blob = np.repeat(np.arange(4), 60)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    labelled = x[blob == 0][:1]  # blob 0 is labelled already: 1 + 3 picks = 4 clusters, the blobs
    picks = S.pick("typiclust", 3, embeddings=x, labelled=labelled, seed=0)
    assert sorted(blob[picks.rows].tolist()) == [1, 2, 3]  # one of each new cluster
    for row in picks.rows:  # typical: nearer its blob's centre than most of the blob
        own = np.linalg.norm(x[blob == blob[row]] - centres[blob[row]], axis=1)
        assert np.linalg.norm(x[row] - centres[blob[row]]) < np.quantile(own, 0.25)
    assert S.pick("typiclust", 3, embeddings=x, labelled=labelled, seed=0).rows.tolist() == picks.rows.tolist()


def test_cluster_margin_picks_the_most_uncertain_of_each_cluster_where_margin_repeats_itself():
    x = blobs(per_blob=10)
    blob = np.repeat(np.arange(4), 10)
    gap = 0.1 * blob + np.random.default_rng(2).uniform(0.01, 0.05, size=40)  # blob 0 the most uncertain, and so on
    p = np.stack([(1 + gap) / 2, (1 - gap) / 2], axis=1)
    assert blob[S.pick("margin", 4, probabilities=p).rows].tolist() == [0, 0, 0, 0]  # four near-duplicates
    picks = S.choose("cluster-margin", 4, probabilities=p, embeddings=x, seed=0)
    assert blob[picks.rows].tolist() == [0, 1, 2, 3]  # one per blob, in the order of their margins
    for row in picks.rows:  # each the smallest margin of its blob
        assert gap[row] == gap[blob == blob[row]].min()
    np.testing.assert_allclose(picks.scores, gap[picks.rows], atol=1e-6)
    assert picks.reasons[0].startswith("cluster-margin: margin")
    assert S.choose("cluster-margin", 4, probabilities=p, embeddings=x, seed=0).rows.tolist() == picks.rows.tolist()


def test_per_class_min_keeps_rare_predicted_classes_and_mix_picks_among_the_uncertain():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4) * 0.3, size=300)
    p[:, 3] *= 0.01  # class 3 is rarely the top one
    p /= p.sum(1, keepdims=True)
    predicted = p.argmax(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    plain = S.choose("margin", 10, probabilities=p)
    picks = S.choose("margin", 10, predicted=predicted, per_class_min=2, probabilities=p)
    counts = Counter(predicted[picks.rows].tolist())
    assert len(picks) == 10 and len(set(picks.rows.tolist())) == 10
    for label, n in Counter(predicted.tolist()).items():
        assert counts[label] >= min(2, n)
    assert "per-class minimum" in picks.reasons[0] and set(plain.rows) != set(picks.rows)
    mixed = S.choose("coreset", 5, probabilities=p, embeddings=x, mix="margin")
    uncertain = set(S.pick("margin", S.MIX_POOL * 5, probabilities=p).rows.tolist())
    assert set(mixed.rows.tolist()) <= uncertain and "most uncertain by margin" in mixed.reasons[0]


def test_wide_embeddings_are_projected_before_diversity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    reduced, labelled = S.project(x, x[:5])
    assert reduced.shape == (200, S.DIVERSITY_DIMS) and labelled is not None and labelled.shape == (5, S.DIVERSITY_DIMS)
    assert len(S.choose("typiclust", 7, embeddings=x, labelled=x[:5])) == 7


# --- the command, on the EcoTaxa QA export ------------------------------------------------------------------------


def export_copy(tmp_path: Path) -> Path:
    """A copy of EcoTaxa's QA import bundle (11 real ZooScan objects, status predicted), to validate in."""
    copy = tmp_path / "export"
    shutil.copytree(shared_data("ecotaxa", "ecotaxa-back-qa", "import_test"), copy)
    return copy


@pytest.fixture
def qa(tmp_path):
    """The store of that export, and a tiny model over its labels (untrained weights)."""
    export = export_copy(tmp_path)
    store = Store(tmp_path / "store")
    ingest(store, [export], options=ReadOptions())
    labels = sorted(set(store.dataset("objects").to_table(columns=["label"])["label"].to_pylist()))
    model = tiny_model(tmp_path / "model" / "fold-0", labels, PADDING)
    return export, store, model


def tsv_rows(zip_path: str) -> dict[str, dict[str, str]]:
    with zipfile.ZipFile(zip_path) as archive:
        (member,) = [n for n in archive.namelist() if n.endswith(".tsv")]
        with TsvReader(lambda: archive.open(member)) as table:
            return {row.values["object_id"]: dict(row.values) for row in table}


def test_select_writes_the_list_and_the_zips_predict_writes_for_those_objects(qa, tmp_path):
    _, store, model = qa
    first = invoke("select", "--store", store.root, "--model", model, "--budget", "4", "--strategy", "coreset",
                   "--to", "ecotaxa", "--to", "folders", "--out", tmp_path / "sel", "--json")
    assert first["candidates"] == 11 and first["selected"] == 4 and first["predicted_now"] == 11
    table = pq.read_table(tmp_path / "sel" / "selection.parquet").to_pylist()
    assert [row["rank"] for row in table] == [1, 2, 3, 4]
    assert all(row["reason"].startswith("coreset") and row["ecotaxa_object_id"] for row in table)
    assert (tmp_path / "sel" / "selection.csv").read_text().startswith("\"rank\",\"object_id\"")
    images = sorted((tmp_path / "sel" / "folders").rglob("*.jpg"))
    assert len(images) == 4 and images[0].name.startswith("1_")

    again = invoke("select", "--store", store.root, "--model", model, "--budget", "4", "--strategy", "coreset",
                   "--to", "ecotaxa", "--out", tmp_path / "sel2", "--json")
    assert again["predicted_now"] == 0  # read from the store this time, same picks
    assert pq.read_table(tmp_path / "sel2" / "selection.parquet")["object_id"].to_pylist() == \
        [row["object_id"] for row in table]

    invoke("predict", "--store", store.root, "--model", model, "--to", "ecotaxa", "--force", "--out",
           tmp_path / "pred", "--json")
    ecotaxa = first["writers"]["ecotaxa"]
    assert ecotaxa["update_objects"] == 4 and ecotaxa["files"]
    predicted = {}
    for z in (tmp_path / "pred" / "ecotaxa-update").glob("*.zip"):
        predicted |= tsv_rows(str(z))
    for z in ecotaxa["files"]:
        assert check_import_zip(z, mode="update") == []
        rows = tsv_rows(z)
        assert all(row["object_annotation_status"] == "predicted" for row in rows.values())
        for oid, row in rows.items():
            assert row == predicted[oid]  # the row predict's writer writes for the same object


def validate(export: Path, chosen: set[str], truth: dict[str, str]) -> None:
    """What an expert does in EcoTaxa, then exports: the chosen objects' rows get status validated and the true
    category (here the export's own); the TSV is written back in place, as a new export of the same project."""
    for tsv in export.rglob("ecotaxa_*.tsv"):
        lines = tsv.read_text(encoding="utf-8").split("\n")
        header = lines[0].split("\t")
        oid, status, category = (header.index(c) for c in ("object_id", "object_annotation_status",
                                                            "object_annotation_category"))
        for i, line in enumerate(lines[2:], start=2):
            cells = line.split("\t")
            if len(cells) == len(header) and cells[oid] in chosen:
                cells[status], cells[category] = "validated", truth[cells[oid]]
                lines[i] = "\t".join(cells)
        tsv.write_text("\n".join(lines), encoding="utf-8")


def test_a_round_select_validate_ingest_finetune(qa, tmp_path):
    export, store, model = qa
    objects = store.dataset("objects").to_table(columns=["object_id", "label", "metadata"]).to_pylist()
    truth = {dict((p["key"], p["value"]) for p in row["metadata"])["ecotaxa_object_id"]: row["label"]
             for row in objects}
    picked = invoke("select", "--store", store.root, "--model", model, "--budget", "6", "--strategy", "margin",
                    "--per-class-min", "0", "--out", tmp_path / "round-1", "--json")
    chosen = set(pq.read_table(tmp_path / "round-1" / "selection.parquet")["ecotaxa_object_id"].to_pylist())
    assert picked["selected"] == 6 and len(chosen) == 6

    validate(export, chosen, truth)
    invoke("ingest", export, "--store", store.root, "--json")
    status = store.dataset("objects").to_table(columns=["label_status"])["label_status"].to_pylist()
    assert Counter(status) == {"validated": 6, "predicted": 5}
    info = invoke("info", "--store", store.root, "--json")
    rounds = info["datasets"]["objects"]["ingest_runs"]
    assert len(rounds) == 1 and rounds[0]["by_status"] == {"validated": 6, "predicted": 5}  # the re-export's run

    after = invoke("select", "--store", store.root, "--model", model, "--budget", "10", "--out", tmp_path / "r2",
                   "--json")
    assert after["candidates"] == 5 and after["selected"] == 5  # validated objects are never offered again

    summary = invoke("finetune", "--store", store.root, "--init", "scratch", "--model", "vit_base_patch16_224",
                     "--img-size", "32", "--patch-size", "8", "--depth", "2", "--embed-dim", "64", "--num-heads",
                     "2", "--labels", "all", "--folds", "1", "--workers", "0", "--features", "auto", "--head",
                     "forest", "--out", tmp_path / "ft", "--json")
    assert summary["complete"]
    split = json.loads((tmp_path / "ft" / "fold-0" / "split.json").read_text())
    used = set(split.get("labelled", [])) | set(split.get("test", []))
    validated = {row["object_id"] for row in store.dataset("objects").to_table(
        columns=["object_id", "label_status"]).to_pylist() if row["label_status"] == "validated"}
    assert used and used <= validated  # finetune learns from the validated labels only (its default)


def test_new_objects_go_to_import_zips_with_their_images_as_predict_writes_them(tmp_path, ifcb_bins):
    """Objects not from EcoTaxa (real IFCB ROIs, unlabelled): import zips with images, rows and images equal to
    those `plankton predict --to ecotaxa` wrote for the same objects from the same stored predictions."""
    store = Store(tmp_path / "store")
    ingest(store, [ifcb_bins])
    model = tiny_model(tmp_path / "model" / "fold-0", ["diatom", "detritus"], {"pad_settings": []})
    taxa = tmp_path / "taxa.tsv"
    taxa.write_text("diatom\tBacillariophyta\ndetritus\tdetritus\n")
    invoke("predict", "--store", store.root, "--model", model, "--to", "store", "--to", "ecotaxa", "--taxon-map",
           taxa, "--out", tmp_path / "pred", "--json")
    picked = invoke("select", "--store", store.root, "--model", model, "--budget", "5", "--strategy", "entropy",
                    "--to", "ecotaxa", "--taxon-map", taxa, "--out", tmp_path / "sel", "--json")
    assert picked["predicted_now"] == 0 and picked["selected"] == 5
    ecotaxa = picked["writers"]["ecotaxa"]
    assert ecotaxa["new_objects"] == 5 and ecotaxa["images"] == 5 and ecotaxa["classified"] == 5
    by_name = {Path(z).name: z for z in (tmp_path / "pred" / "ecotaxa").glob("*.zip")}
    for z in ecotaxa["files"]:
        assert check_import_zip(z, mode="new", taxa={"Bacillariophyta": None, "detritus": None}) == []
        ours, theirs = tsv_rows(z), tsv_rows(str(by_name[Path(z).name]))
        with zipfile.ZipFile(z) as mine, zipfile.ZipFile(by_name[Path(z).name]) as predicted:
            for oid, row in ours.items():
                assert row == theirs[oid] and row["object_annotation_status"] == "predicted"
                assert mine.read(row["img_file_name"]) == predicted.read(row["img_file_name"])
