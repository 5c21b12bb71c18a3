#!/usr/bin/env bash
# The nightly job of an IFCB station: ingest the new bins, classify what is new, write EcoTaxa import zips and
# IFCB Dashboard class files (<bin>_class.h5) for the new bins only, add them to the summary (counts, cells per mL)
# and write the night's HTML report. Safe to re-run: a second run finds nothing new and rewrites nothing.
#
#   nightly.sh IFCB_DATA_DIR MODEL OUT_DIR        (store, log file, ... come from plankton.toml next to this script)
#
# Exit codes for the cron wrapper:
#   0   done (rejected objects, if any, are in the log and in the store's rejections dataset)
#   65  done, but some objects were rejected (bad bins): someone should look at the log
#   73  an output (EcoTaxa zip, class file) could not be created: the predictions are kept, and the next run
#       writes the missing outputs without predicting again
#   75  another nightly run, or another writer, holds the lock: try again later
#   other: failure, see the log
set -uo pipefail

IFCB_DIR=${1:?usage: nightly.sh IFCB_DATA_DIR MODEL OUT_DIR}
MODEL=${2:?usage: nightly.sh IFCB_DATA_DIR MODEL OUT_DIR}
OUT=${3:?usage: nightly.sh IFCB_DATA_DIR MODEL OUT_DIR}
CONFIG=${PLANKTON_CONFIG:-$(dirname "$0")/plankton.toml}
PLANKTON=${PLANKTON:-plankton}
REPORTS=${NIGHTLY_REPORTS:-$OUT/reports}   # the crontab line puts them beside the log
mkdir -p "$OUT"

# One nightly run at a time; the store's own lock also serialises it against manual commands.
exec 9>>"$OUT/.nightly.lock"
flock -n 9 || { echo "nightly: another run holds $OUT/.nightly.lock" >&2; exit 75; }

"$PLANKTON" --config "$CONFIG" ingest "$IFCB_DIR" --strict --json > "$OUT/last-ingest.json"
ingest_rc=$?
case $ingest_rc in
    0 | 65) ;;            # 65: some objects rejected; the good ones are stored, so go on and classify them
    *) exit "$ingest_rc" ;;
esac

"$PLANKTON" --config "$CONFIG" predict --model "$MODEL" --to store --to ecotaxa --to ifcb-h5 --out "$OUT" \
    --json > "$OUT/last-predict.json" || exit $?

# Counts and cells per mL of the new bins added to OUT/summary, and tonight's one-page report in $REPORTS
# (rewritten only when something changed, so a second run the same night leaves it as it is).
"$PLANKTON" --config "$CONFIG" summarize --model "$MODEL" --by bin --out "$OUT/summary" \
    --json > "$OUT/last-summary.json" || exit $?
"$PLANKTON" --config "$CONFIG" report --model "$MODEL" --summary "$OUT/summary" --out "$REPORTS" \
    --json > "$OUT/last-report.json" || exit $?

exit "$ingest_rc"
