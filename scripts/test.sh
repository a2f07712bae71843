#!/usr/bin/env bash
# Installs dependencies, builds w8a8-serve and runs every test suite: the Release build, then
# the file-parsing tests again under AddressSanitizer and UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh

# Test binaries run two at a time on shared cores; OpenMP workers that spin between parallel
# regions would starve the other process and the serving engine's own thread.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
(cd build && ctest --output-on-failure --timeout 1200 -j 2)

# Parsers of untrusted files (checkpoints, tokenizers, configs) run again with sanitizers.
BUILD_DIR=build-asan bash scripts/build.sh -DW8A8_SANITIZE=ON -DW8A8_BUILD_SERVER=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure --timeout 1200 -j 2 -L sanitize)
