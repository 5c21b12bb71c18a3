"""Fan-out (`--workers N`, `--backend slurm --shards N`): the store a fanned-out run commits is, row for row, the
one a single process commits; a shard that fails commits nothing and is named; a re-run completes.

The SLURM tests run against the real one-node cluster `.ci/slurm-up.sh` starts (skipped without it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import BUNDLED, plankton, slurm_problem
from plankton_cli.jobs.fanout import FanOut, split
from plankton_cli.ingest import ingest
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_cli.store.layout import MANIFEST_FILES

# What differs between two runs whatever they do: their ids and clocks.
RUN_COLUMNS = {"ingest_run", "ingested_at", "run", "rejected_at", "predicted_at", "computed_at"}
SORT_KEYS = ["object_id", "source_key", "source_row", "reason", "model_hash"]


def rows(root: Path) -> dict[str, pa.Table]:
    """Every dataset of the store and its manifest, sorted, less the run's ids and clocks."""
    store = Store(root)
    tables = {name: store.dataset(name).to_table() for name in store.datasets()}
    if parts := [pq.read_table(root / name) for name in MANIFEST_FILES if (root / name).exists()]:
        tables["manifest"] = pa.concat_tables(parts).drop(["data_files"])
    out = {}
    for name, table in tables.items():
        table = table.drop([c for c in table.column_names if c in RUN_COLUMNS])
        out[name] = table.sort_by([(c, "ascending") for c in SORT_KEYS if c in table.column_names])
    return out


def assert_same_store(a: Path, b: Path) -> None:
    one, other = rows(a), rows(b)
    assert sorted(one) == sorted(other)
    for name in one:
        assert one[name].num_rows == other[name].num_rows, name
        assert one[name].equals(other[name]), name


def twice_under_one_collection(tmp_path: Path) -> list[Path]:
    """Two copies of three demo classes, ingested as one collection: the second copy's objects are the first's
    (same ids, same pixels), which shards reading them apart must still skip as one process does."""
    copies = []
    for name in ("a", "b"):
        root = tmp_path / name / "demo"
        for cls in ("Tripos", "Ciliophora", "Noctilucales"):
            shutil.copytree(BUNDLED / "planktonclass-demo" / "demo-images" / cls, root / cls)
        copies.append(root)
    return copies


SOURCES = [BUNDLED / "ifcb" / "pyifcb-testdata", BUNDLED / "planktonclass-demo" / "demo-images"]


def test_split_balances_weights_and_keeps_order() -> None:
    assert split([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]
    assert sorted(sum(split(list(range(10)), 3), [])) == list(range(10))


def test_ingest_in_two_workers_stores_what_one_process_does(tmp_path: Path) -> None:
    one = ingest(Store(tmp_path / "one"), SOURCES)
    two = ingest(Store(tmp_path / "two"), SOURCES, fanout=FanOut(workers=2))
    assert_same_store(tmp_path / "one", tmp_path / "two")
    assert (two.read, two.stored, two.n_rejected) == (one.read, one.stored, one.n_rejected) == (135, 129, 6)
    again = ingest(Store(tmp_path / "two"), SOURCES, fanout=FanOut(workers=2))
    assert again.read == 0 and again.sources["unchanged"] == 111
    assert not (tmp_path / "two" / ".spool" / "shards").exists() or not any((tmp_path / "two" / ".spool" / "shards").iterdir())


def test_duplicates_read_by_different_shards_are_skipped_as_in_one_process(tmp_path: Path) -> None:
    copies = twice_under_one_collection(tmp_path)
    options = ReadOptions(collection="demo")
    one = ingest(Store(tmp_path / "one"), copies, options=options)
    two = ingest(Store(tmp_path / "two"), copies, options=options, fanout=FanOut(workers=2))
    assert one.skipped_duplicate == one.stored > 0
    assert (two.stored, two.skipped_duplicate) == (one.stored, one.skipped_duplicate)
    assert_same_store(tmp_path / "one", tmp_path / "two")


def test_ecotaxa_twins_read_by_different_shards_are_skipped_as_in_one_process(tmp_path: Path) -> None:
    from conftest import shared_data

    exports = shared_data("ecotaxa", "ecotaxa-back-qa", "ref_exports")
    layouts = [exports / name for name in ("tsv_by_acquisition", "bak_all_images", "doi")]
    one = ingest(Store(tmp_path / "one"), layouts, fmt="ecotaxa")
    two = ingest(Store(tmp_path / "two"), layouts, fmt="ecotaxa", fanout=FanOut(workers=2))
    assert one.skipped_twin == 22 and one.relabelled == 1
    assert (two.stored, two.skipped_twin, two.relabelled) == (one.stored, one.skipped_twin, one.relabelled)
    assert_same_store(tmp_path / "one", tmp_path / "two")


def test_pad_and_features_in_two_workers_store_what_one_process_does(tmp_path: Path) -> None:
    from plankton_cli.prepare.features.dataset import compute_features
    from plankton_cli.prepare.pad_store import pad_dataset

    for name in ("one", "two"):
        ingest(Store(tmp_path / name), SOURCES)
    pad_dataset(Store(tmp_path / "one"), workers=1)
    compute_features(Store(tmp_path / "one"))
    two = FanOut(workers=2)
    padded = pad_dataset(Store(tmp_path / "two"), workers=1, fanout=two)
    measured = compute_features(Store(tmp_path / "two"), fanout=two)
    assert padded.padded == 129 and measured.computed + measured.n_rejected == 129
    assert_same_store(tmp_path / "one", tmp_path / "two")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_predict import CLASSES, PADDING, tiny_model

    return tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, PADDING)


def test_predict_in_two_workers_stores_and_writes_what_one_process_does(tmp_path: Path, model_file: Path) -> None:
    from plankton_cli.infer.predict import predict
    from plankton_cli.infer.predict_fanout import predict_fanned

    for name in ("one", "two"):
        ingest(Store(tmp_path / name), SOURCES)
    # fp32 on one thread each: the same arithmetic in both runs (int8 scales activations per batch)
    common = {"to": ["store", "csv"], "cpu_path": "fp32", "threads": 1}
    one = predict(model_file, store=Store(tmp_path / "one"), out_dir=tmp_path / "out-one", **common)
    two = predict_fanned(FanOut(workers=2), model_file, store=Store(tmp_path / "two"), out_dir=tmp_path / "out-two",
                         **common)
    assert one.predicted == two.predicted == 129 and one.by_label == two.by_label
    assert_same_store(tmp_path / "one", tmp_path / "two")
    csv = [sorted((tmp_path / out / "predictions.csv").read_text().splitlines()) for out in ("out-one", "out-two")]
    assert csv[0] == csv[1] and len(csv[0]) == 130
    again = predict_fanned(FanOut(workers=2), model_file, store=Store(tmp_path / "two"), **common)
    assert again.predicted == 0 and again.skipped_already_predicted == 129


def test_a_failed_worker_commits_nothing_and_a_rerun_completes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ingest(Store(store), [SOURCES[1]])  # something committed before, which must stay as it is
    before = (store / "committed.json").read_bytes()
    args = ["ingest", str(SOURCES[0]), "--store", str(store), "--workers", "2"]
    failed = plankton(*args, env={"PLANKTON_FAIL_SHARD": "1"})
    assert failed.returncode == 75, failed.stderr
    assert "1 of 2 shards did not finish (shard 1)" in failed.stderr and "nothing was committed" in failed.stderr
    assert (store / "committed.json").read_bytes() == before
    done = plankton(*args, "--json", check=True)
    assert json.loads(done.stdout)["stored"] == 24
    assert_same_store(store, _one_process(tmp_path / "one", [SOURCES[1]], [SOURCES[0]]))


def _one_process(root: Path, *runs: list[Path]) -> Path:
    for paths in runs:
        ingest(Store(root), paths)
    return root


def test_predict_refuses_the_removed_devices_options(tmp_path: Path, model_file: Path) -> None:
    proc = plankton("predict", "--model", str(model_file), "--store", str(tmp_path), "--devices", "2")
    assert proc.returncode == 2 and "--workers N" in proc.stderr and "--shards N" in proc.stderr


# --- on a real SLURM cluster -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)


@pytest.mark.slurm
def test_ingest_as_a_slurm_job_array_stores_what_one_process_does(cluster, tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = plankton("ingest", *map(str, SOURCES), "--store", str(store), "--backend", "slurm", "--shards", "2",
                    "--time", "5", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "submitted 2 shards to slurm: job array" in proc.stderr
    assert_same_store(store, _one_process(tmp_path / "one", SOURCES))


@pytest.mark.slurm
def test_a_failed_array_task_commits_nothing_names_it_and_a_rerun_completes(cluster, tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = ["ingest", *map(str, SOURCES), "--store", str(store), "--backend", "slurm", "--shards", "2", "--time", "5"]
    failed = plankton(*args, env={"PLANKTON_FAIL_SHARD": "0"}, timeout=300)
    assert failed.returncode == 75, failed.stderr
    assert "1 of 2 shards did not finish (shard 0)" in failed.stderr and "_0_log.err" in failed.stderr
    assert not Store(store).files("objects") and not (store / "manifest.parquet").exists()
    done = plankton(*args, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_store(store, _one_process(tmp_path / "one", SOURCES))


@pytest.mark.slurm
def test_pad_and_features_as_slurm_job_arrays_store_what_one_process_does(cluster, tmp_path: Path) -> None:
    from plankton_cli.prepare.features.dataset import compute_features
    from plankton_cli.prepare.pad_store import pad_dataset

    for name in ("one", "two"):
        ingest(Store(tmp_path / name), SOURCES)
    pad_dataset(Store(tmp_path / "one"), workers=1)
    compute_features(Store(tmp_path / "one"))
    for command in ("pad", "features"):
        proc = plankton(command, "--store", str(tmp_path / "two"), "--backend", "slurm", "--shards", "2",
                        "--time", "5", timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert_same_store(tmp_path / "one", tmp_path / "two")


@pytest.mark.slurm
def test_predict_as_a_slurm_job_array_stores_what_one_process_does(cluster, tmp_path: Path, model_file: Path) -> None:
    from plankton_cli.infer.predict import predict

    for name in ("one", "two"):
        ingest(Store(tmp_path / name), SOURCES)
    predict(model_file, store=Store(tmp_path / "one"), to=["store"], cpu_path="fp32", threads=1)
    proc = plankton("predict", "--model", str(model_file), "--store", str(tmp_path / "two"), "--cpu-path", "fp32",
                    "--threads", "1", "--backend", "slurm", "--shards", "2", "--accelerator", "cpu", "--time", "5",
                    timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_store(tmp_path / "one", tmp_path / "two")
