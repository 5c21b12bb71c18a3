"""Run EcoTaxa's own import validation on import zips, with no EcoTaxa server or database.

Usage (Python 3.8 with ecotaxa_back's pinned libraries; `scripts/ecotaxa-validate.sh` builds that venv):

    python scripts/ecotaxa_validate.py ECOTAXA_BACK ZIP_OR_FOLDER... [--taxa FILE]... [--existing EXPORT]...
                                       [--update-mode auto|new|Yes|Cla] [--skip-existing-objects]

For each zip, this does what EcoTaxa's import job does before it writes anything (`FileImport.do_validate` in
ecotaxa_back `py/API_operations/imports/Import.py`): unzip, `FileImport._collect_existing_and_validate` (the
`BO.Bundle.InBundle.validate_import` / `BO.TSVFile.TSVFile.do_validate` checks), then `resolve_references` and
`validate_references` (category names and annotators EcoTaxa cannot match make it stop and ask). That is
ecotaxa_back's code, run unchanged; only what it reads from the project and taxonomy tables is answered here:

  - `session.execute` (a stand-in session, `_Tables`) answers the three SQL look-ups of that path:
    `Image.fetch_existing_images` (object_id*image pairs already in the project: from `--existing`, else none),
    `TaxonomyBO.find_ids` (which category ids exist: those in `--taxa`, else every id) and
    `TaxonomyBO.resolve_taxa` (category names -> ids: from `--taxa`; without it names are not checked). Any other
    SQL raises, so a new look-up in ecotaxa_back cannot pass unnoticed.
  - `ProjectTopology.read_from_db` (ORM query: which sample holds which acquisition in the project) reads the
    `--existing` rows instead; `UserBO.find_items` (ORM query on users) knows no user.
  - `update_progress` (writes the job row) does nothing; the project is a new one (no custom column mappings,
    no loaded files) with id 1.

`--update-mode auto` (the default) validates zips in a folder named `ecotaxa-update` (the writer's update zips) as
EcoTaxa's "Update data including classification" (`Cla`) with "skip objects already there", as ecotaxa_back's own
tests import updates, and every other zip as new objects. `--taxa` takes a taxon map (`label<TAB>name[<TAB>id]`,
as `plankton taxa` writes) or EcoTaxa export TSVs / zips / folders (their category columns); `--existing` takes
EcoTaxa exports (the objects, images, samples and acquisitions the target project already has; EcoTaxa keys an
image by the `img_file_name` it was first imported with, which an import bundle or backup export keeps and other
exports may rename).

Prints one line per EcoTaxa error, warning or question, prefixed by the zip, then one summary line per zip.
Exit status 0 when every zip passes (no error, and no reference EcoTaxa would ask about), 1 otherwise.
This file stays Python 3.8 syntax (ecotaxa_back's version) and is linted with the project's ruff.
"""

import argparse
import csv
import io
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional, Tuple

UPDATE_FOLDER = "ecotaxa-update"
NAME_ONLY = -1  # the id of a taxon a map names without its id: the name exists, EcoTaxa knows the number


# -- reading EcoTaxa exports and taxon maps (what stands in for the project and taxonomy tables) ----------------


def _tsv_texts(path: Path) -> Iterator[Tuple[str, str]]:
    """(name, text) of every ecotaxa*.tsv / .txt in a file, a zip or a folder (recursively)."""
    def wanted(name: str) -> bool:
        base = name.rsplit("/", 1)[-1].lower()
        return base.startswith("ecotaxa") and base.endswith((".tsv", ".txt")) and "__MACOSX" not in name

    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.suffix.lower() == ".zip" or (child.is_file() and wanted(child.name)):
                yield from _tsv_texts(child)
    elif path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            for name in sorted(n for n in archive.namelist() if wanted(n)):
                yield "%s:%s" % (path, name), archive.read(name).decode("utf-8-sig")
    else:
        yield str(path), path.read_text(encoding="utf-8-sig")


def _export_rows(path: Path) -> Iterator[Dict[str, str]]:
    """The object rows of EcoTaxa export TSVs (lower-case column names, the [t]/[f] types row skipped)."""
    for _name, text in _tsv_texts(path):
        for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if row.get("object_id", "").lower() not in ("", "[t]", "[f]"):
                yield row


class Taxon(SimpleNamespace):
    """One row of EcoTaxa's taxonomy table, as far as the import looks at it."""

    id: Optional[int]
    name: str
    display_name: str
    parent: str


def read_taxa(path: Path) -> List[Taxon]:
    """Taxa from a taxon map (`label<TAB>name[<TAB>id]`, `name<parent` allowed) or from EcoTaxa exports."""
    text = path.read_text(encoding="utf-8-sig") if path.is_file() and path.suffix.lower() != ".zip" else ""
    first = text.splitlines()[0].lower() if text.strip() else ""
    taxa = []
    if text and "object_annotation_category" not in first:  # a taxon map
        for line in text.splitlines():
            cells = [c.strip() for c in next(csv.reader([line], delimiter="\t" if "\t" in line else ","))]
            if len(cells) < 2 or line.lstrip().startswith("#") or cells[0].lower() == "label" or not cells[1]:
                continue
            name, _, parent = cells[1].partition("<")
            number = cells[2] if len(cells) > 2 and cells[2].isdigit() else None
            taxa.append(Taxon(id=int(number) if number else None, name=name, display_name=cells[1], parent=parent))
        return taxa
    for row in _export_rows(path):  # an export: display name, id, and the lineage for the parent
        display, number = row.get("object_annotation_category", ""), row.get("object_annotation_category_id", "")
        if not display:
            continue
        steps = [s.strip() for s in row.get("object_annotation_hierarchy", "").split(">") if s.strip()]
        name, _, parent = display.partition("<")
        number = number[:-2] if number.endswith(".0") else number  # exports may write ids as floats
        taxa.append(Taxon(id=int(number) if number.isdigit() else None, name=steps[-1] if steps else name,
                          display_name=display, parent=steps[-2] if len(steps) > 1 else parent))
    return taxa


# -- the stand-in for the database --------------------------------------------------------------------------------


class _Result:
    def __init__(self, rows: List[tuple], keys: Tuple[str, ...] = ()):
        self.rows, self.keys = rows, keys

    def __iter__(self):
        return iter(self.rows)

    def mappings(self):
        return [dict(zip(self.keys, row)) for row in self.rows]


class _Tables:
    """A session that answers the SQL look-ups of the validation path from the files given (see the docstring)."""

    def __init__(self, taxa: Optional[List[Taxon]], existing: List[Dict[str, str]]):
        self.taxa, self.existing = taxa, existing

    def execute(self, sql, params):
        text = " ".join(str(sql).split())
        if "orig_file_name" in text and "images img" in text:  # Image.fetch_existing_images
            return _Result([("%s*%s" % (r["object_id"], r.get("img_file_name", "")),) for r in self.existing])
        if text.startswith("SELECT id FROM taxonomy WHERE id = ANY"):  # TaxonomyBO.find_ids
            known = None if self.taxa is None else {t.id for t in self.taxa if t.id is not None}
            return _Result([(i,) for i in params["een"] if known is None or i in known])
        if "computedchevronname" in text:  # TaxonomyBO.resolve_taxa
            wanted = set(params["nms"])
            rows: Dict[Tuple[str, str], tuple] = {}  # one taxonomy row per (name, parent), the one with an id
            for t in self.taxa or ():
                chevron = "%s<%s" % (t.name.lower(), t.parent.lower()) if t.parent else None
                if wanted & {t.name.lower(), t.display_name.lower(), chevron}:
                    key = (t.name.lower(), t.parent.lower())
                    if key not in rows or rows[key][0] == NAME_ONLY:
                        number = NAME_ONLY if t.id is None else t.id
                        rows[key] = (number, t.name.lower(), t.display_name.lower(), chevron)
            return _Result(list(rows.values()), ("id", "name", "display_name", "computedchevronname"))
        raise NotImplementedError("ecotaxa_validate.py does not answer this SQL: %s" % text[:200])


# -- one zip through FileImport's validation ----------------------------------------------------------------------


def validate_zip(path: Path, update_mode: str, skip_existing: bool, tables: _Tables, work: Path,
                 job_id: int) -> Tuple[List[str], List[str], List[str], int]:
    """(errors, warnings, questions, rows) as EcoTaxa's import validation reports them for one zip."""
    from API_models.imports import ImportReq
    from API_operations.imports.Import import FileImport
    from FS.TempDirForTasks import TempDirForTasks

    job = FileImport.__new__(FileImport)  # not __init__: it opens a DB session and reads the server's config
    job.prj_id, job.job_id, job.session = 1, job_id, tables
    job.req = ImportReq(source_path=str(path), update_mode=update_mode, skip_existing_objects=skip_existing)
    job.prj = SimpleNamespace(mappingobj="", mappingsample="", mappingacq="", mappingprocess="", fileloaded="")
    job.temp_for_jobs = TempDirForTasks(str(work))
    job.update_progress = lambda percent, message: None  # the job row in the DB
    # FileImport.unzip_if_needed, minus its user-files and common-folder look-up
    unzipped = job.temp_for_jobs.unzipped_dir_for(job_id)
    with zipfile.ZipFile(path) as archive:
        archive.extractall(unzipped)
    questions = []
    try:
        how, diag, rows = job._collect_existing_and_validate(unzipped, [], 1)
        if not diag.errors:  # FileImport.do_validate stops at errors; otherwise it resolves names
            job.resolve_references(how.found_users, how.found_taxa)
            missing_users, missing_taxa = job.validate_references(how.found_users, how.found_taxa)
            if missing_users or (missing_taxa and tables.taxa is not None):
                questions.append("%s: users %s, taxa %s" % (FileImport.MISSING_INFO_MESSAGE, missing_users,
                                                            missing_taxa))
    finally:
        job.session = None  # what the service's __exit__ does (its __del__ asserts it)
    errors, context = [], ""
    for line in diag.errors:  # "In <tsv>:" then " - <message>" lines: one line per error, with its TSV
        if line.startswith("In ") and line.endswith(":"):
            context = line + " "
        elif line.startswith(" - "):
            errors.append(context + line[3:])
        else:
            context = ""
            errors.append(line)
    return errors, list(diag.messages), questions, rows


def _stub_orm_lookups(existing: List[Dict[str, str]]) -> None:
    from BO.ProjectTidying import ProjectTopology
    from BO.User import UserBO

    def read_from_db(self, session, prj_id):
        for row in existing:
            if row.get("sample_id") and row.get("acq_id"):
                self.add_association(row["sample_id"], row["acq_id"])

    ProjectTopology.read_from_db = read_from_db
    UserBO.find_items = staticmethod(lambda cls, session, names, emails, found_items: None)


def zips_in(paths: List[Path]) -> List[Path]:
    found = []
    for path in paths:
        found += sorted(path.rglob("*.zip")) if path.is_dir() else [path]
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ecotaxa_back", type=Path, help="an ecotaxa_back checkout (its py/ folder is imported)")
    parser.add_argument("zips", type=Path, nargs="+", help="import zips, or folders searched for *.zip")
    parser.add_argument("--taxa", type=Path, action="append", default=[],
                        help="taxon map or EcoTaxa export: the categories that exist (default: any id, names unchecked)")
    parser.add_argument("--existing", type=Path, action="append", default=[],
                        help="EcoTaxa export of the target project: objects, images, samples already there")
    parser.add_argument("--update-mode", default="auto", choices=("auto", "new", "Yes", "Cla"))
    parser.add_argument("--skip-existing-objects", action="store_true",
                        help="EcoTaxa's 'skip objects already there' (always on for update zips in auto mode)")
    args = parser.parse_args(argv)

    zips = [z.resolve() for z in zips_in(args.zips)]
    if not zips:
        parser.error("no zip found in %s" % ", ".join(map(str, args.zips)))
    taxa = [t for path in args.taxa for t in read_taxa(path)] if args.taxa else None
    existing = [row for path in args.existing for row in _export_rows(path)]
    sys.path.insert(0, str((args.ecotaxa_back / "py").resolve()))
    work = Path(tempfile.mkdtemp(prefix="ecotaxa-validate-"))
    os.chdir(str(work))  # ecotaxa_back opens its log file (ecotaxa_back_0.log) in the working directory
    logging.disable(logging.INFO)  # its INFO lines go to that log; ours are the printed lines
    _stub_orm_lookups(existing)
    tables = _Tables(taxa, existing)

    failed = 0
    for job_id, path in enumerate(zips, start=1):
        update = args.update_mode == "auto" and path.parent.name == UPDATE_FOLDER
        mode = "Cla" if update else ("" if args.update_mode in ("auto", "new") else args.update_mode)
        skip = args.skip_existing_objects or update
        errors, warnings, questions, rows = validate_zip(path, mode, skip, tables, work, job_id)
        for kind, lines in (("error", errors), ("warning", warnings), ("question", questions)):
            for line in lines:
                print("%s: %s: %s" % (path, kind, line))
        verdict = "FAIL" if errors or questions else "ok"
        failed += verdict == "FAIL"
        print("%s: %s: %d rows, update_mode=%r, skip_existing_objects=%s, %d errors, %d warnings" % (
            path, verdict, rows, mode, skip, len(errors), len(warnings)))
    print("%d of %d zips pass EcoTaxa's import validation" % (len(zips) - failed, len(zips)))
    shutil.rmtree(str(work), ignore_errors=True)  # the unzipped bundles and ecotaxa_back's log
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
