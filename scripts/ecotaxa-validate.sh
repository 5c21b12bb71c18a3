#!/usr/bin/env bash
# EcoTaxa's own import validation (ecotaxa_back's FileImport / InBundle / TSVFile checks) on import zips, without
# an EcoTaxa server or database: builds a Python 3.8 venv with ecotaxa_back's pinned libraries, then runs
# scripts/ecotaxa_validate.py in it (its docstring says what is stubbed and why).
#
# Get ecotaxa_back (only its py/ folder is used; checked against commit cb44b1901f220a3a17e7f44af957d8ffc5f06897):
#   git clone https://github.com/ecotaxa/ecotaxa_back /path/to/ecotaxa_back
#
# Usage:   scripts/ecotaxa-validate.sh ECOTAXA_BACK ZIP_OR_FOLDER... [--taxa MAP_OR_EXPORT] [--existing EXPORT] ...
#          scripts/ecotaxa-validate.sh --setup     (build the venv only; prints its python, for ECOTAXA_PYTHON)
# Example: scripts/ecotaxa-validate.sh ~/src/ecotaxa_back out/ecotaxa out/ecotaxa-update --taxa taxa.tsv
# Exit 0 when every zip passes. The pytest test tests/plugins/test_ecotaxa_validate.py runs the same script when
# ECOTAXA_BACK=<checkout> and ECOTAXA_PYTHON=<this venv's python> are set.
#
# Environment: PYTHON38 (a Python 3.8; default python3.8, else ~/.pyenv/versions/3.8.*), ECOTAXA_VENV (default
# ~/.cache/plankton-cli/ecotaxa-venv). Needs PyPI (or a pip index) the first time.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=${ECOTAXA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/plankton-cli/ecotaxa-venv}
# ecotaxa_back py/requirements.txt versions, only what the import validation imports
PINS=(SQLAlchemy==1.4.31 Pillow==8.1.0 numpy==1.19.5 pgvector==0.2.4 astral==2.2 pytz==2021.1
      pydantic==1.10.7 fastapi==0.73.0 magic-rs==0.2.0)

if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]]; then
    PY=""
    for candidate in ${PYTHON38:-} python3.8 "$HOME"/.pyenv/versions/3.8.*/bin/python; do
        # a pyenv shim exists without a 3.8 behind it: take the first that runs
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 8)' 2>/dev/null; then
            PY=$candidate
            break
        fi
    done
    [[ -n "$PY" ]] || { echo "ecotaxa-validate: no Python 3.8 found; set PYTHON38" >&2; exit 2; }
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "${PINS[@]}"
    echo "${PINS[*]}" > "$VENV/.pins"
fi

if [[ "${1:-}" == "--setup" ]]; then
    echo "$VENV/bin/python"
    exit 0
fi
exec "$VENV/bin/python" "$HERE/ecotaxa_validate.py" "$@"
