#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in ./.venv.
#
#   bash scripts/setup.sh           # full: the model, the mmseg adapter (mmcv built from source), the web app, test tools
#   bash scripts/setup.sh --demo    # the model, the image API and demo.py only: no mmcv, no build, no web app
#   bash scripts/setup.sh --no-test # full without the test tools
#
# Order matters: torch first; in the full profile mmcv 2.1.0 is then built
# from source against it (scripts/build_mmcv.sh), then everything else. A
# stamp file makes a second run on a ready environment a no-op that takes
# seconds; a demo environment is completed by a later full run.
#
# Environment variables:
#   CASS_VENV   where to create the environment (default: <repo>/.venv)
#   PYTHON      interpreter used to create it (default: python3)
#   MMCV_CUDA   on a CUDA machine: 0 builds CPU-only mmcv ops (CASS uses no mmcv op)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CASS_VENV:-$repo/.venv}
python=${PYTHON:-python3}
profile=full
with_test=1
for arg in "$@"; do
  case $arg in
    --demo) profile=demo; with_test=0 ;;
    --no-test) with_test=0 ;;
    *) echo "setup: unknown option '$arg' (use --demo or --no-test)" >&2; exit 2 ;;
  esac
done

die() { echo "setup: $*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------
command -v "$python" >/dev/null || die "no '$python' on PATH; install Python 3.10-3.12 or set PYTHON=/path/to/python3"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case $pyver in
  3.10|3.11|3.12) ;;
  *) die "Python $pyver is not supported (torch 2.13 + mmcv 2.1 need 3.10-3.12); set PYTHON=/path/to/python3.11" ;;
esac
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "Python $pyver lacks venv/ensurepip (Debian: apt-get install python3-venv)"
if [[ $profile == full ]]; then
  command -v "${CXX:-g++}" >/dev/null || die "no C++ compiler (${CXX:-g++}) on PATH; mmcv 2.1.0 is built from source (Debian: apt-get install g++; or bash scripts/setup.sh --demo, which needs no build)"
  "$python" -c 'import sysconfig, os, sys; h = sysconfig.get_paths()["include"]; sys.exit(not os.path.exists(os.path.join(h, "Python.h")))' \
    || die "Python headers (Python.h) are missing; mmcv's build needs them (Debian: apt-get install python3-dev)"
fi

stamp_key=$(cat "$repo/requirements.txt" "$repo/requirements-mmseg.txt" "$repo/requirements-app.txt" \
  "$repo/requirements-test.txt" "$repo/pyproject.toml" "$0" "$repo/scripts/build_mmcv.sh" | sha256sum | cut -c1-16)-py$pyver
stamp=$venv/.cass-setup-stamp
check='import torch, torchvision, open_clip, timm, mmengine, cass, sam2'
[[ $profile == full ]] && check+='; import mmcv.ops, mmseg, cass.mmseg, gradio'
[[ $with_test == 1 ]] && check+='; import pytest, playwright'

# a full environment also serves the demo; a demo one is completed by a full run
if [[ -f $stamp ]]; then
  read -r done_key done_profile done_test < "$stamp" || true
  if [[ ${done_key:-} == "$stamp_key" && (${done_profile:-} == full || ${done_profile:-} == "$profile") \
        && ${done_test:-0} -ge $with_test ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "setup: environment in $venv is up to date ($done_profile profile)"
    exit 0
  fi
fi

[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
# --isolated: ignore pip config/env (a find-links folder may hold a "+cpu" torch
# wheel that has no matching torchvision). Keep a custom CA bundle if one is set.
pip_iso=("${pip[@]}" --isolated)
[[ -n ${PIP_CERT:-} ]] && pip_iso+=(--cert "$PIP_CERT")

req() { grep -hE "^$1==" "$repo/requirements.txt" "$repo/requirements-mmseg.txt" || die "no pin of $1 in requirements*.txt"; }
steps=3; [[ $profile == full ]] && steps=5; [[ $with_test == 1 ]] && steps=$((steps + 1))

echo "setup: [1/$steps] build tools ($profile profile)"
"${pip[@]}" install -q --upgrade pip wheel ninja

echo "setup: [2/$steps] $(req torch) + $(req torchvision)"
if ! "$venv/bin/python" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$(req torch | cut -d= -f3)')" 2>/dev/null; then
  "${pip_iso[@]}" install -q "$(req torch)" "$(req torchvision)"
fi
"$venv/bin/python" -c 'import torch, torchvision' 2>/dev/null \
  || die "torch and torchvision do not import together; check that requirements.txt pins a matching pair"

echo "setup: [3/$steps] requirements.txt and the cass package"
"${pip[@]}" install -q -r "$repo/requirements.txt"
# sam2 (CorrCLIP's SAM2 masks) is an sdist: built against this torch, without its optional CUDA
# extension, and without re-resolving torch's dependencies (its own are in requirements.txt)
SAM2_BUILD_CUDA=0 "${pip[@]}" install -q --no-build-isolation --no-deps "sam2==1.1.0"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$repo"

if [[ $profile == full ]]; then
  echo "setup: [4/$steps] $(req mmcv) (built from source: about 11 min on 2 cores the first time) + $(req mmsegmentation)"
  bash "$repo/scripts/build_mmcv.sh" "$venv/bin/python"
  "${pip[@]}" install -q -r "$repo/requirements-mmseg.txt"
  echo "setup: [5/$steps] the web app (requirements-app.txt: gradio)"
  "${pip[@]}" install -q -r "$repo/requirements-app.txt"
fi
if [[ $with_test == 1 ]]; then
  echo "setup: [$steps/$steps] test tools (pytest; playwright, which drives the system's chromium)"
  "${pip[@]}" install -q -r "$repo/requirements-test.txt"
fi

"$venv/bin/python" -c "$check" || die "the environment in $venv does not import; see the messages above"
echo "$stamp_key $profile $with_test" > "$stamp"
echo "setup: ready ($profile profile): source $venv/bin/activate"
