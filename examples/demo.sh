#!/usr/bin/env bash
# The whole pipeline on the bundled real data (planktonclass demo images, Apache-2.0; the pyifcb V2 bin, MIT),
# on CPU. Run from the repository root after installing: bash examples/demo.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-output}
PLANKTON=${PLANKTON:-.venv/bin/plankton}
STORE=$OUT/store
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== ingest: 105 labelled FlowCam-like images and one real IFCB bin"
$PLANKTON ingest tests/data/planktonclass-demo/demo-images --instrument FlowCam --store "$STORE"
$PLANKTON ingest tests/data/ifcb/pyifcb-testdata/white --store "$STORE"

echo "== info"
$PLANKTON info --store "$STORE"
