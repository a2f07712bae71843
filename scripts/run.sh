#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine. It installs the dependencies, builds w8a8-serve
# and starts w8a8-server on the default model (stories260K) with the W8A8 auto plan. Once the
# health check reports SERVING, it sends one Generate call with w8a8-client, prints the reply
# and stops the server.
#
# Environment:
#   BUILD_DIR     build directory (default build)
#   PORT          gRPC port of the server (default 50051); METRICS_PORT (default 9090) and
#                 ADMIN_PORT (default 50052) for its other listeners
#   MODEL         model to serve instead of the default
#   SKIP_INSTALL  set to 1 to skip scripts/install-deps.sh
#   SKIP_BUILD    set to 1 to skip scripts/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
build_dir=${BUILD_DIR:-build}
port=${PORT:-50051}
metrics_port=${METRICS_PORT:-9090}
admin_port=${ADMIN_PORT:-50052}
health_timeout_seconds=120

default_model_url="https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf"

# Downloads stories260K.gguf (about 1.2 MB) from its public Hugging Face location into models/
# and prints the path. Only used when ../shared/models/ has no copy.
download_default_model() {
  local target="$repo/models/stories260K.gguf"
  if [[ ! -s "$target" ]]; then
    mkdir -p "$repo/models"
    echo "downloading $default_model_url to $target" >&2
    curl --fail --location --silent --show-error --output "$target.partial" "$default_model_url"
    mv "$target.partial" "$target"
  fi
  echo "$target"
}

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  bash scripts/install-deps.sh
fi
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  BUILD_DIR="$build_dir" bash scripts/build.sh
fi

model=${MODEL:-}
if [[ -z "$model" ]]; then
  shared_model="$repo/../shared/models/stories260K/stories260K.gguf"
  if [[ -f "$shared_model" ]]; then
    model=$shared_model
  else
    model=$(download_default_model)
  fi
fi

server="$build_dir/server/w8a8-server"
client="$build_dir/client/w8a8-client"
log_file=$(mktemp -t w8a8-server.XXXXXX.log)
"$server" --model "$model" --plan auto --host 127.0.0.1 --port "$port" \
  --metrics-port "$metrics_port" --admin-port "$admin_port" >"$log_file" 2>&1 &
server_pid=$!
stop_server() {
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" || true
  fi
}
trap stop_server EXIT

echo "w8a8-server (pid $server_pid) is loading $model; log: $log_file"
deadline=$((SECONDS + health_timeout_seconds))
until "$client" health --address "127.0.0.1:$port" --timeout-seconds 2 >/dev/null 2>&1; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "w8a8-server exited during start-up:" >&2
    cat "$log_file" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "w8a8-server did not report SERVING within ${health_timeout_seconds} s:" >&2
    cat "$log_file" >&2
    exit 1
  fi
  sleep 0.5
done
echo "health: SERVING"

prompt="Once upon a time"
echo "prompt: $prompt"
printf 'reply: %s' "$prompt"
"$client" generate --address "127.0.0.1:$port" --prompt "$prompt" --timeout-seconds 60

stop_server
trap - EXIT
echo "w8a8-server stopped"
