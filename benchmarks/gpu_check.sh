#!/usr/bin/env bash
# The GPU benchmark set, for a session with a lent GPU. Three parts, each under 10 minutes on one H100/H200, so
# each fits one call of the device tool (which stops a command at 10 minutes); run them back to back on the warm
# machine (a later part reuses what an earlier one compiled when the graphs match: TORCHINDUCTOR_CACHE_DIR).
#   core   1. train, full baseline-v1 shapes, B=16 T=1024, compiled: nanotrain with mHC in its default compiled
#             training form (per-row gains) and in the plain form, vs reference AdamW and batched Muon
#          2. the same at the seed's batch, B=2, compiled: nanotrain (default form) vs reference batched Muon
#          3. decode at 256 new tokens, batch 1 and 64: sampler with KV cache, reference loop, and the compiled
#             CUDA-graph decode step (nanoeval.fastdecode)
#   graphs 4. forward+backward only at B=2 with CUDA graphs (compile mode reduce-overhead): ours vs the reference
#          4b. our whole training step at B=2 with CUDA graphs, as `nanotrain run --cuda-graphs` runs it (the
#             optimiser step stays eager; the step reads nothing back to the host since the sync-free NaN guard)
#          5. eager B=16 step vs the reference with batched Muon (eager is what `--no-compile`, evaluation and
#             the sampler run)
#   extra  6. full-scale recipes at the seed's B=2, compiled: engram-v1 and haar-v5 as ratios to baseline-v1 (their
#             step times give the wall time of the original session's four runs)
#          7. recipes at B=16, eager (the ratio targets)
#          8. profile_step.py at B=16, compiled: per-phase split and top kernels of our step (MHC_FORM=plain
#             in the environment profiles that form instead of the default)
# JSON goes to $OUT when set (the device tool brings back at most 8 files), else benchmarks/results/.
# Each step has its own time limit, so one hang cannot eat the budget; a failed step is logged and the rest run.
# Limits are sized from the H200 runs of 2026-11-26: compiling our full-scale step takes 75-85 s (at each batch
# size), the reference's ~40 s, fastdecode's step ~35 s; an eager sampler run of 256 tokens ~5 s. Each part runs
# in under 10 minutes; a session with 15 minutes of device time gets through `core` and then `graphs`.
# Usage: bash benchmarks/gpu_check.sh [core|graphs|extra|all]   (default all; PY=python3; repo on PYTHONPATH)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/nanolab_inductor}
PART=${1:-all}
case $PART in core|graphs|extra|all) ;; *) echo "usage: $0 [core|graphs|extra|all]" >&2; exit 2 ;; esac
LOG="$DEST/gpu_check_$PART.log"
: >"$LOG"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
} 2>&1 | tee -a "$LOG"

step() {  # step NAME LIMIT_S SCRIPT ARGS...
  local name=$1 limit=$2 script=$3; shift 3
  echo "=== $name: $script $* ($(date -u +%T))" | tee -a "$LOG"
  if ! timeout "$limit" "$PY" "benchmarks/$script" "$@" --out "$DEST/$name.json" 2>&1 | tee -a "$LOG"; then
    echo "FAILED: $name" | tee -a "$LOG"
  fi
}

echo "=== part: $PART" | tee -a "$LOG"

if [[ $PART == core || $PART == all ]]; then
  step train_b16 260 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 --compile \
    --mhc-forms auto,plain --steps 10 --warmup 3
  step train_b2 150 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 --compile \
    --only nanotrain,reference-muon --steps 20 --warmup 3
  # TORCH_LOGS=cudagraphs: Inductor's reason, in the log, if it compiles the decode step but skips its CUDA graph
  # (the JSON's cuda_graphs field says whether that happened; 553 tok/s at B=1 on the H200 suggested it may)
  TORCH_LOGS=cudagraphs step decode 180 bench_decode.py --device cuda --scale full --batch-sizes 1,64 \
    --repeats 2 --warmup 1 --no-recompute
fi
if [[ $PART == graphs || $PART == all ]]; then
  step fwdbwd_b2_graphs 150 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 \
    --compile-mode reduce-overhead --fwd-bwd-only --only nanotrain,reference-adamw --steps 20 --warmup 3
  TORCH_LOGS=cudagraphs step train_b2_graphs 150 bench_train.py --device cuda --scale full --batch-size 2 \
    --seq-len 1024 --compile-mode reduce-overhead --only nanotrain --steps 20 --warmup 3
  step eager_b16 60 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 \
    --only nanotrain,reference-muon --steps 8 --warmup 2
fi
if [[ $PART == extra || $PART == all ]]; then
  step recipes_b2 280 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 --compile \
    --recipes baseline-v1,engram-v1,haar-v5 --steps 15 --warmup 3
  step recipes_b16 45 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 \
    --recipes baseline-v1,engram-v1,haar-v5 --steps 8 --warmup 2
  step profile_b16 120 profile_step.py --device cuda --scale full --batch-size 16 --compile --no-reference \
    --mhc-form "${MHC_FORM:-auto}"
fi
echo "=== done ($(date -u +%T))" | tee -a "$LOG"
