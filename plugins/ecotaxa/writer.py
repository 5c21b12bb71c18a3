"""Predictions as EcoTaxa import zips (`ecotaxa` writer), following `reference/ecotaxa-format.md` §11 to the letter.

Which zip an object goes to (`ecotaxa_mode`, default `auto`): objects read from EcoTaxa (their metadata holds
EcoTaxa's own `object_id`) are already in an EcoTaxa project, so they go to update zips; every other object goes to
a zip of new objects; one run writes both. `new` or `update` sends every object one way.

New objects: one zip per sample, `<out>/ecotaxa/<sample>.zip`, holding `ecotaxa_<sample>.tsv` (UTF-8 with BOM,
tab-separated, `[t]/[f]` types row) and the images next to it, written byte for byte as stored (a TIFF or BMP,
which EcoTaxa refuses, is converted to PNG losslessly). Each row carries `object_annotation_status = predicted` with
`object_annotation_category`, or neither. EcoTaxa sets the score of every imported prediction to 1.0, so the
model's top-1 probability goes into the custom column `object_score`, the argmax class into `object_label_auto`
(useful when thresholds left the object unclassified) and the next classes into `object_top<i>_label` /
`object_top<i>_score` for i = 2..k (k at most `MAX_TOP_K`, as text columns count against EcoTaxa's 20).
An object read from an EcoTaxa export and written as new goes back as it came: every image (`img_rank`), and every
column the export gave (depth min/max, `acq_id`, `acq_instrument`, sample, acquisition and process columns,
`object_*` features) with its text unchanged; only the annotation columns are the prediction's. All images of one
object carry the prediction of its first image (lowest `img_rank`), as EcoTaxa classifies objects, not images.

Existing objects: `<out>/ecotaxa-update/<sample>.zip` with a TSV of `object_id`, `object_annotation_status`,
`object_annotation_category` [and `object_annotation_category_id`] and the types row, one row per object. EcoTaxa
applies it only with the update option "Update data including classification" (`update_mode="Cla"`); with "Yes"
it changes no classification. Rows without a category are left out, so an update never touches objects the model
did not classify.

Categories: EcoTaxa resolves `object_annotation_category_id` before any name and then forgets the name, so an id
it is given must be the right one. A label is written with a category only when it is confirmed: by the taxon map
(`taxon_map=PATH`: `label<TAB>ecotaxa_name[<TAB>category_id]` or comma-separated per line, `#` comments and a
`label` header line skipped; `plankton taxa` builds one from an export), or by the labels EcoTaxa gave to objects
read from it into the store the run predicts (`run.options["store"]`: their name, `name<parent` from the lineage,
and `object_annotation_category_id` when the export has it; a label seen with two ids gets none). The id in a
`Name__12345` folder name is never trusted. Any other label is unconfirmed: its objects are written without status
and category (they stay unclassified in EcoTaxa; `unmapped=omit`, the default), left out (`unmapped=skip`), or
written by name only (`unmapped=name`: EcoTaxa resolves the name or asks for a mapping at import); with `strict=1`
(`predict --strict`) the run is refused before anything is predicted. The summary counts them per label and says
how to fix the map. `unclassified` predictions (below their class threshold) are written without status and
category.

`sample_id` and `acq_id` are always filled: the sample (the IFCB bin, the EcoTaxa sample), else the object's source
folder, so EcoTaxa never invents `__DUMMY_ID__` parents.

A batch may hold several samples and a sample may span batches, so rows and images are spooled per sample to a
hidden folder in OUT (`plankton_cli.core.spool`, removed at `close()` or `abort()`, or by the next run after a kill) and
each zip is built at `close()`: rows sorted by object_id and image rank (an image predicted twice keeps its last
prediction), members in fixed order with fixed timestamps, so the same predictions give the same bytes. Each zip is
written under a temporary name, checked with `checker.check_import_zip` (against the confirmed taxa too; a problem
raises `EcoTaxaExportError`), then renamed into place.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image

import plankton_cli
from plankton_cli.core.atomic import atomic_path
from plankton_cli.infer.predictions import probability_matrix, top_k
from plankton_cli.core.spool import Spool
from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun
from plankton_cli.core.instruments import canonical_instrument
from plankton_plugins.ecotaxa.checker import check_import_zip
from plankton_plugins.ecotaxa.reader import NATIVE_ID
from plankton_plugins.ecotaxa.tsv import normalize_category
from plankton_plugins.ifcb.bins import parse_bin_id

MODES = ("auto", "new", "update")  # auto: objects read from EcoTaxa to update zips, the others to new zips
UNMAPPED_POLICIES = ("omit", "skip", "name")  # what happens to objects whose label no map or export confirms
MAX_TOP_K = 5
UNKNOWN_SAMPLE = "unknown-sample"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: re-running gives identical bytes
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"))
_EXTENSIONS = {"png": {".png"}, "jpg": {".jpg", ".jpeg"}, "gif": {".gif"}}


_ID_LABEL = re.compile(r"id:(\d+)")  # the reader's label for a row with a category id and no name
_FOLDER_LABEL = re.compile(r"(?P<name>.+)__(?P<id>\d+)")  # uvpec / EcoTaxa DOI class folders: DisplayName__id
ECOTAXA_COLUMN = re.compile(r"(?:object|sample|acq|process)_.+|complement_info")
"""Metadata keys that are columns of the EcoTaxa TSV an object was read from (written back in new mode)."""
PREDICTION_COLUMNS = re.compile(r"object_annotation_.*|object_score|object_label_auto|object_top\d+_(?:label|score)")
"""Columns the prediction fills: an export's own values there are replaced, never written back."""


class EcoTaxaExportError(RuntimeError):
    """A zip the writer produced fails EcoTaxa's import rules (a bug, or a label EcoTaxa cannot take)."""


class Taxon(NamedTuple):
    name: str
    category_id: str | None = None


def load_taxon_map(path: str | Path) -> dict[str, Taxon]:
    """Model label -> EcoTaxa taxon (name, optional category id) from a TSV or CSV of 2 or 3 columns
    (`name (parent)` becomes `name<parent`)."""
    mapping: dict[str, Taxon] = {}
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in next(csv.reader([line], delimiter="\t" if "\t" in line else ","))]
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ValueError(f"{path}:{number}: expected 'label<TAB>ecotaxa_name[<TAB>category_id]', got {line!r}")
        label = cells[0]
        if not mapping and label.lower() == "label":
            continue  # a header line
        category_id = cells[2] if len(cells) > 2 and cells[2] else None
        if category_id is not None and not category_id.isdigit():
            raise ValueError(f"{path}:{number}: category id {category_id!r} is not a number")
        taxon = Taxon(normalize_category(cells[1]), category_id)
        if mapping.get(label, taxon) != taxon:
            raise ValueError(f"{path}:{number}: {label!r} is mapped twice ({mapping[label]} and {taxon})")
        mapping[label] = taxon
    return mapping


def store_taxa(store_root: str | Path) -> dict[str, Taxon]:
    """Label -> EcoTaxa taxon for the labels EcoTaxa itself gave to objects read from it into the store.

    Only objects the EcoTaxa reader stored count (their metadata holds EcoTaxa's `object_id`): a label found there
    is an EcoTaxa category name, or `id:<n>` for a row with an id and no name. The id is the export's
    `object_annotation_category_id` when every such object agrees on one; the name becomes `name<parent` when the
    lineage gives one parent (EcoTaxa resolves a bare name only when it is unique).
    """
    import pyarrow.compute as pc

    from plankton_cli.store import Store

    store = Store(store_root)
    if not store.files("objects"):
        return {}
    table = store.dataset("objects").to_table(columns=["label", "lineage", "metadata"],
                                              filter=pc.field("label").is_valid())
    ids: dict[str, set[str]] = {}
    parents: dict[str, set[str]] = {}
    for label, lineage, metadata in zip(table["label"].to_pylist(), table["lineage"].to_pylist(),
                                        table["metadata"].to_pylist()):
        values = {pair["key"]: pair["value"] for pair in metadata or ()}
        if NATIVE_ID not in values:
            continue  # not read from EcoTaxa: a folder name or a user's label, which EcoTaxa never confirmed
        found = ids.setdefault(label, set())
        number = _category_number(values.get("object_annotation_category_id"))
        match = _ID_LABEL.fullmatch(label)
        if number or match:
            found.add(number or match[1])
        steps = [step.strip() for step in (lineage or "").split(">") if step.strip()]
        if len(steps) >= 2:
            parents.setdefault(label, set()).add(steps[-2])
    taxa = {}
    for label, numbers in ids.items():
        name = label
        if _ID_LABEL.fullmatch(label) is None and "<" not in label and len(parents.get(label, ())) == 1:
            name = f"{label}<{next(iter(parents[label]))}"
        taxa[label] = Taxon(name, numbers.pop() if len(numbers) == 1 else None)
    return taxa


def _category_number(text: str | None) -> str | None:
    """`85012` or `85012.0` (exports write ids as numbers) -> `85012`; anything else -> None."""
    try:
        number = float(text or "")
    except ValueError:
        return None
    return str(int(number)) if number.is_integer() and number > 0 else None


def ecotaxa_object_id(p: Prediction) -> str:
    """The `object_id` EcoTaxa knows the object by (update mode matches on it): objects read from EcoTaxa keep
    their native id in metadata, while the store's id is qualified by the bundle."""
    return (p.metadata or {}).get(NATIVE_ID) or p.object_id


def image_rank(p: Prediction) -> int:
    """Which image of its object a prediction is: the reader stores an EcoTaxa object's further images as
    `<object_id>#<rank>` (rank 1, 2... from `img_rank`, or the next free one when the TSV gave none); 0 otherwise."""
    if NATIVE_ID not in (p.metadata or {}):
        return 0
    match = re.fullmatch(r".*#(\d+)", p.object_id)
    return int(match[1]) if match else 0


def sample_name(p: Prediction) -> str:
    """The sample of an object: its sample id (IFCB bin, EcoTaxa sample), else its source folder."""
    if p.sample_id:
        return p.sample_id
    folder = str(PurePosixPath(p.object_id).parent)
    return folder if folder not in ("", ".") else UNKNOWN_SAMPLE


def safe_name(text: str) -> str:
    """`text` as a file name: kept when it is already safe, else cleaned and suffixed with a short hash."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if cleaned == text:
        return text
    return f"{cleaned or 'x'}-{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"


def image_extension(data: bytes, image_name: str | None) -> str | None:
    """`.png`, `.jpg`/`.jpeg` or `.gif` from the image's magic bytes (the original suffix when it agrees),
    or None for any other format."""
    kind = next((k for magic, k in _MAGIC if data.startswith(magic)), None)
    if kind is None:
        return None
    suffix = Path(image_name or "").suffix.lower()
    return suffix if suffix in _EXTENSIONS[kind] else f".{kind}"


def to_png(data: bytes) -> bytes:
    """Lossless PNG of an image in another format (EcoTaxa imports only PNG, JPEG and GIF)."""
    with Image.open(io.BytesIO(data)) as opened:
        image: Image.Image = opened
        image.load()
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def _number(value: float) -> str:
    return format(float(value), ".6g")


def _zip_member(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = compress
    info.create_system = 3  # Unix, wherever it runs
    info.external_attr = 0o644 << 16
    return info


class EcoTaxaWriter:
    name = "ecotaxa"
    description = "EcoTaxa import zips, one per sample (new objects with images, or update form for existing ones)"

    def open(self, out_dir: Path, run: PredictionRun) -> EcoTaxaSession:
        return EcoTaxaSession(Path(out_dir), run)


class EcoTaxaSession:
    def __init__(self, out_dir: Path, run: PredictionRun):
        options = run.options
        self.mode = options.get("ecotaxa_mode", "auto")
        self.unmapped_policy = options.get("unmapped", "omit")
        if self.mode not in MODES:
            raise ValueError(f"ecotaxa_mode must be one of {MODES}, not {self.mode!r}")
        if self.unmapped_policy not in UNMAPPED_POLICIES:
            raise ValueError(f"unmapped must be one of {UNMAPPED_POLICIES}, not {self.unmapped_policy!r}")
        self.run = run
        self.out_dir = out_dir
        self.taxon_map_path = options.get("taxon_map") or None
        self.taxon_map = load_taxon_map(self.taxon_map_path) if self.taxon_map_path else None
        self.store_taxa = store_taxa(options["store"]) if options.get("store") else {}
        unconfirmed = [c for c in run.classes if c != UNCLASSIFIED and self._taxon(c) is None]
        if str(options.get("strict", "")).lower() in ("1", "true", "yes") and unconfirmed:
            from plankton_cli.core.errors import DataError

            raise DataError(f"ecotaxa: {len(unconfirmed)} of the model's {len(run.classes)} labels have no EcoTaxa "
                            f"category confirmed by a taxon map or by labels read from EcoTaxa "
                            f"({', '.join(unconfirmed[:10])}{', ...' if len(unconfirmed) > 10 else ''}); "
                            f"{FIX_HINT}")
        self.k = max(1, min(run.top_k, MAX_TOP_K, len(run.classes)))
        self.version = run.package_version or plankton_cli.__version__
        self._spooled = Spool(out_dir, EcoTaxaWriter.name)  # beside the output, not in /tmp: see plankton_cli.core.spool
        self._spool = self._spooled.path
        self._samples: dict[tuple[str, str], Path] = {}  # (mode, sample name) -> its spool folder
        self._seq = 0

    # -- write: one spooled row (and image) per prediction -----------------------------------------------------

    def write(self, batch: Sequence[Prediction]) -> None:
        if not batch:
            return
        order, scores = top_k(probability_matrix(batch, self.run), self.k)
        rows: dict[tuple[str, str], list[str]] = {}
        for p, indices, probabilities in zip(batch, order, scores):
            mode = self._mode(p)
            key = (mode, sample_name(p))
            folder = self._sample_folder(key)
            row = self._row(p, mode, [self.run.classes[i] for i in indices], probabilities)
            if mode == "new" and p.image is not None:
                self._seq += 1
                row["_image"] = f"{self._seq:09d}.img"
                (folder / row["_image"]).write_bytes(p.image)
                row["_image_name"] = p.image_name or (p.metadata or {}).get("img_file_name")
            rows.setdefault(key, []).append(json.dumps(row))
        for key, lines in rows.items():
            with open(self._samples[key] / "rows.jsonl", "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

    def _mode(self, p: Prediction) -> str:
        if self.mode != "auto":
            return self.mode
        return "update" if NATIVE_ID in (p.metadata or {}) else "new"

    def _sample_folder(self, key: tuple[str, str]) -> Path:
        if key not in self._samples:
            folder = self._spool / f"{len(self._samples):06d}"
            folder.mkdir()
            self._samples[key] = folder
        return self._samples[key]

    def _taxon(self, label: str) -> Taxon | None:
        """The EcoTaxa taxon a label is confirmed as (by the map, or by EcoTaxa's own labels in the store)."""
        stored = self.store_taxa.get(label)
        mapped = (self.taxon_map or {}).get(label)
        if mapped is not None:
            # the store's id is the label's own category: it holds only when the map keeps that category's name
            # (`detritus<not-living` is EcoTaxa's `detritus` with its parent spelled out)
            same = stored is not None and mapped.name.split("<")[0] in (label, stored.name.split("<")[0])
            return Taxon(mapped.name, mapped.category_id or (stored.category_id if same and stored else None))
        return stored

    def _category(self, label: str) -> tuple[str, Taxon | None]:
        """(kind, EcoTaxa taxon) where kind is classified, unclassified or unmapped (no confirmed category)."""
        if label == UNCLASSIFIED:
            return "unclassified", None
        taxon = self._taxon(label)
        if taxon is not None:
            return "classified", taxon
        if self.unmapped_policy == "name":  # the user's choice: EcoTaxa resolves the name, never an id of ours
            folder = _FOLDER_LABEL.fullmatch(label)
            return "unmapped", Taxon(folder["name"] if folder else label)
        return "unmapped", None

    def _row(self, p: Prediction, mode: str, top_labels: list[str], top_scores: np.ndarray) -> dict:
        kind, taxon = self._category(p.label)
        metadata = p.metadata or {}
        rank = image_rank(p)
        row: dict = {"_kind": kind, "_label": p.label, "_record": p.object_id, "_rank": rank,
                     "object_id": ecotaxa_object_id(p)}
        if taxon is not None:
            row["object_annotation_status"] = "predicted"
            row["object_annotation_category"] = taxon.name
            if taxon.category_id:
                row["object_annotation_category_id"] = taxon.category_id
        if mode == "update":
            return row
        sample = sample_name(p)
        when = p.acquired_at
        if when is not None:
            when = when.astimezone(UTC) if when.tzinfo else when  # naive times are taken as UTC
        instrument = canonical_instrument(p.instrument) if p.instrument else None
        raw_rank = metadata.get("img_rank", "").strip() or "0"
        row |= {
            # the export's own text when it says the same rank (`0`, `0.0`), else the rank the reader gave the image
            "img_rank": raw_rank if _category_number(raw_rank) == str(rank) or (raw_rank == "0" and not rank)
            else str(rank),
            "object_lat": "" if p.lat is None else repr(float(p.lat)),
            "object_lon": "" if p.lon is None else repr(float(p.lon)),
            "object_date": "" if when is None else when.strftime("%Y%m%d"),
            "object_time": "" if when is None else when.strftime("%H%M%S"),
            "object_depth_min": "" if p.depth is None else repr(float(p.depth)),
            "object_depth_max": "" if p.depth is None else repr(float(p.depth)),
            "object_score": _number(top_scores[0]),
            "object_label_auto": p.label_auto,
            "sample_id": sample,
            "acq_id": sample,
            "acq_instrument": instrument or "",
            "process_id": f"plankton_{self.run.model_id}",
            "process_software": f"plankton-cli {self.version}",
            "process_model_hash": self.run.model_hash,
        }
        for i in range(1, len(top_labels)):
            row[f"object_top{i + 1}_label"] = top_labels[i]
            row[f"object_top{i + 1}_score"] = _number(top_scores[i])
        if p.source_row is not None and parse_bin_id(sample) is not None:
            row["object_roi_number"] = str(p.source_row)  # only IFCB: elsewhere source_row is a TSV row
        if NATIVE_ID in metadata:
            row = self._as_exported(row, metadata)
        return row

    @staticmethod
    def _as_exported(row: dict, metadata: dict[str, str]) -> dict:
        """The row of an object read from EcoTaxa, with the export's own text in every column it gave.

        The reader parsed some columns into record fields (lat/lon, date and time, sample id) and kept every other
        one as text in metadata; the text wins. Date and time are written back from the parsed value only when
        neither is in metadata (the reader consumes them together), and the process is the export's when it names
        one (ours would add columns to a process EcoTaxa already has).
        """
        exported = {k: v for k, v in metadata.items()
                    if ECOTAXA_COLUMN.fullmatch(k) and not PREDICTION_COLUMNS.fullmatch(k)}
        if "object_date" in exported or "object_time" in exported:
            row.pop("object_date"), row.pop("object_time")
        if "process_id" in exported:
            row = {k: v for k, v in row.items() if not k.startswith("process_")}
        row.pop("object_depth_min"), row.pop("object_depth_max")  # the reader keeps both as text, or had neither
        return row | exported

    # -- close: one checked zip per sample -----------------------------------------------------------------------

    def columns(self, rows: list[dict], mode: str) -> list[tuple[str, str]]:
        """(name, type) of the TSV columns, in EcoTaxa's export order, for the rows of one sample."""
        present = {column for row in rows for column in row if not column.startswith("_")}
        with_ids = [("object_annotation_category_id", "[f]")] if "object_annotation_category_id" in present else []
        if mode == "update":
            return [("object_id", "[t]"), ("object_annotation_status", "[t]"), ("object_annotation_category", "[t]"),
                    *with_ids]
        head = [
            ("img_file_name", "[t]"), ("img_rank", "[f]"), ("object_id", "[t]"), ("object_lat", "[f]"),
            ("object_lon", "[f]"), ("object_date", "[t]"), ("object_time", "[t]"), ("object_link", "[t]"),
            ("object_depth_min", "[f]"), ("object_depth_max", "[f]"), ("object_annotation_status", "[t]"),
            ("object_annotation_category", "[t]"), *with_ids, ("complement_info", "[t]"),
        ]  # fmt: skip
        ours = [("object_roi_number", "[f]"), ("object_score", "[f]"), ("object_label_auto", "[t]")]
        for i in range(2, self.k + 1):
            ours += [(f"object_top{i}_label", "[t]"), (f"object_top{i}_score", "[f]")]
        always = ("img_file_name", "img_rank", "object_id", "object_annotation_status", "object_annotation_category")
        fixed = [c for c in head + ours if c[0] in present or c[0] in always]
        seen = {name for name, _ in head + ours}
        rest = [c for row in rows for c in row if not c.startswith("_") and c not in seen]
        rest = list(dict.fromkeys(rest))  # first-seen order: an export's own column order
        groups: dict[str, list[str]] = {"object": [], "sample": [], "process": [], "acq": []}
        for column in rest:
            groups[column.split("_", 1)[0]].append(column)
        ordered = groups["object"]
        for prefix in ("sample", "process", "acq"):  # EcoTaxa's export order; the id first in each group
            ordered += [c for c in groups[prefix] if c == f"{prefix}_id"]
            ordered += [c for c in groups[prefix] if c != f"{prefix}_id"]
        return fixed + [(c, _column_type(c, rows)) for c in ordered]

    def close(self) -> dict:
        counts: Counter = Counter()
        unmapped: Counter = Counter()
        files: dict[str, list[str]] = {"new": [], "update": []}
        try:
            for mode, sample in sorted(self._samples):
                path = self._write_sample(mode, sample, self._samples[(mode, sample)], counts, unmapped)
                if path is not None:
                    files[mode].append(str(path))
        finally:
            self._spooled.remove()
        return self._summary(files, counts, unmapped)

    def abort(self) -> None:
        """Forget the spooled predictions (predict failed before `close()`)."""
        self._spooled.remove()

    def _write_sample(self, mode: str, sample: str, spool: Path, counts: Counter, unmapped: Counter) -> Path | None:
        lines = (spool / "rows.jsonl").read_text(encoding="utf-8").splitlines()
        latest = {row["_record"]: row for row in map(json.loads, lines)}  # the last prediction of each image
        counts["duplicates"] += len(lines) - len(latest)
        objects: dict[str, list[dict]] = {}
        for row in sorted(latest.values(), key=lambda r: (r["object_id"], r["_rank"], r["_record"])):
            objects.setdefault(row["object_id"], []).append(row)
        rows = []
        for shots in objects.values():
            first = shots[0]  # EcoTaxa classifies objects: the first image's prediction speaks for all of them
            counts[first["_kind"]] += 1
            counts["with category id"] += "object_annotation_category_id" in first
            if first["_kind"] == "unmapped":
                unmapped[first["_label"]] += 1
                if self.unmapped_policy == "skip":
                    counts["left out: unmapped label"] += 1
                    continue
            if mode == "update":
                if "object_annotation_category" not in first:
                    counts[f"left out: {first['_kind']} (update mode)"] += 1
                    continue
                rows.append(first)  # one row per object: an update names objects, not images
                continue
            with_image = [row for row in shots if "_image" in row]
            if len(with_image) < len(shots):
                counts["left out: no image"] += len(shots) - len(with_image)
            if not with_image:
                continue
            prediction = {k: v for k, v in first.items() if PREDICTION_COLUMNS.fullmatch(k)}
            for row in with_image:
                rows.append({k: v for k, v in row.items() if not PREDICTION_COLUMNS.fullmatch(k)} | prediction)
        if not rows:
            return None
        name = safe_name(sample)
        images = self._images(rows, spool, counts) if mode == "new" else {}
        columns = self.columns(rows, mode)
        text = io.StringIO()
        writer = csv.writer(text, delimiter="\t", quotechar='"', lineterminator="\n")
        writer.writerow([column for column, _ in columns])
        writer.writerow([kind for _, kind in columns])
        for row in rows:
            writer.writerow([row.get(column, "") for column, _ in columns])
        tsv = codecs.BOM_UTF8 + text.getvalue().encode("utf-8")
        path = self.out_dir / ("ecotaxa" if mode == "new" else "ecotaxa-update") / f"{name}.zip"
        self._write_zip(path, mode, f"ecotaxa_{name}.tsv", tsv, images)
        counts[f"{mode} objects"] += len({row["object_id"] for row in rows})
        counts[f"{mode} images"] += len(rows) if mode == "new" else 0
        return path

    def _images(self, rows: list[dict], spool: Path, counts: Counter) -> dict[str, Path]:
        """Set each row's `img_file_name`; returns zip member name -> spooled image file (converted if needed)."""
        images = {}
        for row in rows:
            source = spool / row["_image"]
            data = source.read_bytes()
            suffix = image_extension(data, row.get("_image_name"))
            if suffix is None:
                source.write_bytes(to_png(data))
                suffix = ".png"
                counts["converted to PNG"] += 1
            rank = f"_{row['_rank']}" if row["_rank"] else ""  # an object's further images need their own file
            row["img_file_name"] = safe_name(row["object_id"]) + rank + suffix
            images[row["img_file_name"]] = source
        return images

    def confirmed_taxa(self) -> dict[str, str | None]:
        """EcoTaxa name -> category id of every taxon this run may write (what the checker holds zips to)."""
        labels = set(self.taxon_map or {}) | set(self.store_taxa)
        taxa = {}
        for label in labels:
            taxon = self._taxon(label)
            if taxon is not None:
                taxa[taxon.name] = taxon.category_id
        if self.unmapped_policy == "name":  # the user asked for these names, never with an id
            for label in self.run.classes:
                kind, taxon = self._category(label)
                if kind == "unmapped" and taxon is not None:
                    taxa.setdefault(taxon.name, None)
        return taxa

    def _write_zip(self, path: Path, mode: str, tsv_name: str, tsv: bytes, images: dict[str, Path]) -> None:
        with atomic_path(path, scratch=self._spool) as tmp:  # a killed run's temporary zip goes with its spool
            with zipfile.ZipFile(tmp, "w") as archive:
                archive.writestr(_zip_member(tsv_name, zipfile.ZIP_DEFLATED), tsv)
                for member in sorted(images):  # PNG and JPEG do not compress further: stored as they are
                    archive.writestr(_zip_member(member, zipfile.ZIP_STORED), images[member].read_bytes())
            problems = check_import_zip(tmp, mode=mode, taxa=self.confirmed_taxa())
            if problems:
                raise EcoTaxaExportError(f"{path.name} would not import into EcoTaxa:\n  " + "\n  ".join(problems))

    def _summary(self, files: dict[str, list[str]], counts: Counter, unmapped: Counter) -> dict:
        notes = []
        if files["update"]:
            notes.append(f"{counts['update objects']} objects already in EcoTaxa are in update zips "
                         f"({self.out_dir / 'ecotaxa-update'}): import them into their project with the update "
                         f"option 'Update data including classification' (\"Cla\"); with 'Yes' EcoTaxa changes no "
                         f"classification. For another project, run with --ecotaxa-mode new")
        if files["new"]:
            notes.append("EcoTaxa shows every imported prediction with score 1.0; the model's score is in the "
                         "custom column object_score (the next classes in object_top<i>_label/_score)")
        if unmapped:
            total = sum(unmapped.values())
            left = counts["left out: unmapped label"] + counts["left out: unmapped (update mode)"]
            kept = "written by name only, without a category id" if self.unmapped_policy == "name" else \
                "written unclassified"
            fate = ", ".join(part for part in (f"{total - left} {kept}" if total > left else "",
                                               f"{left} left out" if left else "") if part)
            labels = ", ".join(f"{label} {n}" for label, n in unmapped.most_common(10))
            notes.append(f"{total} objects have labels with no EcoTaxa category confirmed by a taxon map or by "
                         f"labels read from EcoTaxa ({labels}): {fate}; {FIX_HINT}")
        all_files = files["new"] + files["update"]
        return {
            "writer": EcoTaxaWriter.name,
            "mode": self.mode,
            "files": all_files,
            "samples": len(all_files),
            "objects": counts["new objects"] + counts["update objects"],
            "new_objects": counts["new objects"],
            "images": counts["new images"],
            "update_objects": counts["update objects"],
            "classified": counts["classified"],
            "with_category_id": counts["with category id"],
            "unclassified": counts["unclassified"],
            "unmapped": dict(sorted(unmapped.items())),
            "unmapped_policy": self.unmapped_policy,
            "left_out": {k.split(": ", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("left out: ")},
            "converted_to_png": counts["converted to PNG"],
            "duplicates": counts["duplicates"],
            "taxon_map": self.taxon_map_path,
            "notes": notes,
        }


FIX_HINT = ("to fix: `plankton taxa --from EXPORT --model MODEL --out taxa.tsv` (add what it lists as unresolved by "
            "hand), then predict again with --taxon-map taxa.tsv --force")


def _column_type(column: str, rows: list[dict]) -> str:
    """`[f]` for a custom `object_*` column whose every value is a number (EcoTaxa makes it numeric), else `[t]`.

    The store keeps an export's values but not its types row; EcoTaxa reads types only for new custom object
    columns, and keeps custom sample/acquisition/process columns as text whatever the row says.
    """
    if not column.startswith("object_"):
        return "[t]"
    values = [str(row.get(column, "")).strip().lower() for row in rows]
    numbers = [v for v in values if v not in ("", "nan", "na")]
    try:
        return "[f]" if numbers and all(math.isfinite(float(v)) for v in numbers) else "[t]"
    except ValueError:
        return "[t]"
