#!/bin/bash
# One teacher variant of the motion experiment (README.md beside this file) in one device
# call, about 8 minutes on an H100: build, train the shapes-h100 teacher on the variant's
# data, sample the 64 held-out prompts, evaluate colour and motion agreement.
#   bash experiments/teacher_motion/run.sh VARIANT OUT_DIR [more overrides, e.g. teacher.steps=6000]
# VARIANT: wrap | slow-bounce | no-bounce (the current configs/shapes-h100.yaml data).
# Two variants at once on two GPUs (nvidia-h200-x2), one build:
#   BUILD_ONLY=1 bash experiments/teacher_motion/run.sh wrap $OUT/build
#   SKIP_BUILD=1 CUDA_VISIBLE_DEVICES=0 bash experiments/teacher_motion/run.sh wrap $OUT/wrap &
#   SKIP_BUILD=1 CUDA_VISIBLE_DEVICES=1 bash experiments/teacher_motion/run.sh slow-bounce $OUT/slow &
#   wait
set -u
variant=${1:?usage: run.sh VARIANT OUT_DIR [overrides...]}
out=${2:?usage: run.sh VARIANT OUT_DIR [overrides...]}
shift 2
case $variant in
  wrap) data=(data.wrap=true) ;;
  slow-bounce) data=(data.clear_frames=2 data.min_speed=0.4 data.max_speed=0.7) ;;
  no-bounce) data=() ;;
  *) echo "unknown variant '$variant' (wrap, slow-bounce or no-bounce)"; exit 2 ;;
esac
mkdir -p "$out"
build=build-motion
if [ "${SKIP_BUILD:-0}" != 1 ]; then  # SKIP_BUILD=1: variants run side by side on one build
  cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release > "$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
  cmake --build $build -j"$(nproc)" --target rehyat_cli > "$out/build.log" 2>&1 ||
    { grep -B2 -A12 "error" "$out/build.log" | head -80; exit 1; }
fi
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
nvidia-smi -L | tee "$out/device.txt"

runs=runs/teacher-motion
rm -rf "$runs/$variant"
start=$(date +%s)
$build/rehyat run configs/shapes-h100.yaml run.name="$variant" run.out_dir="$runs" "${data[@]}" \
  teacher.steps=5000 sample.prompts=64 "$@" --stages teacher,sample,eval > "$out/run.log" 2>&1
rc=$?
echo "rehyat run: exit $rc after $(( $(date +%s) - start )) s" | tee "$out/status.txt"
dir="$runs/$variant"
cp "$dir/eval/metrics.json" "$dir/teacher/metrics.jsonl" "$dir/report.md" "$out/" 2>/dev/null
cp "$dir/samples/teacher/grid.png" "$out/grid_$variant.png" 2>/dev/null
python3 - "$out/metrics.json" "$variant" <<'PY'
import json, sys
try:
    m = json.load(open(sys.argv[1]))["teacher"]
except (OSError, KeyError) as e:
    sys.exit(f"no teacher metrics: {e}")
print(f"{sys.argv[2]}: prompt agreement {m['prompt_agreement']:.2f}, colour {m['colour_agreement']:.2f}, "
      f"motion {m['motion_agreement']:.2f} (target >= 0.80), held-out FM loss {m.get('heldout_fm_loss', float('nan')):.4f}")
PY
exit $rc
