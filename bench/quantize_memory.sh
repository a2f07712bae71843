#!/usr/bin/env bash
# Measures the peak resident memory of `w8a8 quantize` against the sizes of its input and
# output, on a Llama-3.2-1B-shaped checkpoint with seeded random weights.
#
# Usage: bench/quantize_memory.sh [WORK_DIR]   (BUILD_DIR defaults to build)
# Needs about 5 GB of free disk in WORK_DIR (default: a new temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${BUILD_DIR:-build}/tools/w8a8
work=${1:-$(mktemp -d -t w8a8-quantize-memory.XXXXXX)}
plan=${PLAN:-auto}
[[ -x "$tool" ]] || { echo "$tool not found: run scripts/build.sh first" >&2; exit 1; }

source_dir="$work/llama-3.2-1b"
out_dir="$work/llama-3.2-1b-w8a8-$plan"
if [[ ! -f "$source_dir/config.json" ]]; then
  "$tool" make-model --preset llama-3.2-1b --out "$source_dir" --seed 1 >/dev/null
fi
rm -rf "$out_dir"
# The source is memory-mapped, so its pages count in the resident set but are file-backed and
# reclaimable. Anonymous memory (RssAnon) is what the quantizer itself holds, so both are
# sampled every 100 ms.
start=$SECONDS
"$tool" quantize --model "$source_dir" --plan "$plan" --out "$out_dir" >/dev/null &
pid=$!
peak_anon_kib=0
peak_rss_kib=0
while kill -0 "$pid" 2>/dev/null; do
  if status=$(cat "/proc/$pid/status" 2>/dev/null); then
    anon=$(awk '/^RssAnon:/ {print $2}' <<<"$status")
    rss=$(awk '/^VmRSS:/ {print $2}' <<<"$status")
    ((${anon:-0} > peak_anon_kib)) && peak_anon_kib=$anon
    ((${rss:-0} > peak_rss_kib)) && peak_rss_kib=$rss
  fi
  sleep 0.1
done
wait "$pid"
seconds=$((SECONDS - start))

bytes_of() { du -sb --apparent-size "$1"/*.safetensors | awk '{sum += $1} END {print sum}'; }
source_bytes=$(bytes_of "$source_dir")
out_bytes=$(bytes_of "$out_dir")
awk -v anon="$((peak_anon_kib * 1024))" -v rss="$((peak_rss_kib * 1024))" -v src="$source_bytes" \
    -v out="$out_bytes" -v s="$seconds" -v plan="$plan" 'BEGIN {
  gib = 1024 * 1024 * 1024
  printf "quantize --plan %s of a Llama-3.2-1B-shaped checkpoint in %d s\n", plan, s
  printf "  source (BF16 safetensors)        %6.2f GiB\n", src / gib
  printf "  output (int8 + FP32 rest)        %6.2f GiB\n", out / gib
  printf "  peak anonymous memory            %6.2f GiB  (%.2fx the output)\n", anon / gib, anon / out
  printf "  peak resident set (with mapped)  %6.2f GiB\n", rss / gib
  printf "{\"plan\": \"%s\", \"seconds\": %d, \"source_bytes\": %.0f, \"output_bytes\": %.0f, \"peak_anon_bytes\": %.0f, \"peak_rss_bytes\": %.0f}\n", plan, s, src, out, anon, rss
}'
