#!/bin/bash
# Issue 4's must-shows on one GPU in one device call (a few minutes on an H100): build, the
# CUDA tests of the matmul, the feature maps and the hybrid attention, then in one job the
# hybrid attention benchmark (features given, and with the feature maps) next to the peer,
# and the recurrent-memory benchmark. Prints the ratios against the peer at the end.
#   bash experiments/bench/issue4.sh PEER_SCRIPT OUT_DIR
# PEER_SCRIPT is ../shared/bench/peer_attention.py (copy it into the checkout to carry it).
set -u
peer=${1:?usage: issue4.sh PEER_SCRIPT OUT_DIR}
out=${2:?usage: issue4.sh PEER_SCRIPT OUT_DIR}
mkdir -p "$out"
build=build-issue4
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release > "$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
cmake --build $build -j"$(nproc)" --target rehyat_cli test_ops test_layers test_hybrid_attention > "$out/build.log" 2>&1 ||
  { grep -B2 -A12 "error" "$out/build.log" | head -80; exit 1; }
nvidia-smi -L | tee "$out/device.txt"

{
  $build/tests/test_ops --gtest_filter='Matmul.*'
  $build/tests/test_layers --gtest_filter='FeatureMap*:HybridCore*:*Cuda*'
  $build/tests/test_hybrid_attention
} > "$out/tests.log" 2>&1
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]" "$out/tests.log"

B=$build/rehyat
shape="--kind rehyat --causal --chunk-frames 3 --overlap-frames 1"
$B bench attention $shape --json "$out/rehyat_features_given.json" | tee "$out/bench.txt"
$B bench attention $shape --phi-mlp --json "$out/rehyat_phi_mlp.json" | tee -a "$out/bench.txt"
python3 "$peer" 2>&1 | tee "$out/peer.txt"
$B bench memory --json "$out/memory.json" 2>&1 | tee "$out/memory.txt"

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
ours = json.load(open(f"{out}/rehyat_phi_mlp.json"))
peer = open(f"{out}/peer.txt").read()
m = re.search(r"rehyat-flex Tc=3 To=1: fwd ([\d.]+) ms\s+fwd\+bwd ([\d.]+) ms", peer)
if not m:
    sys.exit("no rehyat-flex line in the peer's output")
pf, pfb = float(m.group(1)), float(m.group(2))
f, fb = ours["forward_ms"], ours["forward_backward_ms"]
print(f"\nrehyat (phi MLP included) vs peer hybrid(), {ours['device']}:")
print(f"  forward          {f:8.3f} ms vs {pf:8.3f} ms: {pf / f:5.2f}x (target >= 2)")
print(f"  forward+backward {fb:8.3f} ms vs {pfb:8.3f} ms: {pfb / fb:5.2f}x (target >= 1.5)")
print(f"  of which the feature maps: forward {ours['phi_forward_ms']:.3f} ms, fwd+bwd {ours['phi_forward_backward_ms']:.3f} ms")
json.dump({"device": ours["device"], "forward_ms": f, "forward_backward_ms": fb, "peer_forward_ms": pf,
           "peer_forward_backward_ms": pfb, "forward_ratio": pf / f, "forward_backward_ratio": pfb / fb},
          open(f"{out}/ratios.json", "w"), indent=2)
PY
