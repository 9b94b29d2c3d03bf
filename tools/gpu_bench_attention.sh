#!/usr/bin/env bash
# On the GPU machine: build the attention tests and the CLI in build-gpu with all cores,
# run the attention tests, the attention benchmark (full, then chunked Tc=3 To=1) and the
# peer (python3 .peer/peer_attention.py, carried: it is git-ignored) in the same job.
# Logs go to $OUT (default ./gpu-out). Usage: tools/gpu_bench_attention.sh [--skip-tests]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j"$(nproc)" --target test_attention test_hybrid_attention rehyat_cli 2>&1 | tee "$OUT/build.log" | grep -E "error|FAILED|warning: .*attention" | head -40
if [[ "${1:-}" != "--skip-tests" ]]; then
  ./build-gpu/tests/test_attention 2>&1 | tee "$OUT/test_attention.log" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure|Expected|actual|Trace|B[0-9]+ Nq" | head -60
  ./build-gpu/tests/test_hybrid_attention 2>&1 | tee "$OUT/test_hybrid_attention.log" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure|Expected|actual|Trace|Which is" | head -60
fi
if [[ -x build-gpu/rehyat ]]; then
  ./build-gpu/rehyat bench attention --json "$OUT/bench_attention_full.json" 2>&1 | tee "$OUT/bench_attention.log"
  ./build-gpu/rehyat bench attention --chunk-frames 3 --overlap-frames 1 --json "$OUT/bench_attention_chunked.json" 2>&1 | tee -a "$OUT/bench_attention.log"
  ./build-gpu/rehyat bench attention --kind rehyat --causal --chunk-frames 3 --overlap-frames 1 --json "$OUT/bench_rehyat.json" 2>&1 | tee -a "$OUT/bench_attention.log"
  ./build-gpu/rehyat bench attention --kind rehyat --causal --phi-mlp --chunk-frames 3 --overlap-frames 1 --json "$OUT/bench_rehyat_mlp.json" 2>&1 | tee -a "$OUT/bench_attention.log"
else
  echo "build-gpu/rehyat missing: CLI build failed (see build.log)"
fi
if [[ -f .peer/peer_attention.py ]]; then
  PYTHONUNBUFFERED=1 timeout 300 python3 .peer/peer_attention.py 2>&1 | tee "$OUT/peer_attention.log" | tail -20
fi
