"""Issue 19: a predict's file outputs are part of its work. With `--to store` and a file writer, the store commit
comes last (see `plankton_cli.infer.predict`): killed at any operation, the next run writes every output once, as a run
that was never killed, and predicts nothing the killed run had spooled for good.

Fault injection as in tests/store/test_faults.py (the same `Faults`), over the store and OUT together, in "kill"
mode: the k-th operation and every later one fail, so no cleanup reaches the disk. A killed process's open files
close, and with them its flocks; here the killed run's objects are collected (`gc.collect()`) to do the same.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest

from conftest import BUNDLED, load_test_module
from plankton_cli.core.errors import CantCreate
from plankton_cli.ingest import ingest
from plankton_cli.infer.predict import predict
from plankton_cli.store import Store
from plankton_cli.store.layout import read_committed
from test_predict import CLASSES, PADDING, tiny_model

faults = load_test_module("store/test_faults.py")
no_flush, one_thread = faults.no_flush, faults.one_thread  # autouse fixtures: no fsync, one torch thread


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, PADDING)


def outputs(out: Path) -> dict[str, bytes]:
    """Every file under OUT, by path (no spool, no temporary file may be left)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def stored(root: Path) -> list[tuple]:
    table = Store(root).dataset("predictions").to_table(columns=["object_id", "model_hash", "label", "score"])
    return sorted(tuple(r.values()) for r in table.to_pylist())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # a killed writer's __del__
@pytest.mark.parametrize("writer", ["ecotaxa", "ifcb-h5"])
def test_killed_at_every_operation_then_a_clean_run_writes_every_output_once(tmp_path, monkeypatch, model, writer):
    template = Store(tmp_path / "template")
    ingest(template, [BUNDLED / "ifcb" / "pyifcb-testdata" / "white"])  # one IFCB bin of 19 ROIs

    def step(case: Path) -> int:
        return predict(model, store=Store(case / "store"), to=["store", writer], out_dir=case / "out",
                       batch_size=8, lock_timeout=5).predicted

    reference = tmp_path / "reference"
    shutil.copytree(template.root, reference / "store")
    assert step(reference) == 19
    expected, expected_rows = outputs(reference / "out"), stored(reference / "store")
    assert len(expected) == 1 and len(expected_rows) == 19

    k = 0
    while True:
        k += 1
        case = tmp_path / f"kill-{k}"
        shutil.copytree(template.root, case / "store")
        with monkeypatch.context() as m:
            fault = faults.Faults(m, case, k, "kill")
            try:
                step(case)
            except faults.Killed:
                pass
        gc.collect()  # the killed run's files close: its flocks go, as a dead process's do
        if fault.fired:
            faults.assert_consistent(case / "store")
            # the predictions survived the kill: in the finished spool, or in a store commit (past its journal)
            kept = [*(case / "store" / ".spool").rglob("*.parquet"), *(case / "store" / ".journal").glob("*.json"),
                    *(f for f in read_committed(case / "store") or {} if f.startswith("predictions/"))]
            again = step(case)  # the next, clean run
            assert again == (0 if kept else 19), f"{writer}: kill at operation {k}, predicted {again} again"
        assert outputs(case / "out") == expected, f"{writer}: kill at operation {k}"
        assert stored(case / "store") == expected_rows, f"{writer}: kill at operation {k}"
        faults.assert_clean(case / "store")
        shutil.rmtree(case)
        if not fault.fired:
            break
    assert k > 10, f"predict made only {k - 1} operations: is the fault injection still installed?"


def test_the_outputs_a_failed_run_asked_for_are_written_by_the_next_run_whatever_it_asks(tmp_path, model):
    """The store spool records the outputs its run owes: a later run with other writers and another OUT still
    writes them (and its own, for the predictions it commits), without predicting again."""
    store = Store(tmp_path / "store")
    ingest(store, [BUNDLED / "ifcb" / "pyifcb-testdata" / "white"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "ecotaxa").write_text("a file where the zips go\n")
    with pytest.raises(CantCreate, match="predictions are kept"):
        predict(model, store=store, to=["store", "ecotaxa"], out_dir=out)
    assert not store.files("predictions")
    (out / "ecotaxa").unlink()

    later = predict(model, store=store, to=["store", "csv"], out_dir=tmp_path / "elsewhere")
    assert later.predicted == 0 and later.writers["store"]["from_earlier_runs"] == 19
    assert later.writers[f"ecotaxa ({out})"]["objects"] == 19  # owed to the failed run
    assert [p.name for p in (out / "ecotaxa").iterdir()] == ["D20130526T095207_IFCB013.zip"]
    assert later.writers["csv"]["rows"] == 19  # this run's own writer gets what it commits
    assert store.dataset("predictions").count_rows() == 19
