"""`plankton predict`."""

from __future__ import annotations

import logging
from datetime import UTC
from pathlib import Path

import click

from plankton_cli.cli.dispatch import backend_options, dispatch
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
  # a station's batch on the lab's GPU cluster (--out on a shared filesystem)
  plankton predict --model m.safetensors new-bins/ --to ifcb-h5 --out /shared/out --backend slurm --wait
  # a station's 2 CPU cores: a distilled student (`plankton distill`), int8 Linear layers (the default on CPU)
  plankton predict --model runs/student/model.safetensors --threads 2 --to ifcb-h5 --out classified/

Writers (--to): store, parquet, csv, embeddings, ecotaxa, ifcb-h5, or any installed writer plugin.
ifcb-h5 writes OUT/ifcb-h5/D<year>/D<yyyymmdd>/<bin>_class.h5 (V1 bins: D<year>/D<year>_<doy>/):
point IFCB Dashboard's class_scores data directory (version 3) at OUT/ifcb-h5.

Exit codes: 0 done, 2 usage error, 65 --strict and a label without a confirmed EcoTaxa category,
73 OUT or an output in it cannot be created, 75 the store is locked by another writer. With
--to store, predictions are kept on 73 and 75: the next run writes the outputs and stores them
without predicting again.""")
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
@backend_options
@store_option
@lock_timeout_option
@json_option
@click.pass_context
def predict(ctx, sources, model_path, to, out_dir, fmt, instrument, since, force, batch_size, top_k, taxon_map,
            ecotaxa_mode, strict, writer_options, device, compile_model, threads, cpu_path, backend_opts, store, lock_timeout,
            as_json):
    """Classify objects with a fine-tuned model and write the results.

    Without SOURCES, predicts the objects of the store that this model has not predicted yet
    (so a nightly run only does the new ones). Preprocessing (crops, padding, size, mean/std)
    is read from the model file, so it always matches training.
    """
    if dispatch(ctx, backend_opts.backend, backend_opts.resources(), out_dir, wait=backend_opts.wait,
                dry_run=backend_opts.dry_run, record_dir=store):
        return
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
            summary = run_predict(
                model_path, store=the_store if (the_store.exists or "store" in to) else None, sources=list(sources),
                fmt=fmt, read_options=ReadOptions(instrument=instrument), to=list(to), out_dir=out_dir,
                instrument=None if sources else instrument,
                since=since.replace(tzinfo=UTC) if since else None, force=force, batch_size=batch_size,
                top_k=top_k, embeddings="embeddings" in to, writer_options=options, device=device,
                compile=compile_model, threads=threads, cpu_path=cpu_path, lock_timeout=lock_timeout, on_batch=advance)
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
    """The store's objects per instrument (only `instrument`'s when given): what a predict without SOURCES reads."""
    from collections import Counter

    if not store.files("objects"):
        return {}
    column = store.dataset("objects").to_table(columns=["instrument"])["instrument"].to_pylist()
    return Counter(i for i in column if i and (instrument is None or i == instrument))


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
