#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in ./.venv.
#
#   bash scripts/setup.sh          # runtime + test tools
#   bash scripts/setup.sh --no-test
#
# Order matters: torch first, then mmcv 2.1.0 built from source against it
# (--no-build-isolation so it sees that torch; MMCV_WITH_OPS=1 for mmcv.ops,
# which mmseg imports), then everything else. pip's wheel cache makes a second
# build free, and a stamp file makes a second run on a ready environment a
# no-op that takes seconds.
#
# Environment variables:
#   CASS_VENV   where to create the environment (default: <repo>/.venv)
#   PYTHON      interpreter used to create it (default: python3)
#   MMCV_CUDA   on a CUDA machine: 0 builds CPU-only mmcv ops (faster build)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CASS_VENV:-$repo/.venv}
python=${PYTHON:-python3}
with_test=1
[[ ${1:-} == --no-test ]] && with_test=0

die() { echo "setup: $*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------
command -v "$python" >/dev/null || die "no '$python' on PATH; install Python 3.10-3.12 or set PYTHON=/path/to/python3"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case $pyver in
  3.10|3.11|3.12) ;;
  *) die "Python $pyver is not supported (torch 2.13 + mmcv 2.1 need 3.10-3.12); set PYTHON=/path/to/python3.11" ;;
esac
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "Python $pyver lacks venv/ensurepip (Debian: apt-get install python3-venv)"
command -v "${CXX:-g++}" >/dev/null || die "no C++ compiler (${CXX:-g++}) on PATH; mmcv 2.1.0 is built from source (Debian: apt-get install g++)"
"$python" -c 'import sysconfig, os, sys; h = sysconfig.get_paths()["include"]; sys.exit(not os.path.exists(os.path.join(h, "Python.h")))' \
  || die "Python headers (Python.h) are missing; mmcv's build needs them (Debian: apt-get install python3-dev)"

stamp_key=$(cat "$repo/requirements.txt" "$repo/requirements-test.txt" "$repo/pyproject.toml" "$0" | sha256sum | cut -c1-16)-$pyver-$with_test
stamp=$venv/.cass-setup-stamp

if [[ -f $stamp && $(cat "$stamp") == "$stamp_key" ]] \
   && "$venv/bin/python" -c 'import torch, torchvision, mmcv.ops, mmseg, open_clip, timm, cass' 2>/dev/null; then
  echo "setup: environment in $venv is up to date"
  exit 0
fi

[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
# --isolated: ignore pip config/env (a find-links folder may hold a "+cpu" torch
# wheel that has no matching torchvision). Keep a custom CA bundle if one is set.
pip_iso=("${pip[@]}" --isolated)
[[ -n ${PIP_CERT:-} ]] && pip_iso+=(--cert "$PIP_CERT")

req() { grep -E "^$1==" "$repo/requirements.txt" || die "requirements.txt does not pin $1"; }

echo "setup: [1/5] build tools"
"${pip[@]}" install -q --upgrade pip wheel ninja

echo "setup: [2/5] $(req torch) + $(req torchvision)"
"${pip_iso[@]}" install -q "$(req torch)" "$(req torchvision)"
"$venv/bin/python" -c 'import torch, torchvision' 2>/dev/null \
  || die "torch and torchvision do not import together; check that requirements.txt pins a matching pair"

echo "setup: [3/5] $(req mmcv) from source (about 11 min on 2 cores the first time, seconds from pip's cache)"
if ! "$venv/bin/python" -c 'import mmcv.ops' 2>/dev/null; then
  cuda=$("$venv/bin/python" -c 'import torch; print(int(torch.cuda.is_available()))')
  export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  if [[ $cuda == 1 && ${MMCV_CUDA:-1} == 1 ]]; then
    export FORCE_CUDA=1
    echo "setup: CUDA found, building mmcv's CUDA ops too (20-40 min; MMCV_CUDA=0 skips them)"
  else
    export FORCE_CUDA=0
  fi
  # mmcv 2.1's setup.py imports pkg_resources, which setuptools >= 81 dropped
  # (and torch's install may have upgraded setuptools): pin one that has it.
  "${pip[@]}" install -q "setuptools==69.5.1"
  "${pip[@]}" install --no-build-isolation "$(req mmcv)" "$(req mmengine)"
fi

echo "setup: [4/5] the rest of requirements.txt and the cass package"
"${pip[@]}" install -q -r "$repo/requirements.txt"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$repo"
if [[ $with_test == 1 ]]; then
  echo "setup: [5/5] test tools"
  "${pip[@]}" install -q -r "$repo/requirements-test.txt"
fi

"$venv/bin/python" -c 'import torch, torchvision, mmcv.ops, mmseg, open_clip, timm, cass' \
  || die "the environment in $venv does not import; see the messages above"
echo "$stamp_key" > "$stamp"
echo "setup: ready: source $venv/bin/activate"
