#!/usr/bin/env bash
# The GPU check of `cargo xtask gpu-kit`: run on the machine with the GPU, from anywhere.
#
#   [OUT=DIR] [PYTHON=python3] [EPOCHS=3] KIT/run.sh          # on the GPU machine
#   MLOPS_KIT_LIB=PREFIX/lib KIT/run.sh --cpu                 # the same steps on a CPU (dry run)
#
# Libraries come from the machine's own PyTorch (the kit was built against the same version's
# headers): its torch/lib and the NVIDIA libraries it loads, found by asking Python which files
# `import torch` + one CUDA op mapped. libtorch_cuda is preloaded, which registers the CUDA
# backend with the libtorch our binaries link. Results: OUT/gpu_report.json and OUT/gpu_report.md.
set -euo pipefail
KIT=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$KIT/out}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-3}
DEV=cuda:0
if [ "${1:-}" = "--cpu" ]; then DEV=cpu; fi
mkdir -p "$OUT"
W=$(mktemp -d "${TMPDIR:-/tmp}/mlops-gpu-kit.XXXXXX")
trap 'rm -rf "$W"' EXIT
LOG=$OUT/gpu_check.log
: > "$LOG"

if [ -n "${MLOPS_KIT_LIB:-}" ]; then
  LIBPATH=$MLOPS_KIT_LIB
  PRELOAD=
else
  eval "$("$PY" "$KIT/compare.py" libs --kit "$KIT" --device "$DEV")"
fi
ours() { LD_LIBRARY_PATH="$LIBPATH" LD_PRELOAD="$PRELOAD" "$@"; }

step() {
  local name=$1; shift
  echo "==> $name" | tee -a "$LOG"
  local t0=$EPOCHREALTIME
  if ! "$@" >> "$LOG" 2>&1; then
    echo "step $name failed; the last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  echo "$name $t0 $EPOCHREALTIME" >> "$OUT/step_seconds.txt"
}
: > "$OUT/step_seconds.txt"

train() { # name device [extra flags]
  local name=$1 device=$2; shift 2
  step "train-$name" ours "$KIT/bin/mlops-train" --data "$W/data" --out "$W/train-$name" \
    --device "$device" --epochs "$EPOCHS" --seed 42 "$@"
  mkdir -p "$OUT/train-$name"
  cp "$W/train-$name/metrics.jsonl" "$W/train-$name/model.json" "$OUT/train-$name/"
}
embed() { # model device out [extra flags]
  local model=$1 device=$2 out=$3; shift 3
  step "embed-$out" ours "$KIT/bin/mlops-embed" --model "$W/train-$model" --data "$W/data" \
    --out "$W/embed-$out" --device "$device" "$@"
}

step data ours "$KIT/bin/mlops-data" --source "$KIT/data" --out "$W/data"
train cpu cpu
train gpu "$DEV"
# The data-parallel path: two replicas on the one device (every GPU when there are several).
if [ "$DEV" = cpu ]; then
  # One thread per replica: two replicas with a thread per core each would oversubscribe.
  train dp cpu --set replicas_per_device=2 --threads 1
else
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  if [ "$NGPU" -gt 1 ]; then train dp cuda; else train dp "$DEV" --set replicas_per_device=2; fi
fi
# Same model, fp32 on both devices: how far the GPU's kernels (cuDNN, TF32) move embeddings.
embed gpu cpu gpu-model-cpu-fp32 --precision fp32
embed gpu "$DEV" gpu-model-gpu-fp32 --precision fp32
# The defaults (bf16 on a GPU): accuracy of each trained model, throughput.
embed gpu "$DEV" gpu-model
embed cpu "$DEV" cpu-model
embed dp "$DEV" dp-model
"$PY" "$KIT/compare.py" report --kit "$KIT" --work "$W" --out "$OUT" --device "$DEV" \
  --epochs "$EPOCHS" | tee -a "$LOG"
