#!/usr/bin/env bash
# Compares serving through gRPC with the same work offline. For each concurrency and round it
# starts w8a8-server on 127.0.0.1, runs `w8a8-client load` with ignore_eos and a fixed
# max_tokens, stops the server, then runs `w8a8 bench --suite engine` (the same engine
# in-process) with the same model, plan, threads, prompt, requests, max_tokens and
# concurrency. Both processes start cold, so each side pays the same first-call costs. It
# prints both reports, the ratio service / offline of generated tokens per second in every
# round, and the ratio of the medians over the rounds. It also compares CPU time per generated
# token (server plus client against the offline process), which other processes on a shared
# machine disturb less than wall time.
#
# Usage: bench/service_vs_offline.sh [BUILD_DIR [MODEL]]
#   BUILD_DIR  a build directory with w8a8, w8a8-server and w8a8-client (default: build)
#   MODEL      a checkpoint directory or .gguf file
#              (default: ../shared/models/stories260K/stories260K.gguf beside the source tree)
# Environment: PLAN (per-channel), REQUESTS (64), MAX_TOKENS (64), CONCURRENCY ("1 4 8"),
#   ROUNDS (3), THREADS (0: every core), PROMPT ("Once upon a time"), READY_SECONDS (600: the
#   longest wait for the server to load the model), OUT (a directory that keeps the JSON
#   reports), SERVER_FLAGS (extra w8a8-server flags, split at spaces, such as
#   "--stream-interval 8"; the offline run has no counterpart to them), LOAD_FLAGS (extra
#   `w8a8-client load` flags, such as "--unary"). With --unary the client sends Generate
#   calls instead of streams, so its side reports no time to first token or inter-token
#   latency.
# It builds nothing.
set -euo pipefail

source_dir=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${1:-$source_dir/build}
model=${2:-$(dirname "$source_dir")/shared/models/stories260K/stories260K.gguf}
plan=${PLAN:-per-channel}
requests=${REQUESTS:-64}
max_tokens=${MAX_TOKENS:-64}
concurrencies=${CONCURRENCY:-"1 4 8"}
rounds=${ROUNDS:-3}
threads=${THREADS:-0}
prompt=${PROMPT:-Once upon a time}
ready_seconds=${READY_SECONDS:-600}
read -r -a server_flags <<<"${SERVER_FLAGS:-}"
read -r -a load_flags <<<"${LOAD_FLAGS:-}"
export OMP_WAIT_POLICY=passive

server_bin=$build_dir/server/w8a8-server
client_bin=$build_dir/client/w8a8-client
tool_bin=$build_dir/tools/w8a8
for binary in "$server_bin" "$client_bin" "$tool_bin"; do
  if [[ ! -x $binary ]]; then
    echo "missing $binary: build the w8a8, w8a8-server and w8a8-client targets in $build_dir" >&2
    exit 2
  fi
done
if [[ ! -e $model ]]; then
  echo "model not found: $model" >&2
  exit 2
fi

if [[ -n ${OUT:-} ]]; then
  out=$OUT
  mkdir -p "$out"
  work=$(mktemp -d "$out/work.XXXXXX")
else
  work=$(mktemp -d -t w8a8-service-bench.XXXXXX)
  out=$work
fi
server_pid=""

stop_server() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # The server drains for at most --grace-period-seconds (set to 5 below).
    for _ in $(seq 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}

cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# User plus system CPU seconds of a running process, from /proc/PID/stat.
process_cpu_seconds() {
  awk -v ticks="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / ticks }' "/proc/$1/stat"
}

# Starts the server with port 0 and reads the port it bound from its log, then waits until
# health is SERVING. Sets server_pid and address.
start_server() {
  local log=$1
  # Created here, because the background job below opens it only after the fork.
  : >"$log"
  "$server_bin" --model "$model" --plan "$plan" --threads "$threads" --host 127.0.0.1 \
    --port 0 --metrics-port -1 --admin-port -1 --grace-period-seconds 5 "${server_flags[@]}" \
    >"$log" 2>&1 &
  server_pid=$!
  local deadline=$((SECONDS + ready_seconds))
  address=""
  while true; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "w8a8-server exited before it served; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    if [[ -z $address ]]; then
      address=$(sed -n 's/.*listening on \(127\.0\.0\.1:[0-9]*\) (gRPC.*/\1/p' "$log" | head -n 1)
    fi
    if [[ -n $address ]] &&
        "$client_bin" health --address "$address" --timeout-seconds 2 >/dev/null 2>&1; then
      return 0
    fi
    if ((SECONDS >= deadline)); then
      echo "w8a8-server did not report SERVING within $ready_seconds s; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.2
  done
}

echo "model $model, plan $plan, threads $threads, $requests requests x $max_tokens tokens," \
  "prompt '$prompt', $rounds rounds, OMP_WAIT_POLICY=$OMP_WAIT_POLICY," \
  "server flags '${SERVER_FLAGS:-}', load flags '${LOAD_FLAGS:-}'"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
expected=$((requests * max_tokens))
for concurrency in $concurrencies; do
  for round in $(seq "$rounds"); do
    tag=c$concurrency-r$round
    start_server "$work/server-$tag.log"
    echo
    echo "== concurrency $concurrency, round $round: gRPC service at $address" \
      "(load average $(cut -d' ' -f1 /proc/loadavg))"
    server_cpu_start=$(process_cpu_seconds "$server_pid")
    "$client_bin" load --address "$address" --prompt "$prompt" --max-tokens "$max_tokens" \
      --ignore-eos --requests "$requests" --concurrency "$concurrency" --json \
      ${load_flags[@]+"${load_flags[@]}"} \
      >"$work/client-report.json"
    server_cpu_end=$(process_cpu_seconds "$server_pid")
    stop_server
    python3 -c 'import json, sys
report = json.load(open(sys.argv[1]))
report["server_cpu_seconds"] = float(sys.argv[3]) - float(sys.argv[2])
json.dump(report, open(sys.argv[4], "w"), indent=2)' \
      "$work/client-report.json" "$server_cpu_start" "$server_cpu_end" "$out/service-$tag.json"
    cat "$out/service-$tag.json"
    echo

    echo "== concurrency $concurrency, round $round: offline engine" \
      "(load average $(cut -d' ' -f1 /proc/loadavg))"
    "$tool_bin" bench --suite engine --model "$model" --plan "$plan" --threads "$threads" \
      --prompt "$prompt" --max-tokens "$max_tokens" --requests "$requests" \
      --concurrency "$concurrency" --json >"$work/offline-report.json"
    python3 -c 'import json, sys
json.dump(json.load(open(sys.argv[1]))["engine"], open(sys.argv[2], "w"), indent=2)' \
      "$work/offline-report.json" "$out/offline-$tag.json"
    cat "$out/offline-$tag.json"
    echo
    echo

    for file in "$out/service-$tag.json" "$out/offline-$tag.json"; do
      generated=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["generated_tokens"])' "$file")
      if [[ $generated != "$expected" ]]; then
        echo "$file: generated $generated tokens, expected $expected" >&2
        exit 1
      fi
    done
  done
done

echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$rounds" $concurrencies <<'PYTHON'
import json, statistics, sys

out, rounds, concurrencies = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("service / offline; tok/s and p50 latencies are medians over the rounds")
def ms(reports, key):
    # Median p50 in milliseconds, or "-" where a side measured none (unary calls).
    if any(r[key]["count"] == 0 for r in reports):
        return "-"
    return "%.3f ms" % (statistics.median(r[key]["p50"] for r in reports) * 1e3)

print("%11s  %13s  %13s  %6s  %-24s  %9s  %9s  %9s  %9s  %11s  %11s  %9s" % (
    "concurrency", "service tok/s", "offline tok/s", "ratio", "ratio per round",
    "TTFT svc", "TTFT off", "ITL svc", "ITL off", "CPU us/tok svc", "CPU us/tok off",
    "CPU ratio"))
for concurrency in concurrencies:
    def load(side):
        return [json.load(open("%s/%s-c%s-r%d.json" % (out, side, concurrency, r)))
                for r in range(1, rounds + 1)]
    service, offline = load("service"), load("offline")
    def median(reports, key, field=None):
        values = [r[key] if field is None else r[key][field] for r in reports]
        return statistics.median(values)
    service_rate = median(service, "tokens_per_second")
    offline_rate = median(offline, "tokens_per_second")
    per_round = " ".join("%.3f" % (s["tokens_per_second"] / o["tokens_per_second"])
                         for s, o in zip(service, offline))
    # Server plus client CPU per generated token, against the offline process.
    service_cpu = statistics.median(
        (r["server_cpu_seconds"] + r["cpu_seconds"]) / r["generated_tokens"] for r in service)
    offline_cpu = statistics.median(r["cpu_seconds"] / r["generated_tokens"] for r in offline)
    print("%11s  %13.1f  %13.1f  %6.3f  %-24s  %9s  %9s  %9s  %9s  "
          "%14.1f  %14.1f  %9.2f" % (
        concurrency, service_rate, offline_rate, service_rate / offline_rate, per_round,
        ms(service, "time_to_first_token_seconds"), ms(offline, "time_to_first_token_seconds"),
        ms(service, "inter_token_latency_seconds"), ms(offline, "inter_token_latency_seconds"),
        service_cpu * 1e6, offline_cpu * 1e6, service_cpu / offline_cpu))
PYTHON
if [[ -n ${OUT:-} ]]; then echo "JSON reports in $out"; fi
