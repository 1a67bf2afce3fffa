#!/usr/bin/env bash
# The GPU benchmark set, for a session with a lent GPU. Five parts, each under 10 minutes on one H100/H200, so
# each fits one call of the device tool (which stops a command at 10 minutes); run them back to back on the warm
# machine (a later part reuses what an earlier one compiled when the graphs match: TORCHINDUCTOR_CACHE_DIR).
# The order is the order of what is still open (benchmarks/README.md, fifth H200 run).
#   core   1. train, full baseline-v1 shapes, at the seed's batch B=2 T=1024: ours with CUDA graphs (as `nanotrain
#             run` trains there by default; the optimiser step stays eager) against the reference with batched
#             Muon, compiled without graphs (the target's yardstick), in one run: 33.35 ms against 55.0 in the
#             fourth run (1.65x); ours alone 32.9 ms in the fifth. The JSON row's `cudagraph_skips` counts graphs
#             Inductor compiled without a CUDA graph (0 = all replayed)
#          2. train at B=16, compiled: ours against the reference with AdamW and with batched Muon (0.944 of
#             batched Muon in the third run, the one training target not met; untimed since)
#          3. haar-v5 at B=2 with CUDA graphs (32.5 ms in the fifth run; with step 1 and the engram-v1 step time of
#             `run`, the original session's four runs: 20.5 minutes of steps, target 25). ~9 minutes in all with a
#             cold compile cache
#   decode 4. decode at 256 new tokens, batch 1 and 64: sampler with KV cache, reference loop, and
#             nanoeval.fastdecode's compiled decode step and prefill chunk with CUDA graphs: 1,040 and 55.8k tok/s
#             in the fourth run (both targets met), with the eager prefill and Dynamo's guards on every token;
#             both are gone since (seventh and eighth sessions), untimed. `fastdecode-sample` draws with
#             temperature 0.7 and top-k 40 on the device (eighth session, untimed)
#          5. decode of engram-v1 (the front-door model) at batch 1: 974 tok/s in the fifth run (eager prefill)
#   run    6. check_run_graphs.py: a real `nanotrain run engram-v1` at full scale, 120 steps with --compile
#             --no-cuda-graphs and with --cuda-graphs from the same seed, then the graphs run resumed for 20 steps:
#             logged losses must agree (2%), steady step times side by side. Needs the dataset: name
#             data/datasets/rust-default (16 MB) in the device tool's `carry`. It passed in the fifth run (36.1 ms
#             against 74.0, losses within 1.6e-5), and graphs became the default for one-GPU runs at batch <= 4.
#             ~5.5 minutes (three compiles)
#   graphs 7. forward+backward only at B=2 with CUDA graphs: ours vs the reference (166k against 188k tok/s in the
#             fifth run; target 150k, met)
#          8. profile_step.py at B=2, compiled, ours and the reference, each phase started on an idle GPU
#             (--isolate): per-phase CUDA-event times next to the host's time to issue the phase, and the top
#             operators with call counts. Without --isolate (fourth run) a full launch queue blurred the host column
#          9. train at B=2, compiled without graphs (`--no-cuda-graphs`): ours vs the reference with batched Muon
#             (0.80 in the fourth run, before the eager update's op cut)
#   extra 10. eager B=16 step vs the reference with batched Muon (eager is what `--no-compile`, evaluation and
#             the sampler run)
#         11. recipes at B=16, eager (the ratio targets)
#         12. profile_step.py at B=16, compiled: per-phase split and top kernels of our step (MHC_FORM=plain
#             in the environment profiles that form instead of the default)
#         13. our B=2 step with graphs, compiled per block (`--compile-regional`): its `build_s` and step time
#             against step 1's. On the CPU (20 layers) it built in 52-61 s against 163-165 s, at 9-15% more
#             step time; if the GPU step holds, it would cut each run's ~90 s of compiling
# JSON goes to $OUT when set (the device tool brings back at most 8 files), else benchmarks/results/.
# Each step has its own time limit, so one hang cannot eat the budget; a failed step is logged and the rest run.
# Limits are sized from the H200 runs of 2026-11-26/27: with a cold compile cache, building our full-scale step takes
# 75-115 s (at each batch size and compile mode; haar-v5 with graphs 145 s; 24 s with the cache warm), the
# reference's ~25-50 s, fastdecode's step ~35-50 s; an eager sampler run of 256 tokens ~5-7 s. A session's 15 minutes
# of device time, machine start included, fit one part plus a ~4-minute command: the steps still open first
# (docs/DEVELOPING.md, "Measuring on a lent GPU", lists them).
# Usage: bash benchmarks/gpu_check.sh [core|decode|run|graphs|extra|all]   (default all; PY=python3; repo on PYTHONPATH)
#        ONLY=train_b2,profile_b2 bash benchmarks/gpu_check.sh all   runs just the named steps, in the order above
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/nanolab_inductor}
PART=${1:-all}
case $PART in
  core|decode|run|graphs|extra|all) ;;
  *) echo "usage: $0 [core|decode|run|graphs|extra|all]" >&2; exit 2 ;;
esac
LOG="$DEST/gpu_check_$PART.log"
: >"$LOG"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
} 2>&1 | tee -a "$LOG"

step() {  # step NAME LIMIT_S SCRIPT ARGS...
  local name=$1 limit=$2 script=$3; shift 3
  if [[ -n ${ONLY:-} && ,$ONLY, != *,$name,* ]]; then return 0; fi
  echo "=== $name: $script $* ($(date -u +%T))" | tee -a "$LOG"
  if ! timeout "$limit" "$PY" "benchmarks/$script" "$@" --out "$DEST/$name.json" 2>&1 | tee -a "$LOG"; then
    echo "FAILED: $name" | tee -a "$LOG"
  fi
}

echo "=== part: $PART" | tee -a "$LOG"

if [[ $PART == core || $PART == all ]]; then
  step train_b2 230 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 \
    --compile-mode reduce-overhead --reference-compile-mode default --only nanotrain,reference-muon \
    --steps 30 --warmup 3
  step train_b16 230 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 --compile \
    --steps 10 --warmup 3
  step recipes_b2_graphs 200 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 \
    --compile-mode reduce-overhead --recipes haar-v5 --steps 30 --warmup 3
fi
if [[ $PART == decode || $PART == all ]]; then
  # TORCH_LOGS: Inductor's reason if it skips a CUDA graph, and Dynamo's for any recompile (one frame per batch
  # size and per function, step and prefill chunk, is expected)
  TORCH_LOGS=cudagraphs,recompiles step decode 330 bench_decode.py --device cuda --scale full --batch-sizes 1,64 \
    --repeats 3 --warmup 1 --no-recompute
  step decode_engram 170 bench_decode.py --device cuda --scale full --recipe engram-v1 --batch-sizes 1 \
    --repeats 3 --warmup 1 --no-recompute
fi
if [[ $PART == run || $PART == all ]]; then
  step run_graphs 540 check_run_graphs.py --recipe engram-v1 --scale full --steps 120 --resume-steps 20
fi
if [[ $PART == graphs || $PART == all ]]; then
  step fwdbwd_b2_graphs 150 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 \
    --compile-mode reduce-overhead --fwd-bwd-only --only nanotrain,reference-adamw --steps 20 --warmup 3
  step profile_b2 200 profile_step.py --device cuda --scale full --batch-size 2 --compile --isolate
  step train_b2_nographs 200 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 --compile \
    --only nanotrain,reference-muon --steps 20 --warmup 3
fi
if [[ $PART == extra || $PART == all ]]; then
  step eager_b16 60 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 \
    --only nanotrain,reference-muon --steps 8 --warmup 2
  step recipes_b16 45 bench_train.py --device cuda --scale full --batch-size 16 --seq-len 1024 \
    --recipes baseline-v1,engram-v1,haar-v5 --steps 8 --warmup 2
  step profile_b16 120 profile_step.py --device cuda --scale full --batch-size 16 --compile --no-reference \
    --mhc-form "${MHC_FORM:-auto}"
  step train_b2_regional 150 bench_train.py --device cuda --scale full --batch-size 2 --seq-len 1024 \
    --compile-mode reduce-overhead --compile-regional --only nanotrain --steps 30 --warmup 3
fi
echo "=== done ($(date -u +%T))" | tee -a "$LOG"
