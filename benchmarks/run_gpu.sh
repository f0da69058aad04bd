#!/usr/bin/env bash
# The GPU checks of issue #5 in one run, for a short lease on a CUDA machine:
#   1. bench_model.py with the real Qwen2.5-VL-7B configuration (random weights, bf16): prefill,
#      end-to-end generate, memory and the FLOP ideal at 100 / 35.3 / 22.2 / 11.1 %, then the
#      batch sweep (items/s at the largest batch that fits the GPU's memory, unpruned vs 11.1 %);
#   2. bench_select.py --quick on CUDA (selection time and memory as N grows).
# Usage: benchmarks/run_gpu.sh OUTDIR [bench_model.py args, e.g. --no-batch]   (JSON + logs land in OUTDIR)
# Each part has its own time limit so that one overrun still leaves the other's results.
# Needs torch with CUDA and transformers 5.24.x (the pinned range). Where the machine has another
# transformers, install the 5.24 wheel beside it first, e.g.
#   pip install --no-deps --target /tmp/site transformers-5.24.0-py3-none-any.whl && export PYTHONPATH=/tmp/site
# (the committed H200 runs did this, with the image's own torch 2.11).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/run_gpu.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
timeout "${MODEL_LIMIT_S:-420}" "$PY" benchmarks/bench_model.py --device cuda --config 7b --repeats 3 \
  --batch-repeats 1 --max-batch "${MAX_BATCH:-512}" --out "$out/bench_model_7b.json" "${@:2}" 2>&1 | tee "$out/bench_model_7b.log"
timeout "${SELECT_LIMIT_S:-100}" "$PY" benchmarks/bench_select.py --device cuda --quick \
  --out "$out/bench_select_cuda.json" 2>&1 | tee "$out/bench_select_cuda.log"
