#!/usr/bin/env bash
# Compares w8a8-serve with llama.cpp on one model shape: llama.cpp (prebuilt CPU binaries of
# node-llama-cpp, bench/llamacpp/bench.mjs) on a Q8_0 and a BF16 GGUF file, then
# `w8a8 bench --suite model` (the plans in PLANS) on the same weights, one after
# the other with the same thread count. Prints both sides and the
# ratios of our prefill to llama.cpp's Q8_0 and BF16 prefill, and of our 1- and 8-sequence
# decode to llama.cpp's Q8_0 decode.
#
# Usage: bench/compare_llamacpp.sh Q8_0_GGUF BF16_GGUF W8A8_MODEL
#   or set LLAMACPP_Q8_0, LLAMACPP_BF16 and W8A8_MODEL. W8A8_MODEL is what `w8a8 bench --model`
#   reads (a checkpoint directory or a .gguf file) with the weights of the two GGUF files.
# Environment: BUILD_DIR (default build), THREADS (2), DECODE_TOKENS (64 per sequence),
#   RUNS (3 prefill runs), BENCH_SECONDS (0.5, `w8a8 bench --seconds`), OUT_DIR (a new
#   temporary folder) for the JSON reports, PLANS (per-channel,auto,fp32,bench/int8-lm-head.yaml;
#   the last quantizes lm_head as Q8_0 does, so its decode is the like-for-like comparison),
#   OMP_WAIT_POLICY (active).
set -euo pipefail
cd "$(dirname "$0")/.."

q8_0=${1:-${LLAMACPP_Q8_0:-}}
bf16=${2:-${LLAMACPP_BF16:-}}
ours=${3:-${W8A8_MODEL:-}}
build_dir=${BUILD_DIR:-build}
threads=${THREADS:-2}
decode_tokens=${DECODE_TOKENS:-64}
runs=${RUNS:-3}
bench_seconds=${BENCH_SECONDS:-0.5}
out_dir=${OUT_DIR:-}
# llama.cpp's threads spin between steps, so by default ours do too (OMP_WAIT_POLICY=active).
# On a machine shared with other work, OMP_WAIT_POLICY=passive keeps spinning threads from
# starving the rest, at a cost to our decode figures.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-active}

usage="usage: bench/compare_llamacpp.sh Q8_0_GGUF BF16_GGUF W8A8_MODEL (or set LLAMACPP_Q8_0, LLAMACPP_BF16, W8A8_MODEL)"
fail() {
  echo "compare_llamacpp.sh: $1" >&2
  exit 2
}

[[ -n "$q8_0" && -n "$bf16" && -n "$ours" ]] || fail "three model paths are needed. $usage"
[[ -f "$q8_0" ]] || fail "the Q8_0 GGUF file $q8_0 does not exist; make it with \`w8a8 export-gguf\`."
[[ -f "$bf16" ]] || fail "the BF16 GGUF file $bf16 does not exist; make it with \`w8a8 export-gguf\`."
[[ -e "$ours" ]] || fail "the w8a8 model $ours does not exist; give the checkpoint directory the GGUF files were exported from."
tool="$build_dir/tools/w8a8"
[[ -x "$tool" ]] || fail "$tool is missing; build it with \`cmake --build $build_dir --target w8a8\` or set BUILD_DIR."
command -v node >/dev/null 2>&1 || fail "node is missing; run scripts/install-deps.sh."
if [[ ! -d bench/llamacpp/node_modules ]]; then
  # The same command as scripts/install-deps.sh, which explains why it is not `npm ci`.
  echo "bench/llamacpp/node_modules is missing; running npm install --no-save there" >&2
  (cd bench/llamacpp && npm install --no-save --no-audit --no-fund --loglevel=error)
fi
if [[ -z "$out_dir" ]]; then
  out_dir=$(mktemp -d -t w8a8-llamacpp.XXXXXX)
fi
mkdir -p "$out_dir"

# The commit that the prebuilt libllama-common reports through llama_commit(), which
# node-llama-cpp does not expose. Printed only when python3 can load the library.
llama_commit() {
  local lib=bench/llamacpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama-common.so
  command -v python3 >/dev/null 2>&1 && [[ -f "$lib" ]] || return 0
  python3 - "$lib" <<'EOF' 2>/dev/null || true
import ctypes, sys
library = ctypes.CDLL(sys.argv[1])
commit = library._Z12llama_commitv
commit.restype = ctypes.c_char_p
build_number = library._Z18llama_build_numberv
build_number.restype = ctypes.c_int
print(f"llama.cpp commit {commit().decode()}, build number {build_number()}")
EOF
}

echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "w8a8 binary: $tool, built $(date -u -r "$tool" '+%Y-%m-%d %H:%M UTC')"
echo "repository HEAD: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- core kernels tools || echo ', with uncommitted changes in core, kernels or tools')"
llama_commit
echo "threads: $threads, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, JSON reports in $out_dir"
echo "load before: $(uptime)"

echo "llama.cpp Q8_0: $q8_0" >&2
node bench/llamacpp/bench.mjs --model "$q8_0" --threads "$threads" --runs "$runs" \
  --decode-tokens "$decode_tokens" --json >"$out_dir/llamacpp-q8_0.json"
echo "load after llama.cpp Q8_0: $(uptime)"
echo "llama.cpp BF16: $bf16" >&2
node bench/llamacpp/bench.mjs --model "$bf16" --threads "$threads" --runs "$runs" \
  --decode-tokens "$decode_tokens" --json >"$out_dir/llamacpp-bf16.json"
echo "load after llama.cpp BF16: $(uptime)"
echo "w8a8 bench --suite model: $ours" >&2
"$tool" bench --suite model --model "$ours" --threads "$threads" --seconds "$bench_seconds" \
  --plans "${PLANS:-per-channel,auto,fp32,bench/int8-lm-head.yaml}" --json >"$out_dir/w8a8.json"
echo "load after w8a8: $(uptime)"
echo

node bench/llamacpp/report.mjs --q8-0 "$out_dir/llamacpp-q8_0.json" \
  --bf16 "$out_dir/llamacpp-bf16.json" --ours "$out_dir/w8a8.json"
