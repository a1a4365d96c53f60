#!/usr/bin/env bash
# Set up the environment (idempotent, seconds when ready) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k spectral`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh"
cd "$repo"
exec "${CASS_VENV:-$repo/.venv}/bin/python" -m pytest -q "$@"
