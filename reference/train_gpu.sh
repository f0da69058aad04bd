#!/usr/bin/env bash
# Train the reference model on one CUDA GPU inside a fixed time budget (a short device lease):
# time 80 steps, choose the largest step count (a multiple of 100) that fits what is left with a
# 25 % margin, train it with that fixed schedule, and pack the model into one tar. The chosen
# command is printed first in run.log, so the run can be repeated with --steps N and no
# calibration. Fails, packing nothing, if the run does not finish its schedule.
# Usage: reference/train_gpu.sh OUTDIR BUDGET_S [reference.train args, not --steps/--stop-after]
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
trap 'rm -rf "$calibration"' EXIT
"$PY" -m reference.train --out "$calibration" --steps 80 "${args[@]}" >"$out/calibrate.log" 2>&1
# Steps 40-79: past start-up, but the loader's prefetched batches still hide some rendering time
# (the shipped run calibrated at 0.147 s and averaged 0.166 s), hence the margin.
step_s=$("$PY" -c "import json, sys; log = json.load(open(sys.argv[1]))['log']
print((log[-1]['elapsed_s'] - log[39]['elapsed_s']) / (len(log) - 40))" "$calibration/train_log.json")
left=$((budget - ($(date +%s) - start)))
steps=$("$PY" -c "print(int(($left - 40) / $step_s / 1.25) // 100 * 100)")
if [ "$steps" -lt 100 ]; then
  echo "calibration: ${step_s} s per step; ${left} s left is too little for 100 steps" | tee "$out/run.log" >&2
  exit 1
fi
echo "calibration: ${step_s} s per step; ${left} s left; python -m reference.train --steps $steps ${args[*]}" | tee "$out/run.log"
set +e
timeout $((left - 15)) "$PY" -m reference.train --out "$out/model" --steps "$steps" "${args[@]}" 2>&1 | tee -a "$out/run.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "training did not finish (exit $status; 124: out of time); checkpoints, if any, are in $out/model" | tee -a "$out/run.log" >&2
  exit "$status"
fi
tar -C "$out" -cf "$out/model.tar" model && rm -rf "$out/model"
