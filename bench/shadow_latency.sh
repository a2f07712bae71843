#!/usr/bin/env bash
# Compares live request latency with shadow comparison off and on: the same load from
# `w8a8-client load` against w8a8-server on 127.0.0.1, once with --shadow-fraction 0 and once
# with every finished request replayed on the FP32 reference.
#
# Usage: bench/shadow_latency.sh [MODEL]   (BUILD_DIR defaults to build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
model=${1:-../shared/models/stories260K/stories260K.gguf}
requests=${REQUESTS:-96}
concurrency=${CONCURRENCY:-4}
port=${PORT:-50061}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

run_load() {
  local fraction=$1
  local log
  log=$(mktemp -t w8a8-shadow-bench.XXXXXX.log)
  "$build_dir/server/w8a8-server" --model "$model" --plan per-channel --host 127.0.0.1 \
    --port "$port" --metrics-port -1 --admin-port 0 --shadow-fraction "$fraction" \
    --shadow-queue 1024 >"$log" 2>&1 &
  local pid=$!
  local deadline=$((SECONDS + 60))
  until "$build_dir/client/w8a8-client" health --address "127.0.0.1:$port" \
      --timeout-seconds 2 >/dev/null 2>&1; do
    if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      echo "w8a8-server did not become ready; log: $log" >&2
      kill "$pid" 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
  "$build_dir/client/w8a8-client" load --address "127.0.0.1:$port" --concurrency "$concurrency" \
    --requests "$requests" --max-tokens 64 --temperature 0 --prompt "Once upon a time" --json
  kill -TERM "$pid"
  wait "$pid" || true
  rm -f "$log"
}

echo "shadow off:"
run_load 0
echo "shadow on (every request):"
run_load 1
