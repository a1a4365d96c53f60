#!/usr/bin/env bash
# Build and install mmcv 2.1.0 from source against the torch of a virtual environment.
#
#   bash scripts/build_mmcv.sh .venv/bin/python
#
# No mmcv 2.1.0 wheel exists for current torch; its source builds against
# torch 2.13 (not 2.14+, which needs C++20). MMCV_WITH_OPS=1 builds mmcv.ops,
# which mmseg imports; --no-build-isolation makes the build see the installed
# torch. On a CUDA machine mmcv's setup.py compiles CUDA ops whenever
# torch.cuda.is_available(), whatever FORCE_CUDA says, so MMCV_CUDA=0 hides
# the GPUs from the build (CUDA_VISIBLE_DEVICES=""): CPU ops only, minutes
# instead of tens of minutes; CASS uses no mmcv op.
set -euo pipefail
python=${1:?usage: build_mmcv.sh PYTHON}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pin=$(grep -E '^mmcv==' "$repo/requirements-mmseg.txt") || { echo "build_mmcv: requirements-mmseg.txt does not pin mmcv" >&2; exit 1; }

if "$python" -c 'import mmcv.ops' 2>/dev/null; then
  echo "build_mmcv: $("$python" -c 'import mmcv; print("mmcv", mmcv.__version__)') already installed"
  exit 0
fi
cuda=$("$python" -c 'import torch; print(int(torch.cuda.is_available()))')
export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [[ $cuda == 1 && ${MMCV_CUDA:-1} == 1 ]]; then
  export FORCE_CUDA=1
  echo "build_mmcv: CUDA found, building mmcv's CUDA ops too (20-40 min; MMCV_CUDA=0 skips them)"
else
  export FORCE_CUDA=0
  if [[ $cuda == 1 ]]; then
    export CUDA_VISIBLE_DEVICES=""
    echo "build_mmcv: MMCV_CUDA=0: GPUs hidden from the build, CPU ops only"
  fi
fi
# mmcv 2.1's setup.py imports pkg_resources, which setuptools >= 81 dropped
# (and torch's install may have upgraded setuptools): pin one that has it.
"$python" -m pip install -q "setuptools==69.5.1"
"$python" -m pip install --no-build-isolation "$pin"
