#!/usr/bin/env bash
# Evaluate CASS (or another method of the family: any name registered in
# cass/methods/'s registry (METHODS), the baselines and Trident included) on the paper's
# eight benchmarks, then tabulate mIoU against the published numbers.
#
#   bash eval_all.sh                  # GPU 0, one benchmark after another
#   bash eval_all.sh 0,1,2,3          # four GPUs, one benchmark per GPU at a time
#   GPUS=0,1 bash eval_all.sh         # the same through the environment
#   bash eval_all.sh 0,1 --pamr on    # further arguments go to every eval.py run
#   bash eval_all.sh --method sclip   # another method (or METHOD=sclip): a name of cass/methods/'s
#                                     # METHODS (--help lists them); cass is the default
#   bash eval_all.sh --method sclip --protocol cass   # with CASS's settings instead of SCLIP's
#   bash eval_all.sh --method trident --clip ViT-H-14/laion2b_s32b_b79k   # another CLIP (its published row)
#   bash eval_all.sh --help           # this text and the registered methods
#
# A method other than CASS runs with its published settings on each benchmark
# (windows, resize, logit scale, thresholds: configs/methods.py), or with
# --protocol cass with the benchmark configs' settings. Per benchmark:
# $WORK_ROOT/cfg_<name>/{metrics.json, eval.log} (WORK_ROOT defaults to
# work_dirs; another method writes to $WORK_ROOT/<method>/). At the end:
# summary.md and summary.csv there, with the method's published numbers.
# Fail-fast: the first failing benchmark stops the others and the script exits 1.
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

gpus=${GPUS:-0}
if [[ $# -gt 0 && $1 =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  gpus=$1
  shift
fi
method=${METHOD:-cass}
protocol=${PROTOCOL:-published}
clip=${CLIP:-}
extra=()
help=0
while (( $# )); do
  case $1 in
    -h|--help) help=1; shift ;;
    --method) method=${2:?--method needs a value}; shift 2 ;;
    --method=*) method=${1#--method=}; shift ;;
    --protocol) protocol=${2:?--protocol needs a value}; shift 2 ;;
    --protocol=*) protocol=${1#--protocol=}; shift ;;
    --clip) clip=${2:?--clip needs a value}; shift 2 ;;
    --clip=*) clip=${1#--clip=}; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
set -- "${extra[@]+"${extra[@]}"}"
IFS=, read -r -a gpu_list <<< "$gpus"
work_root=${WORK_ROOT:-work_dirs}
python=${PYTHON:-python}
if (( help )); then  # the comment above, then the methods as registered (never a list written here)
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$(basename "${BASH_SOURCE[0]}")"
  "$python" -c 'from cass.methods import METHODS; print("methods:", ", ".join(METHODS))'
  exit
fi
if [[ $method != cass ]]; then
  work_root=$work_root/$method
fi
if [[ -n $clip ]]; then  # another CLIP writes beside the default one's results
  work_root=$work_root/${clip//\//_}
fi
# The paper's column order (the one list: cass/benchmarks.py's BENCHMARKS).
if ! configs=$("$python" configs/methods.py --benchmarks); then
  echo "eval_all: could not read the benchmark list from configs/methods.py" >&2
  exit 1
fi
mapfile -t benchmarks <<< "${configs//cfg_/}"
# The method's overrides per benchmark (checked before anything runs; one process reads them all:
# the method registry imports torch). configs/methods.py --all prints "[cfg_<name>]" then its lines.
declare -A method_options
if ! all_options=$("$python" configs/methods.py "$method" --all "$protocol"); then
  echo "eval_all: no settings for method '$method' with protocol '$protocol'" >&2
  exit 1
fi
section=
while IFS= read -r line; do
  if [[ $line =~ ^\[cfg_(.+)\]$ ]]; then
    section=${BASH_REMATCH[1]}
    method_options[$section]=
  elif [[ -n $line ]]; then
    method_options[$section]+=${method_options[$section]:+$'\n'}$line
  fi
done <<< "$all_options"

run_benchmark() {  # gpu name [eval.py args...]
  local gpu=$1 name=cfg_$2 key=$2
  shift 2
  local log=$work_root/$name/eval.log
  mkdir -p "$work_root/$name"
  echo "eval_all: [gpu $gpu] $name"
  local options=()
  if [[ -n ${method_options[$key]} ]]; then
    mapfile -t options <<< "${method_options[$key]}"
  fi
  if [[ -n $clip ]]; then
    options+=("model.clip_path=$clip")
  fi
  local cmd=("$python" eval.py --config "configs/$name.py" --work-dir "$work_root/$name")
  if (( ${#options[@]} )); then
    cmd+=(--cfg-options "${options[@]}")
  fi
  cmd+=("$@")  # after the method's overrides: a --cfg-options here wins
  if (( ${#gpu_list[@]} == 1 )); then
    CUDA_VISIBLE_DEVICES=$gpu "${cmd[@]}" 2>&1 | tee "$log" && return 0
  else
    CUDA_VISIBLE_DEVICES=$gpu "${cmd[@]}" > "$log" 2>&1 && return 0
  fi
  echo "eval_all: $name failed on gpu $gpu; end of $log:" >&2
  tail -n 5 "$log" >&2
  return 1
}

# Each worker leaves a file saying how it ended: with job control on, bash may
# drop the status of a job that ends between two `wait -n` (127, "no children"),
# so the statuses are read from these files, not from `wait`.
status_dir=$(mktemp -d)
trap 'rm -rf "$status_dir"' EXIT

worker() {  # k [eval.py args...]: benchmarks k, k + #gpus, ... on the k-th GPU
  local k=$1
  shift
  local i
  for (( i = k; i < ${#benchmarks[@]}; i += ${#gpu_list[@]} )); do
    if ! run_benchmark "${gpu_list[k]}" "${benchmarks[i]}" "$@"; then
      : > "$status_dir/failed.$k"
      return 1
    fi
  done
  : > "$status_dir/done.$k"
}

# Job control: each worker gets its own process group, so a failure can stop
# the other workers together with their eval.py processes.
set -m
pids=()
for k in "${!gpu_list[@]}"; do
  worker "$k" "$@" &
  pids+=("$!")
done
for _ in "${pids[@]}"; do
  wait -n || true  # a worker ended (or none is left)
  if compgen -G "$status_dir/failed.*" > /dev/null; then
    for pid in "${pids[@]}"; do
      kill -- "-$pid" 2> /dev/null || true
    done
    wait || true
    echo "eval_all: stopped after a failure" >&2
    exit 1
  fi
done
wait || true
for k in "${!gpu_list[@]}"; do
  if [[ ! -e $status_dir/done.$k ]]; then
    echo "eval_all: the worker of gpu ${gpu_list[k]} ended without finishing its benchmarks (killed?)" >&2
    exit 1
  fi
done

# As a script, not `-m cass.summary` (it runs without the package installed).
summary_clip=()
if [[ -n $clip ]]; then
  summary_clip=(--clip "$clip")
fi
"$python" cass/summary.py "$work_root" --method "$method" "${summary_clip[@]+"${summary_clip[@]}"}" \
  --markdown "$work_root/summary.md" --csv "$work_root/summary.csv"
echo "eval_all: summary in $work_root/summary.md and $work_root/summary.csv"
