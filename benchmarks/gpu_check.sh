#!/usr/bin/env bash
# The GPU benchmark set, for a machine with one CUDA GPU (H100 or H200: the peak table of nanotrain/mfu.py). Usage:
#   bash benchmarks/gpu_check.sh [targets|run|graphs|extra|all]      (default targets; PY=python3)
#   ONLY=train_b2,decode bash benchmarks/gpu_check.sh targets        just the named steps, in the order below
#   PREWARM=0 bash benchmarks/gpu_check.sh targets                   no parallel compile first
#   OUT=DIR bash benchmarks/gpu_check.sh                             JSON and log to DIR (default benchmarks/results)
#
# Compiling, not stepping, takes most of the time: our full-scale step builds in one to two and a half minutes with
# a cold compile cache, the reference's in under a minute, and ~25 s from a warm cache; a part compiles up to ten
# such graphs. So each part first runs its steps' compiles at once, as short processes of one step each
# (`--steps 1 --warmup 1`; decode `--repeats 1 --warmup 0`), split by variant where a step builds several
# ("prewarm"), all writing one Inductor cache (TORCHINDUCTOR_CACHE_DIR; Inductor's compile workers shared out over
# the host's cores). Then it times the steps one after the other on an idle GPU, each building from the warm cache.
# Only the timed phase's numbers are reported; the prewarm's own output goes to a scratch folder.
#
#   targets  every performance target (benchmarks/README.md, "Current results"), the open ones first:
#     train_b16         B=16 compiled: ours against the reference with AdamW and with batched Muon
#     decode            256 new tokens at batch 1 and 64 through nanoeval's inference engine (the decode step
#                       compiled with CUDA graphs; greedy and sampled on the device) against the reference loop
#     train_b2          B=2 T=1024: ours with CUDA graphs (as `nanotrain run` trains there by default; the optimiser
#                       step stays eager) against the reference with batched Muon compiled without graphs.
#                       `cudagraph_skips` in the JSON counts graphs Inductor compiled without a CUDA graph
#     recipes_b2_graphs baseline-v1, engram-v1 and haar-v5 at B=2 with graphs in one process: the ratio targets and
#                       the per-run step times of the four original runs
#     fwdbwd_b2_graphs  forward+backward only at B=2 with CUDA graphs, ours against the reference. Ours is
#                       train_b2's graph, so it warms there
#   run      check_run_graphs.py: a real `nanotrain run engram-v1` at full scale, 120 steps with --compile
#            --no-cuda-graphs and with --cuda-graphs from one seed, then the graphs run resumed for 20 steps; logged
#            losses must agree (2%). Needs the default dataset in data/datasets/rust-default
#   graphs   decode_engram (engram-v1 at batch 1), profile_b2 (profile_step.py at B=2, compiled, each phase started
#            on an idle GPU: device time per phase next to the host's time to issue it), train_b2_nographs (B=2
#            compiled without graphs, ours against the reference)
#   extra    eager B=16 against the reference; the recipes at B=16 eager; profile_step.py at B=16 compiled
#            (MHC_FORM=plain profiles that mHC form); train_b2_regional (bench_train.py --compile-regional: each
#            block compiled on its own)
#
# The log is gpu_check_PART.log next to the JSON. Every process has its own time limit, so one hang cannot eat the
# whole set; a failed step is logged and the rest run. The limits are sized for a cold cache, in case the prewarm
# of a step failed. Each part is sized to fit in ten minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/nanolab_inductor}
PREWARM=${PREWARM:-1}
WARM_LIMIT=${WARM_LIMIT:-300}
PART=${1:-targets}
case $PART in
  targets|run|graphs|extra|all) ;;
  *) echo "usage: $0 [targets|run|graphs|extra|all]   (see the comment at the top of $0)" >&2; exit 2 ;;
esac
LOG="$DEST/gpu_check_$PART.log"
: >"$LOG"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_prewarm.XXXXXX")
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
} 2>&1 | tee -a "$LOG"

FULL="--device cuda --scale full --seq-len 1024"
GRAPHS="--compile-mode reduce-overhead"

# step NAME LIMIT_S WARM SCRIPT ARGS...
#   WARM: how the prewarm splits the step, alternatives joined by "|", each appended to the step's arguments and run
#   as its own process (e.g. "--only=nanotrain|--only=reference-muon"); "all" = one process with the step's own
#   arguments; "-" = no prewarm (nothing compiled, or its graphs are another step's).
# In phase "count" it counts prewarm processes, in "warm" starts them in the background, in "time" runs the step.
step() {
  local name=$1 limit=$2 warm=$3 script=$4; shift 4
  if [[ -n ${ONLY:-} && ,$ONLY, != *,$name,* ]]; then return 0; fi
  if [[ $PHASE == count || $PHASE == warm ]]; then
    [[ $warm == - ]] && return 0
    local alts alt i=0 short
    IFS='|' read -ra alts <<<"$warm"
    case $script in
      bench_decode.py) short="--repeats 1 --warmup 0" ;;
      *) short="--steps 1 --warmup 1" ;;
    esac
    for alt in "${alts[@]}"; do
      i=$((i + 1))
      if [[ $PHASE == count ]]; then NWARM=$((NWARM + 1)); continue; fi
      [[ $alt == all ]] && alt=""
      # shellcheck disable=SC2086  # $alt and $short are flag lists
      ( if timeout "$WARM_LIMIT" "$PY" "benchmarks/$script" "$@" $alt $short --out "$SCRATCH/$name.$i.json" \
            >"$SCRATCH/$name.$i.log" 2>&1; then
          echo "prewarm $name${alt:+ $alt}: done ($(date -u +%T))" | tee -a "$LOG"
        else
          { echo "prewarm $name${alt:+ $alt}: FAILED ($(date -u +%T)); its last lines:"
            tail -n 5 "$SCRATCH/$name.$i.log" | sed 's/^/    /'; } | tee -a "$LOG"
        fi ) &
    done
    return 0
  fi
  echo "=== $name: $script $* ($(date -u +%T))" | tee -a "$LOG"
  if ! timeout "$limit" "$PY" "benchmarks/$script" "$@" --out "$DEST/$name.json" 2>&1 | tee -a "$LOG"; then
    echo "FAILED: $name" | tee -a "$LOG"
  fi
}

steps_of_part() {
  local part=$1
  if [[ $part == targets ]]; then  # open targets first, in case the call is cut
    step train_b16 230 "--only=nanotrain|--only=reference-adamw" bench_train.py $FULL --batch-size 16 --compile \
      --steps 10 --warmup 3
    # TORCH_LOGS: Inductor's reason if it skips a CUDA graph, and Dynamo's for any recompile (one frame per batch
    # size is expected)
    TORCH_LOGS=cudagraphs,recompiles step decode 330 "--batch-sizes=1|--batch-sizes=64" bench_decode.py \
      --device cuda --scale full --batch-sizes 1,64 --repeats 3 --warmup 1
    step train_b2 200 "--only=nanotrain|--only=reference-muon" bench_train.py $FULL --batch-size 2 $GRAPHS \
      --reference-compile-mode default --only nanotrain,reference-muon --steps 30 --warmup 3
    step recipes_b2_graphs 300 "--recipes=engram-v1|--recipes=haar-v5" bench_train.py $FULL --batch-size 2 $GRAPHS \
      --recipes baseline-v1,engram-v1,haar-v5 --steps 20 --warmup 3
    step fwdbwd_b2_graphs 150 "--only=reference-adamw" bench_train.py $FULL --batch-size 2 $GRAPHS --fwd-bwd-only \
      --only nanotrain,reference-adamw --steps 20 --warmup 3
  elif [[ $part == run ]]; then
    step run_graphs 540 - check_run_graphs.py --recipe engram-v1 --scale full --steps 120 --resume-steps 20
  elif [[ $part == graphs ]]; then
    step decode_engram 170 all bench_decode.py --device cuda --scale full --recipe engram-v1 --batch-sizes 1 \
      --repeats 3 --warmup 1
    step profile_b2 200 - profile_step.py --device cuda --scale full --batch-size 2 --compile --isolate
    step train_b2_nographs 200 "--only=nanotrain|--only=reference-muon" bench_train.py $FULL --batch-size 2 \
      --compile --only nanotrain,reference-muon --steps 20 --warmup 3
  elif [[ $part == extra ]]; then
    step eager_b16 60 - bench_train.py $FULL --batch-size 16 --only nanotrain,reference-muon --steps 8 --warmup 2
    step recipes_b16 45 - bench_train.py $FULL --batch-size 16 --recipes baseline-v1,engram-v1,haar-v5 --steps 8 \
      --warmup 2
    step profile_b16 120 - profile_step.py --device cuda --scale full --batch-size 16 --compile --no-reference \
      --mhc-form "${MHC_FORM:-auto}"
    step train_b2_regional 150 all bench_train.py $FULL --batch-size 2 $GRAPHS --compile-regional --only nanotrain \
      --steps 30 --warmup 3
  fi
}

if [[ $PART == all ]]; then PARTS=(targets run graphs extra); else PARTS=("$PART"); fi
for part in "${PARTS[@]}"; do
  echo "=== part: $part ($(date -u +%T))" | tee -a "$LOG"
  if [[ $PREWARM != 0 ]]; then
    PHASE=count NWARM=0
    steps_of_part "$part"
    if ((NWARM > 0)); then
      cores=$(nproc)
      threads=$(((cores + NWARM - 1) / NWARM))
      echo "--- prewarm: $NWARM processes at once, $threads compile threads each ($(date -u +%T))" | tee -a "$LOG"
      PHASE=warm
      TORCHINDUCTOR_COMPILE_THREADS=$threads steps_of_part "$part"
      wait
      echo "--- prewarm over ($(date -u +%T))" | tee -a "$LOG"
    fi
  fi
  PHASE=time
  steps_of_part "$part"
done
rm -rf "$SCRATCH"
echo "=== done ($(date -u +%T))" | tee -a "$LOG"
