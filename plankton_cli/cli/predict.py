"""`plankton predict`."""

from __future__ import annotations

import logging
from datetime import UTC
from pathlib import Path

import click

from plankton_cli.cli.fanout import FANOUT_HELP, fanout_options
from plankton_cli.cli.options import require_store, Command, json_option, lock_timeout_option, store_option
from plankton_cli.cli.output import describe, emit_json

log = logging.getLogger("plankton.predict")


@click.command(cls=Command, epilog="""\b
Examples:
  # every stored object not yet predicted by this model, into the store and EcoTaxa zips
  plankton predict --model runs/ft/fold-0/model.safetensors --to store --to ecotaxa --out preds/
  # a night's IFCB bins straight from disk, into IFCB Dashboard class files (v3 h5)
  plankton predict --model model.safetensors /data/ifcb/D20240101 --to ifcb-h5 --out /data/classified
  # EcoTaxa categories through a taxon map (`plankton taxa` builds it from an export); labels it does
  # not confirm are left unclassified and reported (--strict: refused)
  plankton predict --model model.safetensors --to ecotaxa --taxon-map taxa.tsv --out preds/
  # nightly, from cron: exit 75 if another writer holds the store past 10 minutes; the predictions made
  # are kept in the store and the next run stores them without computing them again
  plankton predict --model model.safetensors --to store --lock-timeout 600
  # the store's objects in 2 processes here, or in 16 GPU tasks of a SLURM job array (store and --out on a
  # shared file system); either way one commit, and the file outputs written here
  plankton predict --model m.safetensors --to store --to ifcb-h5 --out classified/ --workers 2
  plankton predict --model m.safetensors --store /shared/store --to store --backend slurm --shards 16 --time 1:00:00
  # a station's 2 CPU cores: a distilled student (`plankton distill`), int8 Linear layers (the default on CPU)
  plankton predict --model runs/student/model.safetensors --threads 2 --to ifcb-h5 --out classified/

Writers (--to): store, parquet, csv, embeddings, ecotaxa, ifcb-h5, or any installed writer plugin.
ifcb-h5 writes OUT/ifcb-h5/D<year>/D<yyyymmdd>/<bin>_class.h5 (V1 bins: D<year>/D<year>_<doy>/):
point IFCB Dashboard's class_scores data directory (version 3) at OUT/ifcb-h5.

Exit codes: 0 done, 2 usage error, 65 --strict and a label without a confirmed EcoTaxa category,
73 OUT or an output in it cannot be created, 75 the store is locked by another writer (or a
shard failed: nothing committed). With --to store, predictions are kept on 73 and 75: the next
run writes the outputs and stores them without predicting again.

Fan-out predicts the store's objects (not SOURCES), each shard a share of its row groups,
with --threads (default: the CPUs shared between --workers, or --cpus-per-task) each.
--devices/--num-nodes are gone: use --workers or --shards.

""" + FANOUT_HELP)
@click.argument("sources", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="A fine-tuned model: model.safetensors (with model.json beside it) or its folder.")
@click.option("--to", "to", multiple=True, default=["store"], show_default=True,
              help="Writer plugin (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("predictions"),
              show_default=True, help="Folder for file writers (EcoTaxa zips, h5 files, Parquet, CSV).")
@click.option("--format", "fmt", default="auto", show_default=True, help="Reader for SOURCES (see `plankton plugins`).")
@click.option("--instrument", help="Only objects of this instrument (store input), or the instrument of SOURCES.")
@click.option("--since", type=click.DateTime(), help="Only objects acquired on or after this date (UTC).")
@click.option("--force", is_flag=True, help="Predict again objects this model already predicted.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="How many labels and scores to keep per object.")
@click.option("--taxon-map", type=click.Path(exists=True, dir_okay=False),
              help="EcoTaxa writer: TSV/CSV mapping our labels to EcoTaxa taxon names [and category ids] "
                   "(`plankton taxa` builds one).")
@click.option("--ecotaxa-mode", type=click.Choice(["auto", "new", "update"]), default="auto", show_default=True,
              help="EcoTaxa writer: auto = objects read from EcoTaxa to update zips (import with the update option "
                   "\"Cla\"), the others to zips of new objects with images; new or update: all one way.")
@click.option("--strict", is_flag=True,
              help="EcoTaxa writer: refuse to run (exit 65) when a model label has no EcoTaxa category confirmed by "
                   "--taxon-map or by labels read from EcoTaxa, instead of leaving those objects unclassified.")
@click.option("-w", "--writer-option", "writer_options", multiple=True, metavar="KEY=VALUE",
              help="Extra option for writer plugins (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto (GPU when there is one), cpu, cuda, cuda:1…")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (GPU runs).")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads for the model [default: one per core]. A station's nightly job: its core count.")
@click.option("--cpu-path", type=click.Choice(["auto", "fp32", "bf16", "int8"]), default="auto", show_default=True,
              help="Arithmetic on CPU: int8 (dynamic int8 Linear layers: the fastest measured where the CPU has "
                   "VNNI, top-1 agreement with fp32 >= 99 % on UVP6); bf16 autocast (CPUs with AVX512-BF16/AMX); "
                   "fp32 as trained; auto = int8 on CPUs with VNNI, else fp32. See bench/predict_cpu.py.")
@fanout_options(accelerator=True)
@click.option("--devices", "--num-nodes", "removed", hidden=True, expose_value=True,
              help="Removed: predict fans out with --workers N or --backend slurm --shards N.")
@store_option
@lock_timeout_option
@json_option
def predict(sources, model_path, to, out_dir, fmt, instrument, since, force, batch_size, top_k, taxon_map,
            ecotaxa_mode, strict, writer_options, device, compile_model, threads, cpu_path, fanout, removed, store,
            lock_timeout, as_json):
    """Classify objects with a fine-tuned model and write the results.

    Without SOURCES, predicts the objects of the store that this model has not predicted yet
    (so a nightly run only does the new ones). Preprocessing (crops, padding, size, mean/std)
    is read from the model file, so it always matches training.
    """
    if removed is not None:
        raise click.UsageError("predict --devices/--num-nodes are gone: predict the store in N processes here with "
                               "--workers N, or in N SLURM array tasks with --backend slurm --shards N (one GPU each "
                               "with --accelerator gpu)")
    if sources and fanout.fanned:
        raise click.UsageError("--workers/--backend fan out the store's objects; SOURCES are read in one process "
                               "(ingest them first to fan out)")
    from plankton_cli.core import plugins
    from plankton_cli.cli.output import progress
    from plankton_cli.infer.predict import predict as run_predict
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.store import Store

    options = {"ecotaxa_mode": ecotaxa_mode}
    if strict:
        options["strict"] = "1"
    if taxon_map:
        options["taxon_map"] = str(taxon_map)
    for item in writer_options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--writer-option")
        options[key] = value
    unknown = [name for name in to if name not in plugins.names("writer")]
    if unknown:
        raise click.BadParameter(f"unknown writer {', '.join(unknown)}; installed: "
                                 f"{', '.join(plugins.names('writer'))}", param_hint="--to")
    the_store = Store(store)
    if not sources:  # without SOURCES, the store's objects are predicted
        require_store(store)
    if not sources:  # before a long run over the store; SOURCES are counted as they are read: warned after
        _warn_foreign_instruments(model_path, _store_instruments(the_store, instrument))
    with progress("predict", unit="objects") as advance:
        try:
            common = dict(
                to=list(to), out_dir=out_dir, since=since.replace(tzinfo=UTC) if since else None, force=force,
                batch_size=batch_size, top_k=top_k, embeddings="embeddings" in to, writer_options=options,
                device=device, compile=compile_model, threads=threads, cpu_path=cpu_path, lock_timeout=lock_timeout,
                on_batch=advance)
            if fanout.fanned:
                from plankton_cli.infer.predict_fanout import predict_fanned

                summary = predict_fanned(fanout, model_path, store=the_store, instrument=instrument, **common)
            else:
                summary = run_predict(
                    model_path, store=the_store if (the_store.exists or "store" in to) else None,
                    sources=list(sources), fmt=fmt, read_options=ReadOptions(instrument=instrument),
                    instrument=None if sources else instrument, **common)
        except plugins.PluginError as exc:
            raise click.UsageError(str(exc)) from exc
    if sources:
        _warn_foreign_instruments(model_path, summary.by_instrument)
    data = summary.to_dict()
    if as_json:
        emit_json(data)
        return
    click.echo(f"model {summary.model_id} ({summary.model_hash[:12]}): {summary.predicted} predicted, "
               f"{summary.skipped_already_predicted} already predicted, {summary.rejected} rejected")
    for label, n in list(summary.by_label.items())[:15]:
        click.echo(f"  {n:6d}  {label}")
    if summary.unclassified_by_threshold:
        click.echo(_threshold_line(model_path, summary.unclassified_by_threshold, summary.predicted))
    for name, info in summary.writers.items():
        for line in describe(name, info):
            click.echo(line)


def _threshold_line(model_path: Path, unclassified: int, predicted: int) -> str:
    """Why so many are `unclassified`, and what changes it: the thresholds come from finetune's --target-precision."""
    from plankton_cli.train.model_info import ModelInfo

    precision = ModelInfo.load(model_path).threshold_target_precision
    target = f"precision {precision:g}" if precision else "their target precision"
    return (f"{unclassified} of {predicted} unclassified by the model's per-class thresholds (set for {target} in "
            f"model.json; the argmax is kept as label_auto): for fewer, fine-tune with a lower --target-precision")


def _store_instruments(store, instrument: str | None) -> dict[str, int]:
    """The store's objects per instrument (only `instrument`'s when given): what a predict without SOURCES reads.
    From the instrument partition folders and the committed list's row counts: no data file is read."""
    from collections import Counter

    from plankton_cli.store.layout import partition_values

    counts: Counter = Counter()
    for path, stats in store.stats("objects").items():
        name = partition_values(path, store.root / "objects").get("instrument")
        if name and (instrument is None or name == instrument):
            counts[name] += stats["rows"] if stats else 0
    return counts


def _warn_foreign_instruments(model_path: Path, counts: dict[str, int]) -> None:
    """Warn about objects of an instrument the model was not fine-tuned on (a FlowCam model on IFCB ROIs), with
    their number (`counts`: objects per instrument)."""
    from plankton_cli.core.errors import PlanktonError
    from plankton_cli.core.mismatch import instrument_warnings
    from plankton_cli.train.model_info import ModelInfo

    try:
        info = ModelInfo.load(model_path).to_dict()
    except (OSError, ValueError, PlanktonError):
        return  # predict itself says what is wrong with the model file
    for warning in instrument_warnings(info, counts, info.get("model_id") or str(model_path)):
        log.warning("%s", warning)
