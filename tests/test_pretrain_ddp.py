"""DDP for real: two CPU processes with gloo, each sample trained on once per epoch across the ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import plankton
from plankton_cli.prepare.data import list_row_groups
from test_pretrain import TINY, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store")


def test_two_gloo_processes_share_each_epoch_exactly(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    proc = plankton("pretrain", "--store", str(store), *TINY, "--batch-size", "25", "--effective-batch", "100",
                    "--epochs", "2", "--devices", "2", "--accelerator", "cpu", "--record-ids", "--out", str(run),
                    "--json", check=True, timeout=300)
    summary = json.loads(proc.stdout)
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["accumulate"] == 2  # 25 × 2 ranks × 2 = 100
    # 200 images, 100 per rank per epoch: 4 batches of 25, one optimizer step per 2 → 2 steps/epoch.
    assert summary["global_step"] == 4 and summary["world_size"] == 2

    every_id = {row for group in list_row_groups(store / "objects") for row in _ids(store, group)}
    assert len(every_id) == 200
    for epoch in (0, 1):
        per_rank = [(run / "object_ids" / f"epoch-{epoch}-rank-{rank}.txt").read_text().split() for rank in (0, 1)]
        assert [len(ids) for ids in per_rank] == [100, 100]
        assert not set(per_rank[0]) & set(per_rank[1])  # no sample on both ranks
        assert set(per_rank[0]) | set(per_rank[1]) == every_id  # and none left out


def _ids(store: Path, group) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(group.path).read_row_group(group.index, columns=["object_id"])
    return [table.column("object_id")[int(i)].as_py() for i in group.rows]


def test_too_few_row_groups_for_the_ranks_is_one_clear_error_before_any_process_starts(tmp_path: Path) -> None:
    """One ingest of 100 vignettes is one row group: two ranks cannot share it. The launching process says so
    (exit 2) before Lightning starts the second one, which would otherwise die in gloo naming nothing."""
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store
    from conftest import shared_data

    store = tmp_path / "store"
    ingest(Store(store), [shared_data("images", "uvp6-vignettes") / "Acantharea__1111"],
           options=ReadOptions(instrument="UVP6"))
    proc = plankton("pretrain", "--store", str(store), *TINY, "--batch-size", "25", "--epochs", "1",
                    "--devices", "2", "--accelerator", "cpu", "--out", str(tmp_path / "ddp"), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "1 row group(s) cannot feed 2 training processes" in proc.stderr
    assert "gloo" not in proc.stderr and proc.stderr.count("Error:") == 1
