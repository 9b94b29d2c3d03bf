#!/usr/bin/env bash
# The README's first command: install, build, run the main job.
# For now the main job writes an example checkpoint and inspects it; it becomes the CPU
# quick-start pipeline once the pipeline lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/build.sh
mkdir -p runs/quickstart
./build/rehyat example runs/quickstart/example.safetensors --seed 0
./build/rehyat inspect runs/quickstart/example.safetensors
