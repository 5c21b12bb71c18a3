"""EcoTaxa's own import validation on the zips the writer makes: ecotaxa_back's `FileImport` / `InBundle` /
`TSVFile` checks, run by `scripts/ecotaxa_validate.py` with only the database look-ups answered from files.

Needs an ecotaxa_back checkout (`ECOTAXA_BACK`) and a Python 3.8 with its libraries (`ECOTAXA_PYTHON`, which
`scripts/ecotaxa-validate.sh --setup` builds and prints); skipped otherwise, as in CI. The static checker
(`checker.py`, tested in test_ecotaxa_writer.py) holds the same rules without them; the last test here holds the
two side by side on broken zips.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, load_test_module, shared_data
from plankton_cli.ingest import ingest
from plankton_cli.infer.predict import predict
from plankton_cli.store import Store
from plankton_plugins.ecotaxa.checker import check_import_zip
from test_predict import tiny_model

writer_tests = load_test_module("plugins/test_ecotaxa_writer.py")
round_trip_tests = load_test_module("plugins/test_ecotaxa_round_trip.py")
REJECTED, rewrite, valid_zip, write = writer_tests.REJECTED, writer_tests.rewrite, writer_tests.valid_zip, writer_tests.write
demo_predictions, ifcb_predictions = writer_tests.demo_predictions, writer_tests.ifcb_predictions

SCRIPT = REPO / "scripts" / "ecotaxa_validate.py"
ECOTAXA_BACK = os.environ.get("ECOTAXA_BACK", "")
ECOTAXA_PYTHON = os.environ.get("ECOTAXA_PYTHON", "")
QA = ("ecotaxa", "ecotaxa-back-qa")

pytestmark = pytest.mark.skipif(
    not (ECOTAXA_BACK and (Path(ECOTAXA_BACK) / "py" / "BO" / "TSVFile.py").is_file()
         and ECOTAXA_PYTHON and Path(ECOTAXA_PYTHON).is_file()),
    reason="EcoTaxa's own validation needs ECOTAXA_BACK (an ecotaxa_back checkout) and ECOTAXA_PYTHON (a Python "
           "3.8 with its libraries: scripts/ecotaxa-validate.sh --setup); the static checker tests cover its rules",
)


def validate(*args: str | Path) -> tuple[int, dict[str, list[str]]]:
    """(exit status, zip path -> its output lines without the path) of one run of the script."""
    proc = subprocess.run([ECOTAXA_PYTHON, str(SCRIPT), ECOTAXA_BACK, *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    lines: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"(/\S+\.zip): (.*)", line)
        if match:
            lines.setdefault(match[1], []).append(match[2])
    return proc.returncode, lines


def verdicts(lines: dict[str, list[str]]) -> dict[str, str]:
    return {name: next(x.split(":")[0] for x in out if x.startswith(("ok:", "FAIL:"))) for name, out in lines.items()}


def test_new_zips_from_the_writer_pass_and_a_category_id_ecotaxa_lacks_fails(tmp_path):
    write(tmp_path / "names", ifcb_predictions() + demo_predictions())  # categories by name (an identity map)
    ids = tmp_path / "ids.tsv"
    ids.write_text("Ciliophora\tCiliophora\t11514\nMesodinium_rubrum\tMesodinium_rubrum\t61977\n"
                   "detritus\tdetritus\t84963\n", encoding="utf-8")
    write(tmp_path / "ids", ifcb_predictions(), taxon_map=str(ids))

    status, lines = validate(tmp_path / "names" / "ecotaxa", tmp_path / "ids" / "ecotaxa", "--taxa", ids)
    assert status == 0, lines
    assert len(lines) == 5 and set(verdicts(lines).values()) == {"ok"}

    fewer = tmp_path / "fewer.tsv"  # the taxonomy knows 11514 and 84963, not 61977
    fewer.write_text("Ciliophora\tCiliophora\t11514\ndetritus\tdetritus\t84963\n", encoding="utf-8")
    status, lines = validate(tmp_path / "ids" / "ecotaxa", "--taxa", fewer)
    assert status == 1
    for out in lines.values():
        assert "error: Some specified classif_id don't exist, correct them prior to reload: 61977" in out


@pytest.mark.parametrize("layout", ["import_test", "ref_exports/bak_all_images"])  # the backup: a 2-image object
def test_round_trip_zips_update_their_project_and_import_into_another(tmp_path, layout):
    export = shared_data(*QA, *layout.split("/"))
    store = Store(tmp_path / "store")
    ingest(store, [export], fmt="ecotaxa")
    model = tiny_model(tmp_path / "model" / "fold-0", ["detritus", "Oncaeidae", "egg<other"], {})
    new = predict(model, store=store, to=["ecotaxa"], out_dir=tmp_path / "new",
                  writer_options={"ecotaxa_mode": "new"}).writers["ecotaxa"]
    auto = predict(model, store=store, to=["ecotaxa"], out_dir=tmp_path / "auto", force=True).writers["ecotaxa"]
    assert new["files"] and auto["files"] and auto["update_objects"] == new["new_objects"]

    # into the project the export came from: the update zips (EcoTaxa's "Cla") pass, names and ids resolved
    status, lines = validate(*auto["files"], "--taxa", export, "--existing", export)
    assert status == 0 and len(lines) == len(auto["files"]), lines
    # new zips there are refused (why the writer sends objects read from EcoTaxa to updates), each row whose
    # (object_id, img_file_name) the project has: the writer names images <object_id>.<ext>, so a row whose
    # export image had another name (import_test: 852-854 share 850.jpg) is not recognised by this check
    status, lines = validate(*new["files"], "--taxa", export, "--existing", export)
    refused = [x for out in lines.values() for x in out if x.endswith("is already in EcoTaxa or being imported.")]
    assert status == 1 and set(verdicts(lines).values()) == {"FAIL"}, lines
    in_project = {(row["object_id"], row["img_file_name"]) for row, _ in round_trip_tests.export_rows(export).values()}
    written = {(row["object_id"], row["img_file_name"]) for row, _ in round_trip_tests.zip_rows(new["files"], "new").values()}
    assert len(refused) == len(written & in_project) > 0
    # into another project they import: every image, every column
    status, lines = validate(*new["files"], "--taxa", export)
    assert status == 0 and set(verdicts(lines).values()) == {"ok"}, lines


ECOTAXA_SAYS = {  # what EcoTaxa answers to the static checker's REJECTED zips; None: EcoTaxa imports it
    "no BOM": None,  # decoded as latin-1: accents garbled, silently
    "types row one short": None,  # the missing type is read as empty: text
    "hierarchy": None,  # ignored
    "duplicate object_id": None,  # the second image of the same object (EcoTaxa renumbers img_rank 0 silently)
    "no types row": "Invalid Type '0.723686' for field 'object_score'.",  # the first object is read as types
    "not tab-separated": "Unknown table prefix 'img'.",  # the whole line is one column name
    "category without status": "When a category (detritus) is provided it has to be with a status.",
    "status without category": "When annotation status 'predicted' is provided there has to be a category.",
    "unknown status": "Invalid Annotation Status 'guessed' for field 'object_annotation_status'.",
    "empty object_id": "line 3: Missing object_id.",
    "missing image": "line 3: Missing Image 'nowhere.png'.",
    "image path escaping": "line 3: Missing Image '../IFCB5_2012_028_081515_00001.png'.",
    "the TSV is not an image": "line 3: Error while reading image 'ecotaxa_IFCB5_2012_028_081515.tsv'",
    "non-numeric [f]": "line 3: Invalid float value 'high' for field 'object_score'.",
    "latitude out of range": "line 3: Invalid Lat. value '91.5' for field 'object_lat'. Correct range is -90/+90°.",
    "bad date": "line 3: Invalid Date value '20121328' for field 'object_date'.",
    "bad time": "line 3: Invalid Time value '256100' for field 'object_time'.",
    "21 custom text fields": "Field object_note18 cannot be mapped. Too many custom fields, or bad type.",
    "odd header": "Invalid Header 'score'. Format must be Table_Field.",
    "no object_id": "Field object_id is mandatory as there are some object columns",
    "no img_file_name": "line 3: Missing Image 'absent img_file_name'.",
    "acq columns without acq_id": "Field acq_id is mandatory as there are some acq columns: ['acq_instrument'].",
}


def test_ecotaxa_refuses_what_the_static_checker_refuses_except_its_silent_misimports(tmp_path):
    assert set(ECOTAXA_SAYS) == set(REJECTED)
    source = valid_zip(tmp_path)
    cases = tmp_path / "cases"
    cases.mkdir()
    names = {}
    for case, (edit, expected) in REJECTED.items():
        broken = rewrite(source, cases / f"case{len(names):02d}.zip", edit)
        assert any(expected in p for p in check_import_zip(broken)), case
        names[str(broken)] = case
    status, lines = validate(source, cases)
    assert status == 1 and verdicts(lines)[str(source)] == "ok"
    for name, case in names.items():
        said = ECOTAXA_SAYS[case]
        if said is None:
            assert verdicts(lines)[name] == "ok", (case, lines[name])
        else:
            assert verdicts(lines)[name] == "FAIL" and any(said in x for x in lines[name] if x.startswith("error:")), \
                (case, lines[name])
