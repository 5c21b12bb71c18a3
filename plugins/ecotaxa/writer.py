"""Predictions as EcoTaxa import zips (`ecotaxa` writer), following `reference/ecotaxa-format.md` §11 to the letter.

New objects (default, `ecotaxa_mode=new`): one zip per sample, `<out>/ecotaxa/<sample>.zip`, holding
`ecotaxa_<sample>.tsv` (UTF-8 with BOM, tab-separated, `[t]/[f]` types row) and the images next to it, written
byte for byte as stored (`<object_id>.<ext>`; a TIFF or BMP, which EcoTaxa refuses, is converted to PNG
losslessly). Each row carries `object_annotation_status = predicted` with `object_annotation_category`, or neither.
EcoTaxa ignores scores on import, so the top-1 probability and the top-k classes go into custom columns:
`object_score`, `object_label_auto` (the argmax class, useful when thresholds left the object unclassified) and
`object_top<i>_label` / `object_top<i>_score` for i = 2..k (k at most `MAX_TOP_K`, as text columns count against
EcoTaxa's 20).

Existing objects (`ecotaxa_mode=update`): `<out>/ecotaxa-update/<sample>.zip` with a TSV of `object_id`,
`object_annotation_status`, `object_annotation_category` and the types row, to import with update mode "Cla". Rows
without a category are left out, so an update never touches objects the model did not classify.

Categories: EcoTaxa resolves `object_annotation_category_id` before any name, so a label whose EcoTaxa category id
is known is written with it and imports without manual mapping. Ids come from the taxon map's third column
(`plankton taxa` writes one), else from the store the objects were ingested into (`run.options["store"]`): labels
of objects ingested from EcoTaxa keep `object_annotation_category_id` in their metadata, uvpec/DOI class folders
`Name__12345` keep `ecotaxa_id`, and a label read as `id:12345` is its own id; a label seen with two ids gets none.
A folder label `Name__12345` is written as category `Name` with id `12345`.
Names: the model's labels are mapped to EcoTaxa taxon names with a user file (`taxon_map=PATH`: one
`label<TAB>ecotaxa_name[<TAB>category_id]` or comma-separated per line; `#` comments and a `label` header line are
skipped). A label missing from the map and without a known id is never guessed: it is reported in the summary with
its count and its objects are written without status and category (they stay unclassified in EcoTaxa), or left out
with `unmapped=skip` (and always in update mode, which writes classified objects only). Without a map, labels are
written as they are (they may be EcoTaxa names already) and the summary says so. `unclassified` predictions (below
their class threshold) are written without status and category.

`sample_id` and `acq_id` are always filled: the sample (the IFCB bin, the EcoTaxa sample), else the object's source
folder, so EcoTaxa never invents `__DUMMY_ID__` parents. EcoTaxa's own `object_id` of an object is read through
`ecotaxa_object_id()` (one place to change when store ids stop being EcoTaxa's).

A batch may hold several samples and a sample may span batches, so rows and images are spooled per sample to a
hidden folder in OUT (`plankton_cli.spool`, removed at `close()` or `abort()`, or by the next run after a kill) and
each zip is built at `close()`: rows sorted by object_id (an object predicted twice keeps its last prediction),
members in fixed order with fixed timestamps, so the same predictions give the same bytes. Each zip is written under a
temporary name, checked with `checker.check_import_zip` (a problem raises `EcoTaxaExportError`), then renamed into
place.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
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
from plankton_cli.atomic import atomic_path
from plankton_cli.predictions import probability_matrix, top_k
from plankton_cli.spool import Spool
from plankton_cli.writers import UNCLASSIFIED, Prediction, PredictionRun
from plankton_cli.instruments import canonical_instrument
from plankton_plugins.ecotaxa.checker import check_import_zip
from plankton_plugins.ecotaxa.reader import NATIVE_ID
from plankton_plugins.ecotaxa.tsv import normalize_category
from plankton_plugins.ifcb.bins import parse_bin_id

MODES = ("new", "update")
UNMAPPED_POLICIES = ("omit", "skip")  # omit: write the object without status and category
MAX_TOP_K = 5
UNKNOWN_SAMPLE = "unknown-sample"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: re-running gives identical bytes
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"))
_EXTENSIONS = {"png": {".png"}, "jpg": {".jpg", ".jpeg"}, "gif": {".gif"}}


CATEGORY_ID_KEYS = ("object_annotation_category_id", "ecotaxa_id")  # objects' metadata keys holding the id
_ID_LABEL = re.compile(r"id:(\d+)")
_FOLDER_LABEL = re.compile(r"(?P<name>.+)__(?P<id>\d+)")  # uvpec / EcoTaxa DOI class folders: DisplayName__id


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


def store_category_ids(store_root: str | Path) -> dict[str, str]:
    """Label -> EcoTaxa category id for the labels of a store's objects that came from EcoTaxa (see module doc);
    labels seen with more than one id are left out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from plankton_cli.store import Store

    store = Store(store_root)
    if not store.files("objects"):
        return {}
    table = store.dataset("objects").to_table(columns=["label", "metadata"], filter=pc.field("label").is_valid())
    metadata = table["metadata"].combine_chunks()
    entries = pc.list_flatten(metadata)
    keep = pc.is_in(entries.field("key"), value_set=pa.array(CATEGORY_ID_KEYS, pa.string()))
    labels = pc.take(table["label"].combine_chunks().cast("string"), pc.list_parent_indices(metadata))
    seen: dict[str, set[str]] = {}
    for label, value in zip(labels.filter(keep).to_pylist(), entries.field("value").filter(keep).to_pylist()):
        number = _category_number(value)
        if number:
            seen.setdefault(label, set()).add(number)
    for label in pc.unique(table["label"].combine_chunks().cast("string")).to_pylist():
        match = _ID_LABEL.fullmatch(label)
        if match:
            seen.setdefault(label, set()).add(match[1])
    return {label: ids.pop() for label, ids in seen.items() if len(ids) == 1}


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
        self.mode = options.get("ecotaxa_mode", "new")
        self.unmapped_policy = options.get("unmapped", "omit")
        if self.mode not in MODES:
            raise ValueError(f"ecotaxa_mode must be one of {MODES}, not {self.mode!r}")
        if self.unmapped_policy not in UNMAPPED_POLICIES:
            raise ValueError(f"unmapped must be one of {UNMAPPED_POLICIES}, not {self.unmapped_policy!r}")
        self.run = run
        self.taxon_map_path = options.get("taxon_map")
        self.taxon_map = load_taxon_map(self.taxon_map_path) if self.taxon_map_path else None
        self.store_ids = store_category_ids(options["store"]) if options.get("store") else {}
        self.folder = out_dir / ("ecotaxa" if self.mode == "new" else "ecotaxa-update")
        self.k = max(1, min(run.top_k, MAX_TOP_K, len(run.classes)))
        self.version = run.package_version or plankton_cli.__version__
        self._spooled = Spool(out_dir, EcoTaxaWriter.name)  # beside the output, not in /tmp: see plankton_cli.spool
        self._spool = self._spooled.path
        self._samples: dict[str, Path] = {}  # sample name -> its spool folder
        self._seq = 0

    # -- write: one spooled row (and image) per prediction -----------------------------------------------------

    def write(self, batch: Sequence[Prediction]) -> None:
        if not batch:
            return
        order, scores = top_k(probability_matrix(batch, self.run), self.k)
        rows: dict[str, list[str]] = {}
        for p, indices, probabilities in zip(batch, order, scores):
            sample = sample_name(p)
            folder = self._sample_folder(sample)
            row = self._row(p, [self.run.classes[i] for i in indices], probabilities)
            if self.mode == "new" and p.image is not None:
                self._seq += 1
                row["_image"] = f"{self._seq:09d}.img"
                (folder / row["_image"]).write_bytes(p.image)
                row["_image_name"] = p.image_name
            rows.setdefault(sample, []).append(json.dumps(row))
        for sample, lines in rows.items():
            with open(self._samples[sample] / "rows.jsonl", "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

    def _sample_folder(self, sample: str) -> Path:
        if sample not in self._samples:
            folder = self._spool / f"{len(self._samples):06d}"
            folder.mkdir()
            self._samples[sample] = folder
        return self._samples[sample]

    def _category(self, label: str) -> tuple[str, Taxon | None]:
        """(kind, EcoTaxa taxon) where kind is classified, unclassified or unmapped."""
        if label == UNCLASSIFIED:
            return "unclassified", None
        mapped = (self.taxon_map or {}).get(label)
        if mapped is not None:
            # the store's id is the label's own category: it holds only when the map keeps the name
            same = mapped.name == label
            return "classified", Taxon(mapped.name, mapped.category_id or (self.store_ids.get(label) if same else None))
        folder = _FOLDER_LABEL.fullmatch(label)
        if folder:  # the folder name says both: EcoTaxa gets the display name and the id, not `Name__id`
            return "classified", Taxon(folder["name"], folder["id"])
        if label in self.store_ids:
            return "classified", Taxon(label, self.store_ids[label])
        return ("classified", Taxon(label)) if self.taxon_map is None else ("unmapped", None)

    def _row(self, p: Prediction, top_labels: list[str], top_scores: np.ndarray) -> dict:
        kind, taxon = self._category(p.label)
        row: dict = {"_kind": kind, "_label": p.label, "object_id": ecotaxa_object_id(p)}
        if taxon is not None:
            row["object_annotation_status"] = "predicted"
            row["object_annotation_category"] = taxon.name
            if taxon.category_id:
                row["object_annotation_category_id"] = taxon.category_id
        if self.mode == "update":
            return row
        sample = sample_name(p)
        when = p.acquired_at
        if when is not None:
            when = when.astimezone(UTC) if when.tzinfo else when  # naive times are taken as UTC
        instrument = canonical_instrument(p.instrument) if p.instrument else None
        row |= {
            "img_rank": "0",
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
        return row

    # -- close: one checked zip per sample -----------------------------------------------------------------------

    def columns(self, rows: list[dict]) -> list[tuple[str, str]]:
        """(name, type) of the TSV columns, in EcoTaxa's export order, for the rows of one sample."""
        with_ids = [("object_annotation_category_id", "[f]")] if any("object_annotation_category_id" in row
                                                                    for row in rows) else []
        if self.mode == "update":
            return [("object_id", "[t]"), ("object_annotation_status", "[t]"), ("object_annotation_category", "[t]"),
                    *with_ids]
        columns = [
            ("img_file_name", "[t]"), ("img_rank", "[f]"), ("object_id", "[t]"), ("object_lat", "[f]"),
            ("object_lon", "[f]"), ("object_date", "[t]"), ("object_time", "[t]"), ("object_depth_min", "[f]"),
            ("object_depth_max", "[f]"), ("object_annotation_status", "[t]"), ("object_annotation_category", "[t]"),
            *with_ids,
        ]  # fmt: skip
        if any("object_roi_number" in row for row in rows):
            columns.append(("object_roi_number", "[f]"))
        columns += [("object_score", "[f]"), ("object_label_auto", "[t]")]
        for i in range(2, self.k + 1):
            columns += [(f"object_top{i}_label", "[t]"), (f"object_top{i}_score", "[f]")]
        columns += [("sample_id", "[t]"), ("acq_id", "[t]"), ("acq_instrument", "[t]"), ("process_id", "[t]"),
                    ("process_software", "[t]"), ("process_model_hash", "[t]")]
        return columns

    def close(self) -> dict:
        counts: Counter = Counter()
        unmapped: Counter = Counter()
        files = []
        try:
            for sample in sorted(self._samples):
                path = self._write_sample(sample, self._samples[sample], counts, unmapped)
                if path is not None:
                    files.append(str(path))
        finally:
            self._spooled.remove()
        return self._summary(files, counts, unmapped)

    def abort(self) -> None:
        """Forget the spooled predictions (predict failed before `close()`)."""
        self._spooled.remove()

    def _write_sample(self, sample: str, spool: Path, counts: Counter, unmapped: Counter) -> Path | None:
        lines = (spool / "rows.jsonl").read_text(encoding="utf-8").splitlines()
        latest = {row["object_id"]: row for row in map(json.loads, lines)}  # the last prediction of each object
        counts["duplicates"] += len(lines) - len(latest)
        rows = []
        for object_id in sorted(latest):
            row = latest[object_id]
            counts[row["_kind"]] += 1
            counts["with category id"] += "object_annotation_category_id" in row
            if row["_kind"] == "unmapped":
                unmapped[row["_label"]] += 1
                if self.unmapped_policy == "skip":
                    counts["left out: unmapped label"] += 1
                    continue
            if self.mode == "update" and "object_annotation_category" not in row:
                counts[f"left out: {row['_kind']} (update mode)"] += 1
                continue
            if self.mode == "new" and "_image" not in row:
                counts["left out: no image"] += 1
                continue
            rows.append(row)
        if not rows:
            return None
        name = safe_name(sample)
        images = self._images(rows, spool, counts) if self.mode == "new" else {}
        columns = self.columns(rows)
        text = io.StringIO()
        writer = csv.writer(text, delimiter="\t", quotechar='"', lineterminator="\n")
        writer.writerow([column for column, _ in columns])
        writer.writerow([kind for _, kind in columns])
        for row in rows:
            writer.writerow([row.get(column, "") for column, _ in columns])
        tsv = codecs.BOM_UTF8 + text.getvalue().encode("utf-8")
        path = self.folder / f"{name}.zip"
        self._write_zip(path, f"ecotaxa_{name}.tsv", tsv, images)
        counts["objects"] += len(rows)
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
            row["img_file_name"] = safe_name(row["object_id"]) + suffix
            images[row["img_file_name"]] = source
        return images

    def _write_zip(self, path: Path, tsv_name: str, tsv: bytes, images: dict[str, Path]) -> None:
        with atomic_path(path, scratch=self._spool) as tmp:  # a killed run's temporary zip goes with its spool
            with zipfile.ZipFile(tmp, "w") as archive:
                archive.writestr(_zip_member(tsv_name, zipfile.ZIP_DEFLATED), tsv)
                for member in sorted(images):  # PNG and JPEG do not compress further: stored as they are
                    archive.writestr(_zip_member(member, zipfile.ZIP_STORED), images[member].read_bytes())
            problems = check_import_zip(tmp, mode=self.mode)
            if problems:
                raise EcoTaxaExportError(f"{path.name} would not import into EcoTaxa:\n  " + "\n  ".join(problems))

    def _summary(self, files: list[str], counts: Counter, unmapped: Counter) -> dict:
        notes = []
        if self.taxon_map is None:
            notes.append("no taxon map: model labels were written as EcoTaxa categories unchanged; EcoTaxa must "
                         "resolve each one (taxon name, display name or name<parent) or ask for a mapping at import")
        if unmapped:
            left_out = self.unmapped_policy == "skip" or self.mode == "update"
            fate = "left out" if left_out else "written without status and category"
            notes.append(f"{sum(unmapped.values())} objects have labels missing from the taxon map: {fate}")
        return {
            "writer": EcoTaxaWriter.name,
            "mode": self.mode,
            "files": files,
            "samples": len(files),
            "objects": counts["objects"],
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
