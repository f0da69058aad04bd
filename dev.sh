#!/usr/bin/env bash
# One entry point for people and CI: sets up .venv (idempotent, fast when nothing changed),
# then runs the demo or the test suite.
#   ./dev.sh demo            set up and run the demo job on the embedded default model
#   ./dev.sh test [ARGS]     set up and run the test suite (ARGS go to pytest)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
STAMP="$VENV/.setup-$(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)"

setup() {
  [ -f "$STAMP" ] && return 0
  echo "setting up $VENV (first run: several minutes, torch is large)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torchvision from PyPI does not import beside the CPU-only torch 2.13 file on these
  # machines; this pair installs together (a CUDA build that also runs on the CPU).
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e ".[test,report]"
  rm -f "$VENV"/.setup-*
  touch "$STAMP"
}

# The tests start real Prometheus and Pushgateway servers on loopback, and load the report in a
# real headless Chromium (Debian packages).
services() {
  command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && command -v chromium >/dev/null \
    && return 0
  echo "installing prometheus, prometheus-pushgateway and chromium (apt)" >&2
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway \
    chromium >/dev/null
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo) setup; exec "$VENV/bin/iwp-annotate" demo "$@" ;;
  test) setup; services; exec "$VENV/bin/python" -m pytest "$@" ;;
  setup) setup ;;
  *) echo "usage: ./dev.sh demo | test [pytest args] | setup" >&2; exit 2 ;;
esac
