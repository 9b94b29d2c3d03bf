#!/usr/bin/env bash
# On the GPU machine: configure with Ninja, build with all cores, run every test (GPU
# cases included), the op and whole-model benchmarks, then print a short summary. Logs and JSON go to
# $OUT when set (the device tool), else to build-gpu/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-build-gpu}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/configure.log" 2>&1 || { tail -50 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
(cd build-gpu && ctest --output-on-failure -j 4 --timeout 900 >"$out/ctest.log" 2>&1)
test_rc=$?
skipped=$(grep -c "Skipped" "$out/ctest.log" || true)
grep -E "tests passed|tests failed|\*\*\*Failed|Not Run" "$out/ctest.log" | tail -20
echo "ctest exit code: $test_rc; lines mentioning skips: $skipped"
if [ "${1:-}" != "--no-bench" ]; then
  ./build-gpu/rehyat bench ops --json "$out/bench_ops.json" 2>&1 | tee "$out/bench_ops.txt"
  ./build-gpu/rehyat bench model --json "$out/bench_model.json" 2>&1 | tee "$out/bench_model.txt"
fi
exit $test_rc
