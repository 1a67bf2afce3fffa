#!/usr/bin/env bash
# The whole GPU benchmark set in one call (at most 9.5 minutes on one H100/H200), for a session with a lent GPU:
#   1. train, full baseline-v1 shapes, B=16 T=1024, compiled: nanotrain vs reference AdamW vs reference batched Muon
#   2. the same at the seed's batch, B=2, eager (a second compile of three models would not fit the budget)
#   3. full-scale recipes at B=16 and at the seed's B=2, eager: engram-v1 and haar-v5 as ratios to baseline-v1
#      (the B=2 step times give the wall time of the original session's four runs)
#   4. decode at 256 new tokens, batch 1 and 64: sampler (KV cache / recompute), reference loop, compiled fastdecode
#   5. forward+backward only at B=2 with CUDA graphs (compile mode reduce-overhead): ours vs the reference
# JSON goes to $OUT when set (the device tool brings back at most 8 files), else benchmarks/results/.
# Each step has its own time limit, so one hang cannot eat the budget; a failed step is logged and the rest run.
# Limits are sized from the first H200 run (2026-11-26): compiling the three B=16 variants took ~120 s, the eager
# steps ~20 s each, decode's three eager variants ~65 s before fastdecode compiles (110 s was too little).
# Usage: bash benchmarks/gpu_check.sh      (PY=python3 by default; the repo is put on PYTHONPATH)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/nanolab_inductor}
LOG="$DEST/gpu_check.log"
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

step train_b16 190 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 --compile \
  --steps 15 --warmup 3
step train_b2 35 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 --steps 20 --warmup 3
step recipes_b16 40 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 \
  --recipes baseline-v1,engram-v1,haar-v5 --steps 8 --warmup 2
step recipes_b2 35 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 \
  --recipes baseline-v1,engram-v1,haar-v5 --steps 15 --warmup 3
step decode 180 bench_decode.py --device cuda --scale full --batch-sizes 1,64 --repeats 3 --warmup 1
step fwdbwd_b2_graphs 80 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 \
  --compile-mode reduce-overhead --fwd-bwd-only --only nanotrain,reference-adamw --steps 20 --warmup 3
echo "=== done ($(date -u +%T))" | tee -a "$LOG"
