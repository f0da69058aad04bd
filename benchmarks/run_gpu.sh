#!/usr/bin/env bash
# The GPU checks of issue #5 in one run, for a short lease on a CUDA machine, with the real
# Qwen2.5-VL-7B configuration (random weights, bf16). Parts, each under its own time limit so
# that one overrun still leaves the others' results:
#   0. the CUDA-only tests (PC-MMR's graphs, the packed vision attention, syncs at layer K).
#   1. bench_model, batch 1, the default 16x336x336 video and 672x672 image, the vision
#      attention packed (as the pipeline runs it); it first times the vision encoder alone,
#      per-window loop against packed, and checks that both give the same features;
#   2. the same with transformers' per-window loop, for the end-to-end comparison on this device;
#   3. batch 1 at the paper's scale: a 64-frame 392x392 video (6,272 visual tokens, as many as
#      LLaVA-OneVision's 32 x 196);
#   4. the batch sweep (items/s at the largest batch that fits, unpruned vs 11.1 %), packed;
#   5. bench_prune_overhead: the parts of the layer-K overhead alone (selection halves, peers,
#      the fidelity recording), with the kernels each launches;
#   6. bench_select --quick on CUDA (selection time and memory as N grows);
#   7. profile_vision: where the 64x392x392 video's vision encoder spends its time, by operator
#      family, with the patch embedding as a matrix product and as transformers' Conv3d, and the
#      whole encoder timed with each segment-attention path and (--compile) with compiled blocks;
#   8. profile_prefill: the 64x392x392 video's whole prefill profiled with no synchronisation
#      inside, unpruned vs 11.1 %, at batch 1, 4 and 8 (host vs device time per stage, device busy).
#   9. bench_throughput (issue #23): the generation engine against static generate() batches, IWP at
#      11.1 % against unpruned, 256 items per workload at 128 varying new tokens, pruning at K = 2;
#  10. the same at K = 0 (the pruning layer that raises the ideal ratio most). Both with the vision
#      blocks not compiled: compiling the 7B's takes 45-53 s per graph, which would not leave the
#      arms their time within the part's limit; every arm runs the same vision tower.
# bench_model compiles the vision blocks on CUDA, as the pipeline does (--vision-compile off
# to compare); each of its processes compiles a video graph and an image graph (45-53 s on the H100).
# Usage: benchmarks/run_gpu.sh OUTDIR [PARTS, default "0 1 2 3 4 5 6 7 8 9 10"]   (one JSON per part and run.log, all output,
# land in OUTDIR; the files of a new run replace that GPU's in benchmarks/results/<gpu>/, earlier runs stay in git)
# Needs torch with CUDA and transformers 5.24.x (the pinned range). Where the machine has another
# transformers, install the 5.24 wheel beside it first, e.g.
#   pip install --no-deps --target /tmp/site transformers-5.24.0-py3-none-any.whl && export PYTHONPATH=/tmp/site
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/run_gpu.sh OUTDIR [PARTS]}
parts=" ${2:-0 1 2 3 4 5 6 7 8 9 10} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
bench() {  # bench NAME LIMIT_S ARGS...: one bench_model run, its JSON named NAME
  local name=$1 limit=$2
  echo "=== $name: ${*:3}" | tee -a "$out/run.log"
  timeout "$limit" "$PY" -m benchmarks.bench_model --device cuda --config 7b --out "$out/$name.json" "${@:3}" \
    2>&1 | tee -a "$out/run.log"
}
[[ $parts == *" 0 "* ]] && timeout "${TEST_LIMIT_S:-180}" "$PY" -m pytest \
  --noconftest -q -p no:cacheprovider tests/iwp_ops/test_pcmmr_cuda_graphs.py \
  tests/iwp_ops/models/test_vision_attention_cuda.py tests/iwp_ops/models/test_pruning_cuda.py 2>&1 | tee -a "$out/run.log"
[[ $parts == *" 1 "* ]] && bench bench_model_7b "${PART_LIMIT_S:-230}" --repeats 3 --no-batch
[[ $parts == *" 2 "* ]] && bench bench_model_7b_loop "${PART_LIMIT_S:-230}" --repeats 3 --no-batch --vision-attention loop
[[ $parts == *" 3 "* ]] && bench bench_model_7b_long "${PART_LIMIT_S:-230}" --repeats 3 --no-batch \
  --frames 64 --video-size 392x392
[[ $parts == *" 4 "* ]] && bench bench_model_7b_batch "${SWEEP_LIMIT_S:-300}" --repeats 1 --batch-repeats 1 \
  --max-batch "${MAX_BATCH:-512}"
[[ $parts == *" 5 "* ]] && timeout "${PART_LIMIT_S:-120}" "$PY" -m benchmarks.bench_prune_overhead --device cuda \
  --out "$out/bench_prune_overhead.json" 2>&1 | tee -a "$out/run.log"
[[ $parts == *" 6 "* ]] && timeout "${SELECT_LIMIT_S:-60}" "$PY" -m benchmarks.bench_select --device cuda --quick \
  --out "$out/bench_select_cuda.json" 2>&1 | tee -a "$out/run.log"
if [[ $parts == *" 7 "* ]]; then
  timeout "${PART_LIMIT_S:-120}" "$PY" -m benchmarks.profile_vision --device cuda --patch-embed conv \
    --out "$out/profile_vision_conv.json" 2>&1 | tee -a "$out/run.log"
  timeout "${COMPILE_LIMIT_S:-200}" "$PY" -m benchmarks.profile_vision --device cuda --patch-embed linear --compile \
    --out "$out/profile_vision_compiled.json" 2>&1 | tee -a "$out/run.log"
fi
[[ $parts == *" 8 "* ]] && echo "=== profile_prefill: --batches 1 4 8" | tee -a "$out/run.log" && timeout "${PART_LIMIT_S:-200}" "$PY" -m benchmarks.profile_prefill --device cuda --repeats 3 \
  --batches 1 4 8 --out "$out/profile_prefill_batches.json" 2>&1 | tee -a "$out/run.log"
for part in 9 10; do
  [[ $parts == *" $part "* ]] || continue
  layer=$([[ $part == 9 ]] && echo 2 || echo 0)
  echo "=== bench_throughput: --layer $layer" | tee -a "$out/run.log"
  timeout "${THROUGHPUT_LIMIT_S:-300}" "$PY" -m benchmarks.bench_throughput --device cuda --config 7b --new-tokens 128 \
    --layer "$layer" --vision-compile off --out "$out/bench_throughput_7b_k$layer.json" 2>&1 | tee -a "$out/run.log"
done
exit 0
