"""A taxon map from an EcoTaxa export (`plankton taxa`): the file the `ecotaxa` writer reads as `taxon_map`.

EcoTaxa resolves an imported category by `object_annotation_category_id` first, then by a unique taxon name,
display name or `name<parent` (`reference/ecotaxa-format.md` §5). An export tells, per category:

- its id: `object_annotation_category_id` (backup and "annotations only" exports), or the DOI layout's image
  folder `images/<display_name>__<id>/`;
- its parent: the last two entries of `object_annotation_hierarchy` (TSV exports), which make `name<parent`.

Each label becomes one line `label<TAB>ecotaxa_name<TAB>category_id`. A label resolves when its id is known
(EcoTaxa needs nothing else) or when the name can be written as `name<parent`. Labels are the export's categories,
or a model's classes (`classes`): a class matches a category by its name, or as a `Name__12345` folder label by
its id *when the export has that id*. Names and ids come from the export only: the id in a folder name is never
trusted on its own (a folder `detritus__8888` next to an export where detritus is 84963 would send the objects
to whatever taxon 8888 is in the real database). Whatever does not resolve is listed with the reason.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plankton_cli.core.records import ReadOptions
from plankton_plugins.ecotaxa.reader import EcoTaxaReader, _category_id
from plankton_plugins.ecotaxa.tsv import TsvReader, normalize_category

_DOI_FOLDER = re.compile(r"(?:^|/)images/(?P<name>[^/]+)__(?P<id>\d+)/")
_FOLDER_LABEL = re.compile(r"(?P<name>.+)__(?P<id>\d+)")


@dataclass
class Category:
    """What an export says about one category name: the ids and parents it was seen with."""

    name: str
    ids: set[str] = field(default_factory=set)
    parents: set[str] = field(default_factory=set)
    objects: int = 0

    def resolved(self) -> tuple[str, str | None] | str:
        """(EcoTaxa name, id) or the reason it does not resolve."""
        if len(self.ids) > 1:
            return f"{len(self.ids)} category ids in the export ({', '.join(sorted(self.ids))})"
        category_id = next(iter(self.ids), None)
        if "<" in self.name:
            return self.name, category_id
        if len(self.parents) == 1:
            return f"{self.name}<{next(iter(self.parents))}", category_id
        if category_id:
            return self.name, category_id
        if len(self.parents) > 1:
            return f"{len(self.parents)} different parents in the export: ambiguous name"
        return "no category id and no lineage in the export: EcoTaxa would resolve it by name only if unique"


@dataclass
class TaxonMap:
    entries: list[tuple[str, str, str | None]]  # label, EcoTaxa name, category id
    unresolved: list[tuple[str, str]]  # label, reason
    categories: int = 0
    rows: int = 0

    def to_tsv(self) -> str:
        lines = ["label\tecotaxa_name\tcategory_id"]
        lines += [f"{label}\t{name}\t{category_id or ''}" for label, name, category_id in self.entries]
        return "\n".join(lines) + "\n"


def _tsv_sources(export: Path) -> Iterable[tuple[str, object]]:
    """(name, opener) of each EcoTaxa TSV in a zip, folder or TSV path."""
    reader = EcoTaxaReader()
    for source in reader.discover(export, ReadOptions()):
        member, _collection = source.extra  # member: the TSV inside a zip, None for a TSV on disk
        if member is None:
            path = source.files[0]
            yield source.key, (lambda path=path: open(path, "rb"))
        else:
            archive_path = source.files[0]
            yield source.key, (lambda a=archive_path, m=member: _member_bytes(a, m))


def _member_bytes(archive_path: Path, member: str) -> io.BytesIO:
    with zipfile.ZipFile(archive_path) as archive:
        return io.BytesIO(archive.read(member))  # a TSV is small next to the images beside it


def read_categories(exports: Sequence[Path]) -> tuple[dict[str, Category], int]:
    """Category name -> what the exports say about it; and the number of rows read."""
    categories: dict[str, Category] = {}
    rows = 0
    for export in exports:
        for _, opener in _tsv_sources(Path(export)):
            with TsvReader(opener) as tsv:
                for row in tsv:
                    values = row.values or {}
                    rows += 1
                    name = normalize_category(values.get("object_annotation_category", ""))
                    if not name:
                        continue
                    category = categories.setdefault(name, Category(name))
                    category.objects += 1
                    number = _category_id(values.get("object_annotation_category_id", "").strip())
                    if number.isdigit():
                        category.ids.add(number)
                    doi = _DOI_FOLDER.search(values.get("img_file_name", "").replace("\\", "/"))
                    if doi:
                        category.ids.add(doi["id"])
                    lineage = [p.strip() for p in values.get("object_annotation_hierarchy", "").split(">") if p.strip()]
                    if len(lineage) >= 2:
                        category.parents.add(lineage[-2])
    return categories, rows


def build_taxon_map(exports: Sequence[Path], classes: Sequence[str] | None = None,
                    taxonomy: Path | None = None) -> TaxonMap:
    """The taxon map of `classes` (default: every category of the exports), from the exports and/or an EcoTaxa
    taxonomy TSV; the taxonomy is asked when the exports do not resolve a label, or give it no id."""
    categories, rows = read_categories(exports)
    by_id = {i: c for c in categories.values() for i in c.ids}
    tree = read_taxonomy(taxonomy) if taxonomy is not None else None
    entries, unresolved = [], []
    for label in classes if classes is not None else sorted(categories):
        outcome = _from_exports(label, categories, by_id) if exports else None
        if tree is not None and (outcome is None or isinstance(outcome, str) or outcome[1] is None):
            found = tree.resolve(label)
            if not isinstance(found, str):
                outcome = found
            elif outcome is None or isinstance(outcome, str):
                outcome = found if outcome is None else f"{outcome}; {found}"
        if isinstance(outcome, str):
            unresolved.append((label, outcome))
        elif outcome is not None:
            entries.append((label, *outcome))
    return TaxonMap(entries, unresolved, len(categories) or (len(tree.by_id) if tree else 0), rows)


def _from_exports(label: str, categories: dict[str, Category],
                  by_id: dict[str, Category]) -> tuple[str, str | None] | str:
    category = categories.get(normalize_category(label))
    folder = _FOLDER_LABEL.fullmatch(label)
    if category is None and folder:
        category = by_id.get(folder["id"])
        if category is None:
            return _folder_reason(folder["name"], folder["id"], categories)
    if category is None:
        return "not a category of the export"
    return category.resolved()


@dataclass(frozen=True)
class TaxonomyEntry:
    id: str
    name: str
    display_name: str
    parent: str  # the parent's name, "" for a root


@dataclass
class Taxonomy:
    """EcoTaxa's taxonomy (or the part of it a TSV lists): ids, names, display names and parents."""

    by_id: dict[str, TaxonomyEntry]

    def named(self, name: str) -> list[TaxonomyEntry]:
        name = name.strip().lower()
        return [e for e in self.by_id.values() if name in (e.name.lower(), e.display_name.lower())]

    def resolve(self, label: str) -> tuple[str, str] | str:
        """(EcoTaxa name, id) of a label, or why not. A `Name__id` folder label resolves only when the taxonomy has
        that id *under that name*: the id alone could be any taxon."""
        folder = _FOLDER_LABEL.fullmatch(label)
        if folder:
            entry = self.by_id.get(folder["id"])
            if entry is None:
                return f"category id {folder['id']} (from the folder name) is not in the taxonomy"
            if folder["name"].lower() not in (entry.name.lower(), entry.display_name.lower()):
                return f"category id {folder['id']} is {entry.display_name or entry.name!r} in the taxonomy, " \
                       f"not {folder['name']!r}"
            return entry.name, entry.id
        name, _, parent = normalize_category(label).partition("<")
        found = [e for e in self.named(name) if not parent or e.parent.lower() == parent.strip().lower()]
        if len(found) == 1:
            return found[0].name, found[0].id
        if not found:
            return f"no taxon named {label!r} in the taxonomy"
        ids = ", ".join(sorted(e.id for e in found))
        return f"{len(found)} taxa named {label!r} in the taxonomy (ids {ids}): map it as name<parent"


_ID_COLUMNS = ("id", "taxon_id", "category_id")


def read_taxonomy(path: Path) -> Taxonomy:
    """An EcoTaxa taxonomy TSV: a header with an id column (`id`, `taxon_id` or `category_id`) and `name`, and
    optionally `display_name` and the parent as `parent_id`, `parent_name` or a `>`-joined `lineage`."""
    with TsvReader(lambda: open(path, "rb")) as tsv:
        id_column = next((c for c in _ID_COLUMNS if c in tsv.header), None)
        if id_column is None or "name" not in tsv.header:
            raise ValueError(f"{path}: not a taxonomy TSV: the header needs an id column ({', '.join(_ID_COLUMNS)}) "
                             f"and name, it has {', '.join(tsv.header[:8])}")
        rows = [row.values for row in tsv if row.values]
    names = {_category_id(r[id_column].strip()): r["name"].strip() for r in rows}
    entries = {}
    for r in rows:
        taxon_id = _category_id(r[id_column].strip())
        if not taxon_id.isdigit() or not r["name"].strip():
            continue
        lineage = [step.strip() for step in r.get("lineage", "").split(">") if step.strip()]
        parent = (names.get(_category_id(r.get("parent_id", "").strip()), "") or r.get("parent_name", "").strip()
                  or (lineage[-2] if len(lineage) >= 2 else ""))
        entries[taxon_id] = TaxonomyEntry(taxon_id, r["name"].strip(), r.get("display_name", "").strip(), parent)
    return Taxonomy(entries)


def _folder_reason(name: str, folder_id: str, categories: dict[str, Category]) -> str:
    """Why a `Name__id` label did not resolve, with the export's own id for that name when it has one."""
    reason = f"category id {folder_id} (from the folder name) is not in the export"
    same_name = categories.get(normalize_category(name))
    if same_name is not None and same_name.ids:
        ids = ", ".join(sorted(same_name.ids))
        reason += (f"; the export has {name!r} as id {ids}: if that is the same taxon, add "
                   f"'{name}__{folder_id}<TAB>{name}<TAB>{ids}' to the map")
    elif same_name is not None:  # a TSV export: names and lineages, no ids
        reason += (f"; the export has {name!r} without an id: a backup export or --taxonomy can confirm "
                   f"{folder_id}")
    return reason


def class_names(model_path: Path) -> list[str]:
    """The classes a model file (or its folder) predicts, from its `model.json`."""
    model_path = Path(model_path)
    weights = model_path / "model.safetensors" if model_path.is_dir() else model_path
    from plankton_cli.train.model_info import ModelInfo

    return list(ModelInfo.load(weights).classes)
