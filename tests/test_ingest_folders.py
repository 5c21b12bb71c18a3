"""A nightly ingest handed the whole IFCB data folder lists and checks only the folders that changed (issue #22):
a settled day folder whose fingerprint (mtime, inode) matches the manifest's is not listed, its bins' files are not
`stat`ed; `--rescan` checks every file."""

import json
import os
import shutil
import time
from pathlib import Path

from conftest import plankton

from plankton_cli.ingest import ingest
from plankton_cli.store import Store

BIN = "D20130526T095207_IFCB013"
HOURS_AGO = time.time() - 2 * 3600  # settled (store/manifest.py SETTLED_S)


def day_folder(data: Path, bundled: Path, day: str, stamp: str) -> Path:
    """A day folder `D<day>` holding the bundled real bin under the name of bin `D<day>T<stamp>_IFCB013`."""
    source = bundled / "white/D2013/D201305/D20130526" / BIN
    folder = data / "D2013" / f"D{day}"
    folder.mkdir(parents=True, exist_ok=True)
    for ext in (".hdr", ".adc", ".roi"):
        shutil.copy(f"{source}{ext}", folder / f"D{day}T{stamp}_IFCB013{ext}")
    return folder


def settle(folder: Path) -> None:
    os.utime(folder, (HOURS_AGO, HOURS_AGO))


def adds_up(summary) -> None:
    assert summary.read == summary.stored + summary.skipped_duplicate + summary.n_rejected


def test_unchanged_day_folders_are_not_listed(tmp_path, ifcb_bins):
    data, store = tmp_path / "ifcb", Store(tmp_path / "store")
    old = day_folder(data, ifcb_bins, "20130526", "095207")
    day_folder(data, ifcb_bins, "20130527", "095207")  # tonight's, still being written
    settle(old)
    first = ingest(store, [data])
    assert first.sources == {"new": 2} and first.stored > 0 and first.folders_unchanged == 0
    adds_up(first)

    again = ingest(store, [data])  # the old folder was settled when listed: not listed now; tonight's is
    assert again.folders_unchanged == 1 and again.sources == {"unchanged": 2} and again.read == 0

    # Not a stat of its files: a bin file removed while the folder's fingerprint is kept goes unseen...
    roi = old / "D20130526T095207_IFCB013.roi"
    saved = roi.read_bytes()
    roi.unlink()
    settle(old)
    assert ingest(store, [data]).sources == {"unchanged": 2}
    roi.write_bytes(saved)
    settle(old)

    # ...while a bin added to the old folder changes its mtime, and is found.
    day_folder(data, ifcb_bins, "20130526", "120000")
    added = ingest(store, [data])
    assert added.sources == {"new": 1, "unchanged": 2} and added.folders_unchanged == 0 and added.stored > 0
    adds_up(added)


def test_rescan_finds_a_bin_rewritten_in_place(tmp_path, ifcb_bins):
    data, store = tmp_path / "ifcb", Store(tmp_path / "store")
    old = day_folder(data, ifcb_bins, "20130526", "095207")
    settle(old)
    stored = ingest(store, [data]).stored
    settle(old)  # the folder is listed once more after its first ingest only if it was not yet settled
    adc = old / "D20130526T095207_IFCB013.adc"
    lines = adc.read_text().splitlines(keepends=True)
    with open(adc, "w") as f:  # rewritten in place, one ROI line fewer: the folder's mtime does not change
        f.writelines(lines[:-1])
    plain = ingest(store, [data])
    assert plain.folders_unchanged == 1 and plain.sources == {"unchanged": 1}

    out = plankton("ingest", str(data), "--rescan", "--json", "--store", str(store.root), check=True)
    summary = json.loads(out.stdout)
    assert summary["sources"] == {"changed": 1} and summary["folders_unchanged"] == 0
    assert summary["read"] == summary["stored"] + summary["skipped_duplicate"] + summary["rejected"]
    assert 0 < summary["stored"] <= stored


def test_a_folder_still_being_written_is_listed_every_run(tmp_path, ifcb_bins):
    data, store = tmp_path / "ifcb", Store(tmp_path / "store")
    day_folder(data, ifcb_bins, "20130526", "095207")  # its mtime is now: a bin may be being acquired in it
    ingest(store, [data])
    again = ingest(store, [data])
    assert again.folders_unchanged == 0 and again.sources == {"unchanged": 1}
