#!/usr/bin/env bash
# Configures and builds w8a8-serve into build/ (Release). Extra arguments go to CMake's
# configure step, e.g. scripts/build.sh -DW8A8_SANITIZE=ON with BUILD_DIR=build-asan.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} "$@" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
