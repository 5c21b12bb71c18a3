"""Guardrails against silent mistakes (issue 21): one missing-store message, all missing options at once, and
warnings for what a user did not mean to do."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from plankton_cli.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("command", [
    ["check"], ["pad"], ["features"], ["stats"], ["summarize", "--model", "{file}", "--out", "{tmp}/s"],
    ["report", "--model", "{file}", "--out", "{tmp}/r"], ["predict", "--model", "{file}"],
    ["evaluate", "--predictions", "{file}"], ["pretrain", "--out", "{tmp}/r"],
    ["finetune", "--init", "{file}", "--labels", "5%", "--out", "{tmp}/r"],
    ["distill", "--teacher", "{file}", "--out", "{tmp}/r"],
])
def test_every_command_that_needs_a_store_says_the_same_about_a_missing_one(tmp_path, command):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    args = [a.format(file=file, tmp=tmp_path) for a in command]
    result = run(*args, "--store", str(tmp_path / "nope"))
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: no store at {tmp_path / 'nope'}: ") and "--store" in line
    assert "$PLANKTON_STORE" in line


def test_finetune_reports_all_its_missing_options_at_once():
    result = run("finetune", "--labels", "5%")
    assert result.exit_code == 2
    assert "Missing options '--init', '--out'." in result.output


def test_sigterm_during_an_ingest_commit_ends_with_one_line_143_and_rolls_back(tmp_path, demo_images, monkeypatch):
    import os
    import signal

    from plankton_cli.store import Store
    from plankton_cli.store.check import check
    from plankton_cli.store.transaction import Transaction

    real_commit = Transaction.commit

    def killed_commit(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, before the commit point
        real_commit(self)

    monkeypatch.setattr(Transaction, "commit", killed_commit)
    store = tmp_path / "store"
    result = run("ingest", str(demo_images / "Tripos"), "--format", "folders", "--store", str(store))
    assert result.exit_code == 143
    [line] = result.output.splitlines()
    assert line.startswith("Error: interrupted by SIGTERM:") and "run the same command again" in line
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(Transaction, "commit", real_commit)
    assert not check(Store(store)).problems and not Store(store).files("objects")  # rolled back, intact
    assert run("ingest", str(demo_images / "Tripos"), "--format", "folders", "--store", str(store)).exit_code == 0
    assert Store(store).files("objects")


def test_ctrl_c_in_pretrain_is_an_interruption_not_a_bug(tmp_path, monkeypatch):
    """The issue's case: Ctrl-C reaches the DataLoader workers too, and the main process sees their death as a
    RuntimeError; that must read as the interruption it is, exit 130."""
    import os
    import signal

    import plankton_cli.train.pretrain
    from plankton_cli.store import Store

    def pretrain(config, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Interrupt") from None

    monkeypatch.setattr(plankton_cli.train.pretrain, "pretrain", pretrain)
    with Store(tmp_path / "store").locked():
        pass
    result = run("pretrain", "--out", str(tmp_path / "run"), "--store", str(tmp_path / "store"))
    assert result.exit_code == 130
    [line] = result.output.splitlines()
    assert line.startswith("Error: interrupted by SIGINT:") and "bug" not in line and "--resume" in line


@pytest.fixture(scope="module")
def flowcam_model(tmp_path_factory):
    """Fine-tuned on FlowCam labels, from a store where IFCB was padded too (so its pad_settings name both)."""
    from test_predict import CLASSES, PADDING, tiny_model

    return tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, {**PADDING, "instruments": ["FlowCam"]})


def test_a_flowcam_model_on_ifcb_rois_warns_with_the_number_predicted(tmp_path, flowcam_model, demo_images):
    from conftest import BUNDLED

    result = run("predict", str(BUNDLED / "ifcb" / "pyifcb-testdata" / "white"), "--model", str(flowcam_model),
                 "--to", "csv", "--out", str(tmp_path / "out"), "--store", str(tmp_path / "none"))
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if "fine-tuned on FlowCam" in line]
    ifcb = sum(1 for line in (tmp_path / "out" / "predictions.csv").read_text().splitlines()[1:])
    assert f"its {ifcb:,} IFCB objects" in warning

    result = run("predict", str(demo_images), "--instrument", "FlowCam", "--model", str(flowcam_model),
                 "--to", "csv", "--out", str(tmp_path / "out2"), "--store", str(tmp_path / "none"))
    assert result.exit_code == 0 and "fine-tuned on" not in result.output  # its own instrument: no warning

    result = run("predict", str(demo_images), "--instrument", "UVP6", "--model", str(flowcam_model),
                 "--to", "csv", "--out", str(tmp_path / "out3"), "--store", str(tmp_path / "none"))
    assert "its 105 UVP6 objects" in result.output  # not "its 1"


def test_a_class_folder_typo_beside_the_same_ecotaxa_id_is_warned_once_and_fails_with_strict(tmp_path, demo_images):
    import shutil

    images = sorted((demo_images / "Tripos").iterdir())
    for folder, files in (("Copepoda__6666", images[:2]), ("Copepda__6666", images[2:3])):
        (tmp_path / "src" / folder).mkdir(parents=True)
        for image in files:
            shutil.copy(image, tmp_path / "src" / folder)
    ingest = ["ingest", str(tmp_path / "src"), "--format", "folders"]
    result = run(*ingest, "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if "spelled twice" in line]
    assert "'Copepda__6666' and 'Copepoda__6666'" in warning and "EcoTaxa id 6666" in warning
    assert "spelled twice" not in run(*ingest, "--store", str(tmp_path / "store")).output  # not caused by this run

    strict = run(*ingest, "--strict", "--store", str(tmp_path / "strict"))
    assert strict.exit_code == 65 and strict.output.splitlines()[-1].startswith("Error: --strict: labels ")


def test_labelled_objects_of_status_predicted_are_counted_when_finetune_skips_them(tmp_path):
    from conftest import shared_data
    from plankton_cli.train.finetune.pool import LabelledPool, labelled_pool
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store

    store = Store(tmp_path / "store")
    ingest(store, [shared_data("ecotaxa", "ecotaxa-back-qa", "import_test", "m106_mn01_n1_sml")], fmt="ecotaxa")
    with pytest.raises(ValueError, match=r"8 labelled objects skipped: status predicted \(.*--label-status"):
        labelled_pool(store.root / "objects")  # all 8 are EcoTaxa predictions: nothing left, and it says why
    assert len(labelled_pool(store.root / "objects", label_status=None).object_ids) == 8
    assert LabelledPool([], [], [], {"predicted": 30, "dubious": 6}).skipped_line().startswith(
        "36 labelled objects skipped: 6 status dubious, 30 status predicted")


def test_predict_says_how_many_are_unclassified_by_threshold_and_which_option_sets_it(tmp_path, demo_images):
    import json

    from test_predict import CLASSES, PADDING, tiny_model

    model = tiny_model(tmp_path / "model" / "fold-0", CLASSES, PADDING)
    info = json.loads(model.with_suffix(".json").read_text())
    info.update(thresholds={c: 0.999 for c in CLASSES}, threshold_target_precision=0.9)  # no score reaches them
    model.with_suffix(".json").write_text(json.dumps(info))
    result = run("predict", str(demo_images), "--model", str(model), "--to", "csv", "--out", str(tmp_path / "out"),
                 "--store", str(tmp_path / "none"))
    assert result.exit_code == 0, result.output
    assert ("105 of 105 unclassified by the model's per-class thresholds (set for precision 0.9 in model.json"
            in result.output) and "--target-precision" in result.output


def test_finetune_before_pad_warns_with_what_to_run(tmp_path, demo_images, monkeypatch):
    import plankton_cli.train.training
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store

    def stop(store, dataset):  # the warning comes before the dataset is resolved: no need to train
        raise ValueError("stopped after the warning")

    monkeypatch.setattr(plankton_cli.train.training, "resolve_dataset", stop)
    store = tmp_path / "store"
    ingest(Store(store), [demo_images / "Tripos"], fmt="folders")
    args = ["finetune", "--init", "scratch", "--model", "vit_tiny_patch16_224", "--labels", "all",
            "--out", str(tmp_path / "run"), "--store", str(store)]
    result = run(*args)
    assert result.exit_code == 2 and "stopped after the warning" in result.output, result.output
    [warning] = [line for line in result.output.splitlines() if "no padded dataset" in line]
    assert f"run `plankton pad --store {store}` first" in warning
    assert "no padded dataset" not in run(*args, "--dataset", "objects").output  # asked for: no warning


def test_one_ecotaxa_export_in_three_layouts_is_one_object_each_unless_ecotaxa_relabelled_it(tmp_path):
    import json

    from conftest import shared_data

    exports = shared_data("ecotaxa", "ecotaxa-back-qa", "ref_exports")
    store = ["--store", str(tmp_path / "store")]
    summaries = []
    for layout in ("tsv_by_acquisition", "bak_all_images"):
        result = run("ingest", str(exports / layout), "--format", "ecotaxa", "--strict", "--json", *store)
        assert result.exit_code == 0 and "WARNING" not in result.output  # no copy made, nothing to warn about
        summaries.append(json.loads(result.output[result.output.index("{"):]))
        assert summaries[-1]["duplicates_across_collections"] == []
    # The DOI export disagrees on one object's category (m106_mn01_n3_sml_1111: 'egg<other' there, Biota>other>egg;
    # 'small<egg' in the other two): a label EcoTaxa changed is news, not a copy, so it is stored and warned about.
    result = run("ingest", str(exports / "doi"), "--format", "ecotaxa", "--json", *store)
    assert result.exit_code == 0
    [warning] = [line for line in result.output.splitlines() if "WARNING" in line]
    assert "1 EcoTaxa objects are stored again" in warning and "'egg<other'" in warning and "'small<egg'" in warning
    summaries.append(json.loads(result.output[result.output.index("{"):]))
    for s in summaries:
        assert s["read"] == s["stored"] + s["skipped_duplicate"] + s["rejected"]
    assert [(s["read"], s["stored"], s["skipped_twin"]) for s in summaries] == [(13, 13, 0), (12, 0, 12), (12, 2, 10)]
    # of the two the DOI layout stores, one is relabelled and one another image rank (#1 there, #2 in the others)
    assert summaries[2]["stored_relabelled"] == 1
    assert ["bak_all_images/m106_mn01_n1_sml_409", "tsv_by_acquisition/m106_mn01_n1_sml_409"] \
        in summaries[1]["twin_examples"]

    check = run("check", "--json", *store)
    assert check.exit_code == 0
    report = json.loads(check.output[check.output.index("{"):])
    assert report["problems"] == []
    [pair] = report["duplicates_across_collections"]  # the relabelled object, and only it
    assert sorted(i.split("/", 1)[1] for i in pair) == ["m106_mn01_n3_sml_1111"] * 2

    again = run("ingest", str(exports / "doi"), str(exports / "bak_all_images"), "--format", "ecotaxa", "--json",
                *store).output
    again = json.loads(again[again.index("{"):])
    assert again["stored"] == 0 and again["read"] == 0 and again["sources"] == {"unchanged": 4}


def test_an_ecotaxa_object_skipped_as_a_copy_is_stored_again_when_the_copy_it_matched_goes(tmp_path):
    import json
    import shutil

    import pyarrow.parquet as pq
    from conftest import shared_data

    layout = shared_data("ecotaxa", "ecotaxa-back-qa", "ref_exports", "tsv_by_acquisition")
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(layout, a)
    shutil.copytree(layout, b)
    store = ["--store", str(tmp_path / "store")]

    def ingest(*paths):
        result = run("ingest", *map(str, paths), "--format", "ecotaxa", "--json", *store)
        assert result.exit_code == 0, result.output
        return json.loads(result.output[result.output.index("{"):]), result.output

    def ids():
        return sorted(pq.read_table(tmp_path / "store" / "objects", columns=["object_id"])["object_id"].to_pylist())

    assert ingest(a)[0]["stored"] == 13
    assert ingest(b)[0]["skipped_twin"] == 13
    tsv = a / "ecotaxa_generic_m106_mn01_n1_sml.tsv"
    tsv.write_text("".join(line for line in tsv.read_text().splitlines(keepends=True) if "sml_409" not in line))
    summary, output = ingest(a)  # a's _409 goes; b skipped it: b is to be read again, and said so
    assert summary["to_read_again"] == [str(b / "ecotaxa_generic_m106_mn01_n1_sml.tsv"),
                                        str(b / "ecotaxa_generic_m106_mn01_n2_sml.tsv"),
                                        str(b / "ecotaxa_generic_m106_mn01_n3_sml.tsv")]
    assert "ingest them again" in output
    assert not any(i.endswith("_409") for i in ids())
    summary, _ = ingest(b)
    assert summary["stored"] == 1 and summary["skipped_twin"] == 12 and summary["to_read_again"] == []
    assert [i for i in ids() if i.endswith("_409")] == ["b/m106_mn01_n1_sml_409"] and len(ids()) == 13

    # in one run: b (passed unchanged) is read again after a changed, so nothing is missing at its end
    tsv.write_text(tsv.read_text().replace("sml_821", "sml_821x"))  # a's _821 goes (its image is gone too)
    summary, _ = ingest(b, a)
    assert summary["sources"]["read again"] == 3 and summary["to_read_again"] == []
    assert "b/m106_mn01_n1_sml_821" in ids() and not any("821" in i and i.startswith("a/") for i in ids())
    assert summary["read"] == summary["stored"] + summary["skipped_duplicate"] + summary["rejected"]
    assert ingest(b, a)[0]["read"] == 0  # idempotent

    # a new layout c, read (its objects skipped as a's) before a changes in the same run: read again at its end
    c = tmp_path / "c"
    shutil.copytree(layout, c)
    tsv.write_text("".join(line for line in tsv.read_text().splitlines(keepends=True) if "sml_822" not in line))
    summary, _ = ingest(c, a)
    assert summary["sources"]["read again"] == 3
    assert summary["to_read_again"] == sorted(str(b / t.name) for t in b.glob("*.tsv"))  # b is not in this run
    assert [i for i in ids() if i.endswith("_822")] == ["c/m106_mn01_n1_sml_822"] and len(ids()) == 13
    check = run("check", "--json", *store).output
    report = json.loads(check[check.index("{"):])
    assert report["problems"] == [] and report["duplicates_across_collections"] == []


def test_a_later_export_whose_expert_changed_a_label_is_stored_not_skipped_as_a_copy(tmp_path):
    import json
    import shutil

    import pyarrow.parquet as pq
    from conftest import shared_data

    layout = shared_data("ecotaxa", "ecotaxa-back-qa", "ref_exports", "tsv_by_acquisition")
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(layout, a)
    shutil.copytree(layout, b)
    tsv = b / "ecotaxa_generic_m106_mn01_n1_sml.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text("".join(line.replace('"Oncaeidae"\t', '"Copepoda"\t') if "sml_821" in line else line
                           for line in lines))
    store = ["--store", str(tmp_path / "store")]
    run("ingest", str(a), "--format", "ecotaxa", *store)
    result = run("ingest", str(b), "--format", "ecotaxa", "--json", *store)
    summary = json.loads(result.output[result.output.index("{"):])
    assert (summary["stored"], summary["skipped_twin"]) == (1, 12)  # the relabelled object is news, not a copy
    table = pq.read_table(tmp_path / "store" / "objects", columns=["object_id", "label"]).to_pylist()
    assert {"object_id": "b/m106_mn01_n1_sml_821", "label": "Copepoda"} in table


def test_copies_ingest_still_makes_are_warned_and_reported_by_check(tmp_path, demo_images):
    """Image folders under two collection names are still stored twice (only EcoTaxa objects are matched at
    ingest): warned, fatal with --strict, and reported by `check`, as in stores ingested before the match."""
    import json
    import shutil

    for name in ("x", "y"):
        shutil.copytree(demo_images / "Tripos", tmp_path / name / "Tripos")
    store = ["--store", str(tmp_path / "store")]
    assert run("ingest", str(tmp_path / "x"), "--format", "folders", *store).exit_code == 0
    second = run("ingest", str(tmp_path / "y"), "--format", "folders", "--strict", *store)
    assert second.exit_code == 65 and "stored more than once" in second.output
    check = run("check", "--json", *store)
    assert check.exit_code == 0
    twins = json.loads(check.output[check.output.index("{"):])["duplicates_across_collections"]
    assert twins and all(len(group) == 2 and group[0].startswith("x/") for group in twins)


def test_an_ifcb_ingest_does_not_read_the_ecotaxa_lookup(tmp_path, ifcb_bins, monkeypatch):
    from conftest import shared_data

    from plankton_cli import ingest as ingest_module

    store = ["--store", str(tmp_path / "store")]
    layout = shared_data("ecotaxa", "ecotaxa-back-qa", "ref_exports", "doi")
    assert run("ingest", str(layout), "--format", "ecotaxa", *store).exit_code == 0

    def boom(*_):
        raise AssertionError("the EcoTaxa lookup was read for an IFCB ingest")

    monkeypatch.setattr(ingest_module, "_ecotaxa_index", boom)
    monkeypatch.setattr("plankton_cli.store.check.collection_twins", boom)
    result = run("ingest", str(ifcb_bins), *store)
    assert result.exit_code == 0, result.output
    assert " 0 stored" not in result.output and "skipped 0" not in result.output


def test_pretrain_on_a_cpu_for_over_an_hour_warns_with_the_measured_estimate_and_a_smaller_model():
    import torch

    from plankton_cli.train.models import MAE
    from plankton_cli.train.pretrain import cpu_time_warning

    torch.manual_seed(0)
    mae = MAE("vit_small_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, in_chans=1,
              decoder_depth=1, decoder_dim=32, decoder_heads=2)
    state = torch.random.get_rng_state()
    # ViT-L for 800 epochs is this many images on a store of a few thousand; measured on a tiny model, to be fast
    warning = cpu_time_warning(mae, 32, 800 * 5_000_000, "vit_large_patch16_224")
    assert warning is not None and "--model vit_base_patch16_224" in warning and " h (" in warning
    assert torch.equal(torch.random.get_rng_state(), state)  # the measurement leaves the run as it was
    assert all(p.grad is None for p in mae.parameters())
    assert cpu_time_warning(mae, 32, 10, "vit_small_patch16_224") is None  # minutes: nothing to say
