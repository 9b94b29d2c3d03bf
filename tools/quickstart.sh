#!/usr/bin/env bash
# The README's first command: install, build, run the main job: the whole ReHyAt
# pipeline on the CPU (configs/quickstart.yaml), writing runs/quickstart/report.md.
# Run again, it continues the existing run (finished stages are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/build.sh
./build/rehyat run configs/quickstart.yaml --resume "$@"
echo "rehyat: report at runs/quickstart/report.md"
