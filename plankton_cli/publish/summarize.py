"""Counts and concentrations per class, the numbers a monitoring station publishes (`plankton summarize`).

For one model (its predictions in `STORE/predictions`), per sample or day and per class:

- `count`: objects with that label after the model's per-class thresholds (`unclassified` is a class of its own,
  so the counts of a sample add up to its predicted objects); `count_auto`: objects whose argmax is that class.
  These are iRfcb's `classcountTB_above_optthresh` and `classcountTB` (`ifcb_summarize_class_counts` ->
  `summarize_TBclass` counts `class_name` and `class_name_auto` of each class file).
- `per_ml` = count / `ml_analyzed` (and `per_ml_auto`), `ml_analyzed` being the volume the store holds for each
  IFCB bin (objects' metadata key `ml_analyzed`, from the bin's header and ADC file). A day sums its bins' volumes;
  a sample without a volume gets empty concentrations, never a guess.
- `biovolume_um3_per_ml`: the summed `biovolume_um3` of the class's objects / `ml_analyzed`, when the store has a
  `features` dataset (`plankton features`; µm³ where the instrument's pixel size is known); absent otherwise.

`--by bin` summarises IFCB bins (other samples are counted and left out), `--by sample` every sample id, `--by day`
the UTC acquisition day (its `sample_id` is `YYYY-MM-DD`). Outputs in OUT (each file written atomically):

    counts/month=YYYY-MM/part-0.parquet   the long table, one Parquet file a month (`month=unknown`: samples
                                          without a time): `pd.read_parquet(OUT / "counts")`, or `read_counts(OUT)`
    counts.csv                            the long table: sample_id, class, count, ml_analyzed, per_ml, count_auto,
                                          per_ml_auto, biovolume_um3_per_ml, acquired_at, instrument, samples
    counts_wide.csv, per_ml_wide.csv      one row per sample, one column per class (as iRfcb and ifcb-analysis)
    plots/                                a time series per class with any count and `overview.png` stacked, of the
                                          30 days up to the latest sample
    by-month/YYYY-MM/                     that month's three CSV tables and `plots/overview.png`
    summary.json                          what the summary holds: model, grouping, months, which sample went into
                                          which group and which of the model's predictions files were read

The top-level CSV tables are the months' files joined as bytes (one header), so they cost a copy, not a formatting,
of what came before. A summary written before the months' Parquet files (one `counts.parquet` holding the whole table
and, in its metadata, what `summary.json` holds now) is split into them by its next run.

Incremental: a run reads the labels of the model's predictions files it has not read (the night's: found from the
store's committed list, `store/layout.py`), and reads predictions, objects and features only for new samples, from the
files whose sample or id ranges may hold them; the groups they fall into are computed again (a day that got a new
bin), every other row is kept as it was. It reads and writes only the months those groups fall in (their Parquet part,
CSV tables and overview plot; and any month whose files are missing), the months of the recent plots and the joined
tables; the other months' files are left as they are. With no new sample nothing is written. So a night costs the same
in a station's tenth year as in its first.

The outputs are one unit: `summary.json` is written last, after the months, the CSV tables and the plots, so it is the
commit point. A run killed between its files leaves the old `summary.json`, which lacks the new samples: the next run
finds them new again, drops whatever rows of their groups the killed run wrote and writes their months and every
joined table from the same rows, so the tables always end up agreeing with each other and with `summary.json`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.core.atomic import atomic_path, atomic_write_bytes
from plankton_cli.core.errors import DataError
from plankton_cli.train.model_info import ModelInfo
from plankton_cli.store import Store
from plankton_cli.store.layout import may_hold
from plankton_cli.core.writers import UNCLASSIFIED

log = logging.getLogger("plankton.summarize")

GROUPINGS = ("bin", "sample", "day")
SUMMARY = "summary.json"  # the commit point
COUNTS = "counts"  # the long table, a Parquet dataset partitioned by month
LEGACY_COUNTS = "counts.parquet"  # before the months: the whole table, what summary.json holds in its metadata
LEGACY_METADATA_KEY = b"plankton.summary"
FORMAT = 2
TABLES = ("counts.csv", "counts_wide.csv", "per_ml_wide.csv")
PARTITIONS = "by-month"
UNKNOWN = "unknown"  # the month of samples without a time
RECENT = pd.Timedelta(days=30)  # the span of the top-level plots, ending at the latest sample
COLUMNS = ["sample_id", "class", "count", "ml_analyzed", "per_ml", "count_auto", "per_ml_auto",
           "biovolume_um3_per_ml", "acquired_at", "instrument", "samples"]
_BIN_ID = re.compile(r"D\d{8}T\d{6}_IFCB\d{3}|IFCB\d_\d{4}_\d{3}_\d{6}")  # bins.parse_bin_id's shapes


@dataclass
class ModelRef:
    model_hash: str
    model_id: str
    classes: list[str]


@dataclass
class SummarizeResult:
    out_dir: str
    model_id: str
    by: str
    new_samples: int = 0
    groups_written: int = 0
    groups_kept: int = 0
    objects: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    biovolume: bool = False
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def model_info(model_path: Path) -> ModelRef:
    """Hash, id and classes of a fine-tuned model file (or its folder), as predict records them."""
    from plankton_cli.infer.predict import file_hash

    model_path = Path(model_path)
    weights = model_path / "model.safetensors" if model_path.is_dir() else model_path.with_suffix(".safetensors")
    info = ModelInfo.load(weights)
    model_id = info.extra.get("model_id") or f"{weights.parent.parent.name}/{weights.parent.name}"
    return ModelRef(file_hash(weights), model_id, list(info.classes))


def summarize(store: Store, model_path: Path, by: str, out_dir: Path, *, plots: bool = True,
              rebuild: bool = False) -> SummarizeResult:
    """Write (or bring up to date) the summary of `model_path`'s predictions in `store` to `out_dir`."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {GROUPINGS}, not {by!r}")
    model = model_info(model_path)
    out_dir = Path(out_dir)
    result = SummarizeResult(str(out_dir), model.model_id, by)
    mine = store.stats("predictions", lambda stats: may_hold(stats, "model_hash", [model.model_hash]))
    if not mine:  # not "no new samples": most likely the wrong store
        raise DataError(f"store {store.root} holds no predictions by model {model.model_id}: run `plankton predict "
                        f"--model {model_path} --to store` first, or give the store it predicted into with --store "
                        f"DIR or $PLANKTON_STORE", path=store.root)
    state = _state(out_dir, model, by, rebuild)
    group_of, done = state["groups"], set(state["predictions_files"])
    fresh_files = [path for path in mine if str(path.relative_to(store.root)) not in done]
    predictions = _predictions(store, fresh_files, model.model_hash, by, result.skipped)
    read = {str(path.relative_to(store.root)) for path in mine} & (done | {str(p.relative_to(store.root))
                                                                          for p in fresh_files})
    new = sorted(set(predictions["sample_id"].unique()) - set(group_of))
    result.new_samples = len(new)
    if not new:
        result.groups_kept = len(set(group_of.values()))
        return result
    samples = _samples(store, new)
    for sample in new:
        group_of[sample] = sample if by != "day" else _day(samples.loc[sample, "acquired_at"])
    touched = {group_of[s] for s in new}
    members = [s for s, g in group_of.items() if g in touched]
    if by == "day":  # old bins of a touched day: their volume and time are needed again
        samples = pd.concat([samples, _samples(store, sorted(set(members) - set(new)))])
    if set(members) != set(new):  # old samples of a touched group (a day): their predictions, from their files
        old = sorted(set(members) - set(new))
        files = [path for path, stats in mine.items() if may_hold(stats, "sample_id", old)]
        predictions = pd.concat([predictions, _predictions(store, files, model.model_hash, by, {})]).drop_duplicates(
            "object_id", keep="first")
    rows = predictions[predictions["sample_id"].isin(members)].copy()
    rows["group"] = rows["sample_id"].map(group_of)
    biovolume = _biovolume(store, rows["object_id"])
    result.biovolume = biovolume is not None
    if biovolume is not None:
        rows["biovolume"] = rows["object_id"].map(biovolume)
    fresh = _counts(rows, samples.loc[members], group_of, model.classes, by, biovolume is not None)
    result.groups_written, result.groups_kept = len(touched), len(set(group_of.values())) - len(touched)
    result.objects = int(len(predictions))
    state.update(groups=dict(sorted(group_of.items())), predictions_files=sorted(read))
    result.files = _write(out_dir, fresh, touched, model, state, plots, rebuild)
    log.info("summarize: %d new samples, %d rows of %d groups written", len(new), len(fresh), len(touched))
    return result


def _predictions(store: Store, files: list[Path], model_hash: str, by: str, skipped: Counter | dict) -> pd.DataFrame:
    """object_id, sample_id, label, label_auto, instrument of this model's predictions in `files` (samples only)."""
    columns = ["object_id", "sample_id", "label", "label_auto", "instrument"]
    table = store.dataset("predictions", files).to_table(columns=columns, filter=pc.field("model_hash") == model_hash)
    frame = table.to_pandas()
    for column in ("sample_id", "label", "label_auto", "instrument"):
        frame[column] = frame[column].astype(object)
    reasons = pd.Series(None, index=frame.index, dtype=object)
    reasons[frame["sample_id"].isna()] = "no sample id"
    if by == "bin":
        not_bin = frame["sample_id"].notna() & ~frame["sample_id"].astype(str).str.fullmatch(_BIN_ID.pattern)
        reasons[not_bin] = "not an IFCB bin"
    for reason, n in reasons.value_counts().items():
        skipped[reason] = int(n)
        log.warning("summarize: %d predictions left out: %s", n, reason)
    return frame[reasons.isna()].reset_index(drop=True)


def _state(out_dir: Path, model: ModelRef, by: str, rebuild: bool) -> dict:
    """What the summary in `out_dir` holds (`summary.json`): {"format", "model_hash", "model_id", "by", "classes",
    "months": [...], "groups": {sample: group}, "predictions_files": [...]}; empty with `rebuild` or no summary. A
    summary from before the months (one `counts.parquet`) is split into them here, once (`_upgrade`)."""
    empty = {"format": FORMAT, "model_hash": model.model_hash, "model_id": model.model_id, "by": by,
             "classes": model.classes, "months": [], "groups": {}, "predictions_files": []}
    path = out_dir / SUMMARY
    if rebuild:
        return empty
    if path.exists():
        state = json.loads(path.read_text())
    elif (out_dir / LEGACY_COUNTS).exists():
        path = out_dir / LEGACY_COUNTS
        state = _upgrade(out_dir, empty)
    else:
        return empty
    if state.get("model_hash") != model.model_hash or state.get("by") != by:
        raise ValueError(f"{path} summarises model {state.get('model_id')!r} by {state.get('by')!r}, not "
                         f"{model.model_id!r} by {by!r}: use another --out, or --rebuild to replace it")
    return state


def _upgrade(out_dir: Path, empty: dict) -> dict:
    """Split a summary's `counts.parquet` (the whole table, and in its metadata what `summary.json` holds) into the
    months' Parquet files and `summary.json`, then remove it. Killed midway, the next run does it again."""
    table = pq.read_table(out_dir / LEGACY_COUNTS)
    recorded = json.loads((table.schema.metadata or {}).get(LEGACY_METADATA_KEY, b"{}"))
    frame = table.replace_schema_metadata(None).to_pandas()
    # a `--by bin`/`sample` summary may keep no groups: each of its samples is its own
    groups = recorded.get("groups") or {s: s for s in frame["sample_id"].unique()}
    state = {**empty, **{k: v for k, v in recorded.items() if k in empty}, "groups": groups,
             "predictions_files": recorded.get("predictions_files", [])}
    if state["model_hash"] != empty["model_hash"] or state["by"] != empty["by"]:
        return state  # not this model's or grouping's: `_state` says so, nothing is changed
    months = _months(frame["acquired_at"])
    state["months"] = [_month_name(m) for m in np.unique(months)]
    for month in state["months"]:
        _write_part(out_dir, month, frame[_in_month(months, month)])
    atomic_write_bytes(out_dir / SUMMARY, json.dumps(state).encode())
    (out_dir / LEGACY_COUNTS).unlink()
    log.info("summarize: %s split into %d months (%s/month=YYYY-MM/) and %s", out_dir / LEGACY_COUNTS,
             len(state["months"]), out_dir / COUNTS, SUMMARY)
    return state


def read_counts(out_dir: Path, samples: list[str] | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """The summary's long table (its `columns`), in order; with `samples`, their rows only, read from the newest
    month back until all are found (a night's samples are in the last month or two: `plankton report`)."""
    out_dir = Path(out_dir)
    if (out_dir / LEGACY_COUNTS).exists() and not (out_dir / SUMMARY).exists():  # from before the months
        parts = [out_dir / LEGACY_COUNTS]
    else:
        months = sorted((p.name.removeprefix("month=") for p in (out_dir / COUNTS).glob("month=*")), key=_month_order)
        parts = [_part(out_dir, m) for m in months]
    tables: list[pa.Table] = []
    wanted = None if samples is None else set(samples)
    for part in reversed(parts):
        filters = None if wanted is None else pc.field("sample_id").isin(sorted(wanted))
        table = pq.read_table(part, columns=columns, filters=filters)
        tables.insert(0, table.replace_schema_metadata(None))
        if wanted is not None:
            wanted -= set(table["sample_id"].to_pylist())
            if not wanted:
                break
    if not tables:
        return pd.DataFrame(columns=columns or COLUMNS)
    return pa.concat_tables(tables).to_pandas()


def _samples(store: Store, sample_ids: list[str]) -> pd.DataFrame:
    """acquired_at (earliest object) and ml_analyzed per sample, indexed by sample_id (NaT/NaN where unknown)."""
    frame = pd.DataFrame({"acquired_at": pd.Series(pd.NaT, index=sample_ids, dtype="datetime64[us, UTC]"),
                          "ml_analyzed": np.nan})
    if not sample_ids:
        return frame
    wanted = sorted(sample_ids)
    files = list(store.stats("objects", lambda stats: may_hold(stats, "sample_id", wanted)))
    table = store.dataset("objects", files).to_table(
        columns=["sample_id", "acquired_at", "metadata"],
        filter=pc.field("sample_id").isin(pa.array(sample_ids, pa.string())))
    samples = table["sample_id"].combine_chunks().cast(pa.string())
    first = pa.table({"sample_id": samples, "acquired_at": table["acquired_at"]}).group_by("sample_id").aggregate(
        [("acquired_at", "min")]).to_pandas().set_index("sample_id")["acquired_at_min"]
    frame.loc[first.index, "acquired_at"] = first
    # ml_analyzed is a bin's value, carried by every object of the bin: any one of them will do
    metadata = table["metadata"].combine_chunks()
    entries = pc.list_flatten(metadata)
    hit = pc.equal(entries.field("key"), "ml_analyzed")
    owners = pc.take(samples, pc.filter(pc.list_parent_indices(metadata), hit))
    volumes = pd.Series(pd.to_numeric(entries.field("value").filter(hit).to_pandas(), errors="coerce").to_numpy(),
                        index=owners.to_pylist())
    volumes = volumes[~volumes.index.duplicated()]
    frame.loc[volumes.index, "ml_analyzed"] = volumes
    return frame


def _day(when) -> str:
    return "unknown-day" if pd.isna(when) else pd.Timestamp(when).strftime("%Y-%m-%d")


def _biovolume(store: Store, object_ids: pd.Series) -> dict[str, float] | None:
    """object_id -> biovolume (µm³) from STORE/features, or None when the store has no features."""
    if not store.files("features"):
        return None
    wanted = sorted(object_ids.unique())
    files = list(store.stats("features", lambda stats: may_hold(stats, "object_id", wanted)))
    table = store.dataset("features", files).to_table(
        columns=["object_id", "biovolume_um3"],
        filter=pc.field("object_id").isin(pa.array(object_ids.unique(), pa.string())))
    return dict(zip(table["object_id"].to_pylist(), table["biovolume_um3"].to_pylist()))


def _counts(rows: pd.DataFrame, samples: pd.DataFrame, group_of: dict[str, str], classes: list[str], by: str,
            with_biovolume: bool) -> pd.DataFrame:
    """Long-form rows for every group in `rows` x every class (zeros included, as the wide tables need them)."""
    samples = samples[~samples.index.duplicated()].copy()
    samples["group"] = samples.index.map(group_of)
    groups = samples.groupby("group").agg(
        ml_analyzed=("ml_analyzed", lambda v: v.sum() if v.notna().all() else np.nan),
        acquired_at=("acquired_at", "min"), samples=("ml_analyzed", "size"))
    if by == "day":  # a day's row is dated at its start
        groups["acquired_at"] = [pd.Timestamp(day, tz="UTC") if day != "unknown-day" else pd.NaT
                                 for day in groups.index]
    all_classes = [*classes, UNCLASSIFIED]
    index = pd.MultiIndex.from_product([sorted(rows["group"].unique()), all_classes], names=["sample_id", "class"])
    count = rows.groupby(["group", "label"]).size()
    count_auto = rows.groupby(["group", "label_auto"]).size()
    out = pd.DataFrame(index=index)
    out["count"] = count.reindex(index, fill_value=0).to_numpy()
    out["count_auto"] = count_auto.reindex(index, fill_value=0).to_numpy()
    out = out.reset_index()
    info = groups.reindex(out["sample_id"])
    out["ml_analyzed"] = info["ml_analyzed"].to_numpy()
    out["per_ml"] = out["count"] / out["ml_analyzed"]
    out["per_ml_auto"] = out["count_auto"] / out["ml_analyzed"]
    if with_biovolume:
        summed = rows.groupby(["group", "label"])["biovolume"].sum(min_count=1)
        out["biovolume_um3_per_ml"] = summed.reindex(index).fillna(0.0).to_numpy() / out["ml_analyzed"]
    else:
        out["biovolume_um3_per_ml"] = np.nan
    out["acquired_at"] = info["acquired_at"].to_numpy()
    instruments = rows.groupby("group")["instrument"].agg(lambda v: "+".join(sorted(set(v.dropna()))))
    out["instrument"] = instruments.reindex(out["sample_id"]).to_numpy()
    out["samples"] = info["samples"].to_numpy().astype(np.int64)
    out["acquired_at"] = pd.to_datetime(out["acquired_at"], utc=True)
    return out[COLUMNS]


def _write(out_dir: Path, fresh: pd.DataFrame, touched: set[str], model: ModelRef, state: dict, plots: bool,
           rebuild: bool) -> list[str]:
    """Put the rows of the `touched` groups (`fresh`) into their months (with `rebuild`, in place of what the months
    held), write what changed, then `summary.json`."""
    order = {name: i for i, name in enumerate([*model.classes, UNCLASSIFIED])}

    def ordered(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values(["acquired_at", "sample_id", "class"], key=lambda s: s.map(order) if s.name == "class"
                                 else s, na_position="last", kind="stable").reset_index(drop=True)

    fresh_months = _months(fresh["acquired_at"])
    night = [_month_name(m) for m in np.unique(fresh_months)]
    state["months"] = months = sorted(set(state["months"]) | set(night), key=_month_order)
    files: list[Path] = []
    tables: dict[str, pd.DataFrame] = {}
    for month in months:
        # A month is written again when the night touched it, or when its files are missing (a summary written
        # before the partitions, or a run killed while writing them); every other month keeps its files.
        if month in night:
            part = _part(out_dir, month)
            old = pq.read_table(part).to_pandas() if part.exists() and not rebuild else fresh.iloc[:0]
            kept, rows = old[~old["sample_id"].isin(touched)], ordered(fresh[_in_month(fresh_months, month)])
            if len(kept) and kept["acquired_at"].notna().all() and rows["acquired_at"].min() > kept["acquired_at"].max():
                table = pd.concat([kept, rows], ignore_index=True)  # the night after the rest, which is in order
            else:
                table = ordered(pd.concat([kept, rows], ignore_index=True))
            files.append(_write_part(out_dir, month, table))
        elif not all((out_dir / PARTITIONS / month / name).exists() for name in TABLES):
            table = pq.read_table(_part(out_dir, month)).to_pandas()
        else:
            continue
        tables[month] = table
        files += _write_partition(table, out_dir / PARTITIONS / month, plots)
    for name in TABLES:  # the whole tables: the months' files joined as bytes (no parsing, no formatting)
        with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as joined:
            for i, month in enumerate(months):
                with open(out_dir / PARTITIONS / month / name, "rb") as part_file:
                    if i:
                        part_file.readline()  # one header
                    shutil.copyfileobj(part_file, joined)
        files.append(out_dir / name)
    if plots:
        files += _plot(_recent(out_dir, months, tables), out_dir / "plots", per_class=True)
    for folder in (out_dir / COUNTS).glob("month=*"):  # months no longer summarised (after --rebuild)
        if folder.name.removeprefix("month=") not in months:
            shutil.rmtree(folder)
    # Last: what it records is what the next run takes as done (see the module doc)
    atomic_write_bytes(out_dir / SUMMARY, json.dumps(state).encode())
    (out_dir / LEGACY_COUNTS).unlink(missing_ok=True)  # a summary from before the months, rebuilt
    return [str(f) for f in [out_dir / SUMMARY, *files]]


def _recent(out_dir: Path, months: list[str], tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The rows of the 30 days up to the latest sample, from the last month or two whatever the summary's span."""
    timed = [m for m in months if m != UNKNOWN]
    if not timed:
        return pd.DataFrame(columns=COLUMNS)

    def rows(month: str) -> pd.DataFrame:
        if month not in tables:
            tables[month] = pq.read_table(_part(out_dir, month)).to_pandas()
        return tables[month]

    latest = rows(timed[-1])["acquired_at"].max()
    first = str(np.datetime64((latest - RECENT).tz_convert("UTC").tz_localize(None), "M"))
    recent = pd.concat([rows(m) for m in timed if m >= first], ignore_index=True)
    return recent[recent["acquired_at"] > latest - RECENT]


def _part(out_dir: Path, month: str) -> Path:
    """A month's Parquet file of the long table (hive-partitioned by month: `pd.read_parquet(OUT / "counts")`)."""
    return out_dir / COUNTS / f"month={month}" / "part-0.parquet"


def _write_part(out_dir: Path, month: str, table: pd.DataFrame) -> Path:
    with atomic_path(_part(out_dir, month)) as tmp:
        pq.write_table(pa.Table.from_pandas(table[COLUMNS], preserve_index=False), tmp, compression="zstd")
    return _part(out_dir, month)


def _months(acquired_at: pd.Series) -> np.ndarray:
    """Each row's UTC month (numpy datetime64[M], NaT without a time): rows are compared as numbers, and only the
    distinct months are named (`_month_name`)."""
    return acquired_at.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[M]")


def _month_name(month: np.datetime64) -> str:
    """A month's partition: `YYYY-MM`, or `unknown` for rows without a time."""
    return UNKNOWN if np.isnat(month) else str(month)


def _in_month(months: np.ndarray, name: str) -> np.ndarray:
    return np.isnat(months) if name == UNKNOWN else months == np.datetime64(name, "M")


def _month_order(name: str) -> tuple[bool, str]:
    return name == UNKNOWN, name  # in time, samples without a time last


def _write_partition(table: pd.DataFrame, folder: Path, plots: bool) -> list[Path]:
    """One month's three tables and (with `plots`) its plots, in `folder`."""
    # Rounded floats: pandas writes them at C speed, a float_format would format each value in Python.
    csv = table.assign(acquired_at=table["acquired_at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).round(6)
    files = []
    for name, frame in zip(TABLES, (csv, _wide(csv, "count"), _wide(csv, "per_ml"))):
        with atomic_path(folder / name) as tmp:
            frame.to_csv(tmp, index=False)
        files.append(folder / name)
    if plots and table["acquired_at"].notna().any():  # a figure costs ~0.1 s whatever it shows: one a month
        files += _plot(table, folder / "plots", per_class=False)
    return files


def _plot(table: pd.DataFrame, folder: Path, per_class: bool) -> list[Path]:
    """`plot_summary` of `table` into `folder`, removing the plots of classes no longer in it."""
    try:
        from plankton_cli.publish.summary_plots import plot_summary
    except ImportError as exc:  # matplotlib comes with the [train] extra; the tables do not need it
        log.warning("summarize: no plots (%s); install plankton-cli[train] for them", exc)
        return []
    written = plot_summary(table, folder, per_class=per_class) if len(table) else []
    for old in set(folder.glob("*.png")) - set(written):
        old.unlink()
    return written


def _wide(long: pd.DataFrame, value: str) -> pd.DataFrame:
    """One row per sample (sample_id, acquired_at, ml_analyzed), one column per class, in the long table's order."""
    keys = long.drop_duplicates("sample_id").set_index("sample_id")[["acquired_at", "ml_analyzed"]]
    wide = long.pivot(index="sample_id", columns="class", values=value)
    wide = wide[list(dict.fromkeys(long["class"]))]
    wide.columns.name = None
    return keys.join(wide).loc[keys.index].reset_index()
