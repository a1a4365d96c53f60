#!/usr/bin/env bash
# Set up the environment (idempotent, seconds when ready) and segment one image.
# Arguments go to demo.py; with none it segments scikit-image's astronaut photo
# into demo_out.png. Public weights are downloaded once; offline, the error
# names the file to download and the flag to pass (--clip-path/--vfm-path).
#
#   bash scripts/demo.sh --image photo.jpg --classes "cat, dog, sky" --out result.png
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh" --demo >&2  # no mmcv build; keep stdout for the legend
exec "${CASS_VENV:-$repo/.venv}/bin/python" "$repo/demo.py" "$@"
