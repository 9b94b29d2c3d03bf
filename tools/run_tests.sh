#!/usr/bin/env bash
# The README's second command: install what is missing, build, run every test.
# GPU tests skip with a message on machines without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 1200
