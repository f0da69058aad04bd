#!/usr/bin/env bash
# Train the reference model on one CUDA GPU inside a fixed time budget (a short device lease):
# time 80 steps, choose the largest step count (a multiple of 100) that fits what is left, train
# it with that fixed schedule, and pack the model into one tar. The chosen command is printed
# first in run.log, so the run can be repeated with --steps N and no calibration.
# Usage: reference/train_gpu.sh OUTDIR BUDGET_S [reference.train args...]
#   DEVICE (default cuda), WORKERS (data-loader processes, default: all cores but two).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: reference/train_gpu.sh OUTDIR BUDGET_S [args]} budget=${2:?budget in seconds}
shift 2
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
start=$(date +%s)
args=(--device "${DEVICE:-cuda}" --workers "${WORKERS:-$(($(nproc) > 2 ? $(nproc) - 2 : 1))}" --checkpoint-every 1000 "$@")
calibration=$(mktemp -d)
"$PY" -m reference.train --out "$calibration" --steps 80 "${args[@]}" >"$out/calibrate.log" 2>&1
step_s=$("$PY" -c "import json, sys; log = json.load(open(sys.argv[1]))['log']
print((log[-1]['elapsed_s'] - log[39]['elapsed_s']) / (len(log) - 40))" "$calibration/train_log.json")
left=$((budget - ($(date +%s) - start)))
steps=$("$PY" -c "print(max(100, int(($left - 40) / $step_s / 1.1) // 100 * 100))")
echo "calibration: ${step_s} s per step; ${left} s left; python -m reference.train --steps $steps ${args[*]}" | tee "$out/run.log"
timeout $((left - 15)) "$PY" -m reference.train --out "$out/model" --steps "$steps" "${args[@]}" 2>&1 | tee -a "$out/run.log" || true
tar -C "$out" -cf "$out/model.tar" model && rm -rf "$out/model"
