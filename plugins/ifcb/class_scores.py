"""Class scores per IFCB bin, as the HDF5 files IFCB Dashboard, iRfcb and ClassiPyR read (`ifcb-h5` writer).

One `<bin>_class.h5` per bin under `OUT/ifcb-h5/`, the folder to point IFCB Dashboard's `class_scores` data
directory (version 3) at. V2 bins go to `D<year>/D<yyyymmdd>/`, V1 bins to `D<year>/D<year>_<doy>/`: pyifcb v1.3.0's
`ClassScoresDirectory(path, 3)` (what the Dashboard calls) looks in `D<year>/D<year>_<doy>/` first, then descends
only into folders whose name is a substring of the file name, which `D20120128` is not for `IFCB5_2012_028_...`.
The file is class_scores v3 (`output_scores`, `class_labels`, `roi_numbers`: what the Dashboard needs) extended as
nodc-sweden/ifcb-pytorch-classify `hdf5_output.py` and iRfcb `ifcb_save_classification()` write it
(`reference/ifcb-format.md` §11):

| dataset           | dtype / shape                | meaning                                           |
|-------------------|------------------------------|---------------------------------------------------|
| `output_scores`   | float64, N x C               | softmax per ROI                                   |
| `class_labels`    | ASCII strings, C             | class names (pyifcb decodes them as ASCII)        |
| `roi_numbers`     | int32, N, ascending          | target numbers                                    |
| `class_name`      | ASCII strings, N             | label after per-class thresholds, `unclassified`  |
| `class_name_auto` | ASCII strings, N             | argmax label                                      |
| `thresholds`      | float64, C                   | per-class thresholds, NaN where none is set       |
| `classifier_name` | variable-length UTF-8, (1,)  | a one-element array, as both reference writers    |
|                   |                              | produce it (hdf5r's `$read()` returns the string) |

Strings are ASCII byte strings as in the real files (iRfcb and ClassiPyR read them too). A non-ASCII label is
transliterated (`µm` -> `um`), a warning names it, and the original labels are kept in the `class_labels`
dataset's `original_labels` attribute (JSON). Arrays are gzip-compressed in chunks, like the reference files.
Root attributes `model_id`, `model_hash` and `software` record provenance. Predictions whose sample is not an IFCB
bin are counted and skipped. A bin may span batches, so each bin's scores are spooled to a hidden folder in OUT
(`plankton_cli.core.spool`) and its file is written at `close()` (to a temporary name, then renamed), sorted by ROI
number; a ROI predicted twice keeps its last prediction.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from plankton_cli.core.atomic import atomic_path
from plankton_cli.core.spool import Spool
from plankton_cli.core.writers import Prediction, PredictionRun
from plankton_plugins.ifcb.bins import BinId, parse_bin_id

FOLDER = "ifcb-h5"
log = logging.getLogger("plankton.writers.ifcb-h5")
_ASCII_FALLBACKS = str.maketrans({"µ": "u", "μ": "u", "ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O"})


def class_file(out_dir: Path, bin_id: BinId) -> Path:
    """`<out_dir>/ifcb-h5/D<year>/<day folder>/<bin>_class.h5`: `D<yyyymmdd>` for V2 bins, `D<year>_<doy>` for V1
    (where pyifcb's lookup finds them; year and day from the bin id, UTC)."""
    day = bin_id.acquired_at
    folder = f"D{day:%Y%m%d}" if bin_id.schema == "v2" else f"D{day:%Y}_{day:%j}"
    return Path(out_dir) / FOLDER / f"D{day:%Y}" / folder / f"{bin_id.bin_id}_class.h5"


def ascii_label(label: str) -> str:
    """`label` in ASCII: accents dropped, `µ` as `u`, anything else without an ASCII form as `_`."""
    decomposed = unicodedata.normalize("NFKD", label.translate(_ASCII_FALLBACKS)).translate(_ASCII_FALLBACKS)
    return "".join(c if c.isascii() else ("" if unicodedata.combining(c) else "_") for c in decomposed)


def _ascii(values: Sequence[str]) -> np.ndarray:
    return np.array([ascii_label(v).encode("ascii") for v in values], dtype=object)


def roi_number(prediction: Prediction, bin_id: BinId) -> int | None:
    """The target number: `source_row`, else the `_<digits>` suffix of an object id `<bin>_<roi>`."""
    if prediction.source_row is not None:
        return int(prediction.source_row)
    match = re.fullmatch(rf"{re.escape(bin_id.bin_id)}_(\d+)", prediction.object_id)
    return int(match[1]) if match else None


def write_class_file(path: Path, scores: np.ndarray, class_labels: Sequence[str], roi_numbers: np.ndarray,
                     class_name: Sequence[str], class_name_auto: Sequence[str], thresholds: np.ndarray,
                     classifier_name: str, attrs: dict[str, str] | None = None, scratch: Path | None = None
                     ) -> None:
    """Write one extended-v3 class file atomically (temporary name in the same folder, or in `scratch`, then
    rename)."""
    n, c = scores.shape
    if len(class_labels) != c or len(thresholds) != c or not (len(roi_numbers) == len(class_name) ==
                                                               len(class_name_auto) == n):
        raise ValueError(f"inconsistent class file contents for {path.name}")
    text = h5py.string_dtype("ascii")  # variable-length ASCII, as the reference files and pyifcb's decoder
    packed = {"compression": "gzip", "compression_opts": 4, "chunks": True}
    with atomic_path(path, scratch=scratch) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("output_scores", data=scores.astype(np.float64), **packed)
        labels = f.create_dataset("class_labels", data=_ascii(class_labels), dtype=text)
        if any(not label.isascii() for label in class_labels):
            labels.attrs["original_labels"] = json.dumps(list(class_labels), ensure_ascii=False)
        f.create_dataset("roi_numbers", data=roi_numbers.astype(np.int32), **packed)
        f.create_dataset("class_name", data=_ascii(class_name), dtype=text, **packed)
        f.create_dataset("class_name_auto", data=_ascii(class_name_auto), dtype=text, **packed)
        f.create_dataset("thresholds", data=np.asarray(thresholds, np.float64))
        f.create_dataset("classifier_name", data=_ascii([classifier_name]), dtype=text)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


class IFCBClassScoresWriter:
    name = "ifcb-h5"
    description = ("IFCB Dashboard class scores (<bin>_class.h5, v3 + thresholds and labels) per IFCB bin, under "
                   "OUT/ifcb-h5 (point the Dashboard's class_scores v3 directory there)")

    def open(self, out_dir: Path, run: PredictionRun) -> IFCBClassScoresSession:
        return IFCBClassScoresSession(Path(out_dir), run)


class IFCBClassScoresSession:
    def __init__(self, out_dir: Path, run: PredictionRun):
        self.out_dir = out_dir
        self.run = run
        self.n_classes = len(run.classes)
        self._spooled = Spool(out_dir, IFCBClassScoresWriter.name)  # beside the output, not in /tmp
        self._spool = self._spooled.path
        self._bins: dict[str, BinId] = {}
        self.skipped: Counter = Counter()
        for label in run.classes:
            if not label.isascii():
                log.warning("class label %r is not ASCII: written as %r in class files (the original is kept in "
                            "class_labels' original_labels attribute)", label, ascii_label(label))

    def write(self, batch: Sequence[Prediction]) -> None:
        by_bin: dict[str, list[tuple[int, Prediction]]] = {}
        for p in batch:
            bin_id = parse_bin_id(p.sample_id or "")
            if bin_id is None:
                self.skipped["not an IFCB bin"] += 1
                continue
            roi = roi_number(p, bin_id)
            if roi is None:
                self.skipped["no ROI number"] += 1
                continue
            self._bins[bin_id.bin_id] = bin_id
            by_bin.setdefault(bin_id.bin_id, []).append((roi, p))
        for name, items in by_bin.items():
            scores = np.stack([np.asarray(p.probabilities, np.float32).reshape(-1) for _, p in items])
            if scores.shape[1] != self.n_classes:
                raise ValueError(f"predictions have {scores.shape[1]} scores but the run has {self.n_classes} classes")
            with open(self._spool / f"{name}.f32", "ab") as f:
                f.write(scores.tobytes())
            with open(self._spool / f"{name}.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps([roi, p.label, p.label_auto]) + "\n" for roi, p in items)

    def close(self) -> dict:
        thresholds = (np.full(self.n_classes, np.nan) if self.run.thresholds is None
                      else np.asarray(self.run.thresholds, np.float64))
        attrs = {"model_id": self.run.model_id, "model_hash": self.run.model_hash,
                 "software": f"plankton-cli {self.run.package_version}".strip()}
        files, rois, duplicates = [], 0, 0
        try:
            for name in sorted(self._bins):
                scores = np.fromfile(self._spool / f"{name}.f32", np.float32).reshape(-1, self.n_classes)
                rows = [json.loads(line) for line in (self._spool / f"{name}.jsonl").read_text("utf-8").splitlines()]
                last = {row[0]: i for i, row in enumerate(rows)}  # ROI number -> its last prediction
                duplicates += len(rows) - len(last)
                order = [last[roi] for roi in sorted(last)]
                path = class_file(self.out_dir, self._bins[name])
                # the temporary file in the spool: a killed run's goes with it (see plankton_cli.core.spool)
                write_class_file(
                    path, scores[order], self.run.classes, np.array(sorted(last), np.int32),
                    [rows[i][1] for i in order], [rows[i][2] for i in order], thresholds,
                    self.run.classifier_name, attrs, scratch=self._spool,
                )
                files.append(str(path))
                rois += len(order)
        finally:
            self._spooled.remove()
        return {"writer": IFCBClassScoresWriter.name, "files": files, "bins": len(files), "rois": rois,
                "duplicates": duplicates, "skipped": dict(self.skipped)}

    def abort(self) -> None:
        """Forget the spooled scores (predict failed before `close()`)."""
        self._spooled.remove()
