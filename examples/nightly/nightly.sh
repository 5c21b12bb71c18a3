#!/usr/bin/env bash
# The nightly job of an IFCB station: ingest the new bins, classify what is new, write EcoTaxa import zips and
# IFCB Dashboard class files (<bin>_class.h5) for the new bins only, add them to the summary (counts, cells per mL)
# and write the night's HTML report. Safe to re-run: a second run finds nothing new and rewrites nothing.
#
#   nightly.sh IFCB_DATA_DIR MODEL OUT_DIR
#
# Settings come from plankton.toml next to this script ($PLANKTON_CONFIG names another); the store is
# OUT_DIR/plankton-store unless that file (`store = ...`) or $PLANKTON_STORE names one.
# It logs one line per step with its counts on stdout (the crontab line appends them to nightly.log, with the
# warnings and errors plankton writes on stderr); each step's full --json summary is in OUT_DIR/last-<step>.json.
#
# Exit codes for the cron wrapper:
#   0   done (rejected objects, if any, are in the log and in the store's rejections dataset)
#   65  done, but some objects were rejected (bad bins): someone should look at the log
#   73  an output (EcoTaxa zip, class file) could not be created: the predictions are kept, and the next run
#       writes the missing outputs without predicting again
#   75  another nightly run, or another writer, holds the lock: try again later
#   other: failure, see the log
set -uo pipefail

usage="usage: nightly.sh IFCB_DATA_DIR MODEL OUT_DIR"
IFCB_DIR=$(realpath -m "${1:?$usage}")
MODEL=$(realpath -m "${2:?$usage}")
OUT=$(realpath -m "${3:?$usage}")
CONFIG=$(realpath -m "${PLANKTON_CONFIG:-$(dirname "$0")/plankton.toml}")
PLANKTON=${PLANKTON:-plankton}
[[ $PLANKTON == */* ]] && PLANKTON=$(realpath -m "$PLANKTON")   # a path, not a command on PATH: kept across the cd
REPORTS=$(realpath -m "${NIGHTLY_REPORTS:-$OUT/reports}")   # the crontab line puts them beside the log
mkdir -p "$OUT" || exit 73
# Run in OUT: plankton's default store, ./plankton-store, is then OUT/plankton-store, so the job runs as shipped.
cd "$OUT" || exit 73

log() { echo "$(date '+%F %T') nightly: $*"; }

# One log line for a step, with its counts, from the step's --json summary (python3: plankton's own dependency).
log_step() {
    python3 - "$@" <<'PY' || echo "$1: done, but its summary $2 could not be read"
import json, sys

step, path = sys.argv[1:3]
s = json.load(open(path))
if step == "ingest":
    sources = ", ".join(f"{n} {kind}" for kind, n in s["sources"].items()) or "none"
    reasons = "".join(f", {n} {reason}" for reason, n in s["rejected_by_reason"].items())
    line = (f"{s['read']} objects read from the bins (sources: {sources}): {s['stored']} stored, "
            f"{s['skipped_duplicate']} already stored, {s['rejected']} rejected{reasons}")
elif step == "predict":
    files = {name: len(w.get("files", [])) for name, w in s["writers"].items()}
    line = (f"{s['predicted']} objects classified ({s['skipped_already_predicted']} classified before), "
            f"{s['by_label'].get('unclassified', 0)} of them unclassified; {files.get('ecotaxa', 0)} EcoTaxa zips, "
            f"{files.get('ifcb-h5', 0)} class files written")
elif step == "summarize":
    line = f"{s['new_samples']} new bins ({s['objects']} objects) added to {s['out_dir']}"
else:  # report
    kind = "bins" if s["ifcb_bins"] else "samples"
    line = (f"{s['path']} {'written' if s['written'] else 'unchanged'}: {s['objects']} objects in "
            f"{s['samples']} {kind}, {s['rejected']} rejected" + (", DRIFT ALARM" if s["drift_alarm"] else ""))
print(f"{step}: {line}", flush=True)
PY
}

# Run one plankton command with its --json summary into OUT/last-<step>.json, then log what it did.
step() {
    local name=$1
    shift
    "$PLANKTON" --config "$CONFIG" "$name" "$@" --json > "$OUT/last-$name.json"
    local rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 65 ]; then
        log "$name failed (exit $rc; plankton's error is above): stopping"
        return "$rc"
    fi
    log "$(log_step "$name" "$OUT/last-$name.json")"
    return "$rc"
}

# One nightly run at a time; the store's own lock also serialises it against manual commands.
exec 9>>"$OUT/.nightly.lock"
flock -n 9 || { log "another run holds $OUT/.nightly.lock: exit 75, try later" >&2; exit 75; }
log "start: $IFCB_DIR with $MODEL into $OUT (settings: $CONFIG)"

step ingest "$IFCB_DIR" --strict
ingest_rc=$?
case $ingest_rc in
    0 | 65) ;;            # 65: some objects rejected; the good ones are stored, so go on and classify them
    *) exit "$ingest_rc" ;;
esac

step predict --model "$MODEL" --to store --to ecotaxa --to ifcb-h5 --out "$OUT" || exit $?

# Counts and cells per mL of the new bins added to OUT/summary, and tonight's one-page report in $REPORTS
# (rewritten only when something changed, so a second run the same night leaves it as it is).
step summarize --model "$MODEL" --by bin --out "$OUT/summary" || exit $?
step report --model "$MODEL" --summary "$OUT/summary" --out "$REPORTS" || exit $?

if [ "$ingest_rc" -eq 65 ]; then
    log "done: exit 65, some objects were rejected (see the ingest warnings above)"
else
    log "done"
fi
exit "$ingest_rc"
