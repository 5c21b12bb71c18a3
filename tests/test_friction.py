"""The friction a new user met (issue 11): quiet means quiet, workers follow the CPUs, readable summaries, plugins
listed in full without a terminal, rejections grouped by reason and counted once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import BUNDLED, plankton
from plankton_cli.cli import cli
from plankton_cli.cli.options import default_workers
from plankton_cli.cli.output import describe
from plankton_cli.store.info import reason_kind, store_info
from plankton_cli.ingest import ingest
from plankton_cli.store import Store


def test_lightning_banners_and_tips_stay_silent_after_lightning_is_imported():
    code = textwrap.dedent("""
        from plankton_cli.cli.output import setup_logging
        setup_logging(quiet=True)
        import plankton_cli.train.training  # imports pytorch_lightning, which resets its loggers to INFO
        from pytorch_lightning.utilities.rank_zero import rank_zero_info
        from lightning_fabric.utilities.rank_zero import rank_zero_info as fabric_info
        rank_zero_info("GPU available: False, used: False")
        fabric_info("Tip: For seamless cloud uploads, try litmodels")
        print("done")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "done" and "GPU available" not in proc.stderr and "Tip" not in proc.stderr


def test_worker_defaults_follow_the_cpu_count_everywhere():
    for name in ("pretrain", "finetune", "pad"):
        option = next(p for p in cli.get_command(None, name).params if p.name == "workers")
        assert option.default == default_workers(1 if name == "pad" else 0), name
        assert option.default <= max(1, (__import__("os").cpu_count() or 1) - 1)


def test_writer_summaries_read_as_lines_not_dicts():
    lines = describe("ecotaxa", {"writer": "ecotaxa", "files": ["/o/ecotaxa/a.zip", "/o/ecotaxa/b.zip"],
                                 "objects": 24, "unmapped": {"detritus": 3}, "left_out": {}, "taxon_map": None,
                                 "notes": ["no taxon map: labels written unchanged"]})
    assert lines == ["ecotaxa: 2 files in /o/ecotaxa, objects 24, unmapped: detritus 3",
                     "  note: no taxon map: labels written unchanged"]


def test_plugins_show_full_names_and_descriptions_without_a_terminal():
    out = plankton("plugins", check=True).stdout  # stdout is a pipe here
    assert "plankton_plugins.ifcb.class_scores:IFCBClassScoresWriter" in out
    assert "point the Dashboard's class_scores v3 directory there" in out  # the writer's whole description
    assert "…" not in out


def test_rejections_are_grouped_by_reason_and_a_retried_row_counts_once(tmp_path):
    store = Store(tmp_path / "store")
    ifcb = BUNDLED / "ifcb" / "pyifcb-testdata"
    ingest(store, [ifcb / "partial"])
    ingest(store, [ifcb / "partial"], retry_rejected=True)
    rows = store.dataset("rejections").to_table().num_rows
    info = store_info(store)["datasets"]["rejections"]
    assert rows == 2 * info["rejected"] and info["by_reason"] == {"missing .roi file": info["rejected"]}
    assert reason_kind("row 12 has 5 fields, the header has 7") == "row N has N fields, the header has N"
    assert reason_kind("cannot read /data/a.adc: 'x'") == reason_kind("cannot read /data/c.adc: 'y'")


def test_a_model_predicting_an_instrument_it_never_saw_warns(tmp_path, demo_images):
    from plankton_cli.core.records import ReadOptions
    from test_predict import PADDING, tiny_model

    model = tiny_model(tmp_path / "model" / "fold-0", ["a", "b"], PADDING)  # trained on FlowCam and IFCB
    store = Store(tmp_path / "store")
    ingest(store, [demo_images / "Tripos"], options=ReadOptions(instrument="UVP6"))
    proc = plankton("predict", "--store", str(store.root), "--model", str(model), "--to", "store", check=True)
    assert "fine-tuned on FlowCam, IFCB images, not UVP6" in proc.stderr
    assert "predicted" in proc.stdout and "{" not in proc.stdout  # readable, not a dict


def test_runs_from_different_stores_or_class_sets_are_named_before_they_share_a_curve():
    from plankton_cli.core.mismatch import run_warnings

    same = {"store": "/s", "classes": ["a", "b"], "instruments": None}
    assert run_warnings([{"run": "r1", **same}, {"run": "r2", **same}]) == []
    warnings = run_warnings([{"run": "r1", **same}, {"run": "r2", **same, "store": "/t", "classes": ["a", "c"]}])
    assert len(warnings) == 2 and "different stores (r1; r2)" in warnings[0] and "class sets" in warnings[1]
