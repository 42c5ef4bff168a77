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
#
# A failed step does not stop the others (device time is scarce: one run should show every
# failure); each is listed in OUT/failed.txt, steps that need its output are skipped, and the
# script exits non-zero at the end.
set -uo pipefail
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
: > "$OUT/failed.txt"
: > "$OUT/step_seconds.txt"

{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -a)"; echo "cpus: $(nproc)"
  nvidia-smi 2>&1 | head -n 20 || true
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "gpus", torch.cuda.device_count())' 2>&1
} > "$OUT/environment.txt"

if [ -n "${MLOPS_KIT_LIB:-}" ]; then
  LIBPATH=$MLOPS_KIT_LIB
  PRELOAD=
else
  if ! libs=$("$PY" "$KIT/compare.py" libs --kit "$KIT" --device "$DEV" 2>>"$LOG"); then
    echo "finding the libraries of this machine's PyTorch failed:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  eval "$libs"
fi
echo "LIBPATH=$LIBPATH" >> "$OUT/environment.txt"
echo "PRELOAD=$PRELOAD" >> "$OUT/environment.txt"
ours() { LD_LIBRARY_PATH="$LIBPATH" LD_PRELOAD="$PRELOAD" "$@"; }
ours ldd "$KIT/bin/mlops-train" >> "$OUT/environment.txt" 2>&1 || true

step() { # name command...: runs it, logs it, times it; on failure records it and returns 1
  local name=$1; shift
  echo "==> $name" | tee -a "$LOG"
  local t0=$EPOCHREALTIME
  if ! "$@" >> "$LOG" 2>&1; then
    echo "$name" >> "$OUT/failed.txt"
    echo "step $name failed; the last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    return 1
  fi
  echo "$name $t0 $EPOCHREALTIME" >> "$OUT/step_seconds.txt"
}

train() { # name device [extra flags]
  local name=$1 device=$2; shift 2
  [ -d "$W/data" ] || return 0
  step "train-$name" ours "$KIT/bin/mlops-train" --data "$W/data" --out "$W/train-$name" \
    --device "$device" --epochs "$EPOCHS" --seed 42 "$@" || return 0
  mkdir -p "$OUT/train-$name"
  cp "$W/train-$name/metrics.jsonl" "$W/train-$name/model.json" "$OUT/train-$name/"
}
embed() { # model device out [extra flags]
  local model=$1 device=$2 out=$3; shift 3
  [ -f "$W/train-$model/model.pt" ] || return 0
  step "embed-$out" ours "$KIT/bin/mlops-embed" --model "$W/train-$model" --data "$W/data" \
    --out "$W/embed-$out" --device "$device" "$@" || return 0
  cp "$W/embed-$out/manifest.json" "$OUT/embed-$out.manifest.json"
}
# The training step alone on one fixed batch, ours and PyTorch eager's (channels-last, as ours),
# alternated twice: the like-for-like speed comparison, both sides with one CPU thread per core.
step_timing() { # arch batch steps precision
  local arch=$1 batch=$2 steps=$3 precision=$4 rep
  local -x OMP_NUM_THREADS
  OMP_NUM_THREADS=$(nproc)
  for rep in 1 2; do
    step "step-ours-$arch-$batch-$precision-$rep" ours_into "$OUT/step_timings.jsonl" \
      "$KIT/bin/train_step" "$arch" "$batch" "$steps" "$precision" "$DEV"
    step "step-pytorch-$arch-$batch-$precision-$rep" "$PY" "$KIT/compare.py" step --kit "$KIT" \
      --device "$DEV" --arch "$arch" --batch "$batch" --steps "$steps" --precision "$precision" \
      --out "$OUT"
  done
}
ours_into() { local file=$1; shift; ours "$@" >> "$file"; }
: > "$OUT/step_timings.jsonl"

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
  # Throughput only: at batch 128 this small network is launch-bound on a large GPU, and two
  # replicas on one device double the launches; at batch 1024 the kernels carry the time.
  train gpu-b1024 "$DEV" --set batch_size=1024
  if [ "$NGPU" -gt 1 ]; then train dp-b1024 cuda --set batch_size=1024
  else train dp-b1024 "$DEV" --set replicas_per_device=2 --set batch_size=1024; fi
fi
# Same model, fp32 on both devices: how far the GPU's kernels (cuDNN, TF32) move embeddings.
embed gpu cpu gpu-model-cpu-fp32 --precision fp32
embed gpu "$DEV" gpu-model-gpu-fp32 --precision fp32
# The defaults (bf16 on a GPU): accuracy of each trained model, throughput.
embed gpu "$DEV" gpu-model --batch-size 512
embed cpu "$DEV" cpu-model
embed dp "$DEV" dp-model
# The embedding comparison: the stage with libtorch's TensorExpr fuser as we set it (off on a
# GPU) and as PyTorch leaves it; torch.jit.load of the same model.pt both ways, each in a fresh
# process, over the same batches.
: > "$OUT/embed_timings.jsonl"
if [ -f "$W/train-gpu/model.pt" ]; then
  embed_ref() { step "embed-pytorch$1" "$PY" "$KIT/compare.py" embed --kit "$KIT" --device "$DEV" \
    --model "$W/train-gpu/model.pt" --data "$W/data" --batch 512 --out "$OUT" ${2:-}; }
  if [ "$DEV" != cpu ]; then
    PYTORCH_TENSOREXPR=1 embed gpu "$DEV" gpu-model-fuser --batch-size 512
    embed_ref -fuser-off --no-fuser
  fi
  embed_ref ""
fi
if [ "$DEV" = cpu ]; then
  step_timing wide 128 5 bf16
else
  step_timing wide 128 300 bf16
  step_timing wide 1024 100 bf16
  step_timing wide 128 300 fp32
fi
step report "$PY" "$KIT/compare.py" report --kit "$KIT" --work "$W" --out "$OUT" --device "$DEV" \
  --epochs "$EPOCHS"
cat "$OUT/gpu_report.md" 2>/dev/null
if [ -s "$OUT/failed.txt" ]; then
  echo "failed steps: $(tr '\n' ' ' < "$OUT/failed.txt")" >&2
  exit 1
fi
