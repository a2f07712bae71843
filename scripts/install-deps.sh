#!/usr/bin/env bash
# Installs every build, test and run-time dependency of w8a8-serve from Debian 12 packages,
# plus the npm packages that tests use as references. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config git ca-certificates curl
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libdnnl-dev prometheus-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libyaml-cpp-dev libpcre2-dev libssl-dev openssl
  prometheus
)
# Some images already carry kubectl or Node.js from other packages, which Debian's would conflict
# with, so those are only added when the command is missing.
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ -f tests/reference/package.json ]]; then
  (cd tests/reference && npm ci --no-audit --no-fund --loglevel=error)
fi
if [[ -f tests/deploy/package.json ]]; then
  (cd tests/deploy && npm ci --no-audit --no-fund --loglevel=error)
fi
# node-llama-cpp lists the prebuilt llama.cpp binaries of every platform as optional
# dependencies, and the registry returns 404 for some of them (mac-x64 3.22.1, for one), so the
# lockfile cannot name them all and `npm ci` rejects it. `npm install --no-save` installs the locked versions and leaves
# the lockfile as it is; bench/llamacpp/.npmrc skips the optional packages and install scripts.
if [[ -f bench/llamacpp/package.json ]]; then
  (cd bench/llamacpp && npm install --no-save --no-audit --no-fund --loglevel=error)
fi
