"""`plankton taxa`."""

from __future__ import annotations

from pathlib import Path

import click

from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.cli.options import Command, json_option
from plankton_cli.cli.output import emit_json


@click.command(cls=Command, epilog="""\b
Examples:
  # every category of an EcoTaxa export, as a taxon map for `predict --to ecotaxa --taxon-map`
  plankton taxa --from export_TSV_1234.zip --out taxa.tsv
  # only the classes a model predicts (a folder label like detritus__84963 resolves when the
  # export has category id 84963)
  plankton taxa --from export/ --model runs/ft/fold-0/model.safetensors --out taxa.tsv
  # ids of classes no export holds, from EcoTaxa's taxonomy (id, name, display_name, parent_id)
  plankton taxa --taxonomy taxonomy.tsv --model runs/ft/fold-0/model.safetensors --out taxa.tsv

\b
Writes label<TAB>ecotaxa_name<TAB>category_id lines. Names and ids come from the export only:
EcoTaxa resolves the category id first (and keeps no name when it has one), so an id that
the export does not confirm is never written, not even one taken from a Name__id folder.
Names are written as name<parent when the export holds the lineage. Labels that cannot be
resolved are listed with the reason (stderr, and in --json) and left out of the map: add them
by hand, or predict leaves those objects unclassified (--strict: refuses to run).""")
@click.option("--from", "exports", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="EcoTaxa export: zip, folder or TSV (repeatable).")
@click.option("--taxonomy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="EcoTaxa taxonomy TSV (id, name[, display_name, parent_id|parent_name|lineage]): asked for labels "
                   "the exports do not resolve or give no id; a Name__id label must have that id under that name.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The taxon map to write (TSV).")
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path),
              help="Map only this model's classes (model.safetensors or its folder).")
@json_option
def taxa(exports: tuple[Path, ...], taxonomy: Path | None, out_path: Path, model_path: Path | None,
         as_json: bool) -> None:
    """Build an EcoTaxa taxon map (label -> taxon name and category id) from an EcoTaxa export or taxonomy."""
    from plankton_plugins.ecotaxa.taxa import build_taxon_map, class_names

    if not exports and taxonomy is None:
        raise click.UsageError("give an EcoTaxa export (--from) or an EcoTaxa taxonomy TSV (--taxonomy)")
    if not exports and model_path is None:
        raise click.UsageError("--taxonomy without --from needs --model: the classes to map")
    classes = class_names(model_path) if model_path else None
    try:
        result = build_taxon_map(list(exports), classes, taxonomy)
    except ValueError as exc:  # a taxonomy file without the columns it needs
        raise click.UsageError(str(exc)) from exc
    if exports and not result.rows:
        raise click.UsageError(f"no EcoTaxa TSV rows in {', '.join(map(str, exports))}")
    atomic_write_bytes(out_path, result.to_tsv().encode("utf-8"))
    if as_json:
        emit_json({"out": str(out_path), "rows": result.rows, "categories": result.categories,
                   "mapped": len(result.entries), "with_category_id": sum(1 for e in result.entries if e[2]),
                   "unresolved": dict(result.unresolved)})
        return
    click.echo(f"{out_path}: {len(result.entries)} labels mapped "
               f"({sum(1 for e in result.entries if e[2])} with a category id) from {result.categories} categories "
               f"in {result.rows} rows")
    for label, reason in result.unresolved:
        click.echo(f"unresolved: {label}: {reason}", err=True)
