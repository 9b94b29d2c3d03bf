#!/bin/bash
# Issue 7's must-shows on one node with 2 GPUs, in one go (about 4 minutes on 2 H200s):
#   1. block-parallel distillation of all blocks: 1 GPU vs 2 GPUs (same results expected)
#   2. data-parallel fine-tuning: 1 GPU vs 2 GPUs at the same global batch (loss tracking),
#      and 2 GPUs at twice the global batch (weak scaling); also ZeRO-1
#   3. data-parallel teacher training from scratch: 1 GPU vs 2 GPUs (loss tracking)
#   4. a rank killed mid fine-tuning (ranks started without the launcher): the other's exit
#      time and message; then `--resume` on 2 GPUs
#   5. a rank stopped (SIGSTOP) mid fine-tuning: the other times out naming it
# Then experiments/dist/report.py prints the table and writes results.json.
#
# usage: experiments/dist/run.sh REHYAT_BINARY OUT_DIR [TEACHER_WEIGHTS]
# Without TEACHER_WEIGHTS the shapes-h100 teacher is trained for teacher.steps (slow).
set -u
B=$(realpath "$1"); OUT=$(realpath -m "$2"); TEACHER=${3:-}
CONFIG=configs/shapes-h100.yaml
W=$OUT/runs; L=$OUT/logs; mkdir -p $W $L
T0=$(date +%s.%N)
now() { python3 -c "import time; print(f'{time.time() - $T0:.2f}')"; }
stamp() { echo "[$(now) s] $*" | tee -a $OUT/timeline.txt; }
COMMON=(data.train_videos=2048 cache.prompts=16 distill.steps=${DISTILL_STEPS:-1000} distill.log_every=100
        distill.checkpoint_every=100000 finetune.steps=${FINETUNE_STEPS:-200} finetune.log_every=1
        finetune.checkpoint_every=20 finetune.warmup=10 dist.bucket_mb=4)
[ -n "$TEACHER" ] && COMMON+=(teacher.weights=$(realpath "$TEACHER"))
args() { echo "$CONFIG run.out_dir=$W/$1 ${COMMON[@]}"; }
copy() { rm -rf $W/$2; cp -r $W/$1 $W/$2; }

$B run $(args base) --stages teacher,cache > $L/base.log 2>&1 || { tail -20 $L/base.log; exit 1; }
stamp "teacher + cache"

# 1. Block-parallel distillation.
copy base distill_1gpu; copy base distill_2gpu
$B distill $(args distill_1gpu) > $L/distill_1gpu.log 2>&1; stamp "distill 1 GPU rc $?"
$B launch --gpus 2 -- distill $(args distill_2gpu) > $L/distill_2gpu.log 2>&1; stamp "distill 2 GPUs rc $?"

# 2. Fine-tuning from the 1-GPU distillation.
for v in ft_1gpu_b16 ft_2gpu_b16 ft_2gpu_b32 ft_2gpu_b16_zero1; do copy distill_1gpu $v; done
$B finetune $(args ft_1gpu_b16) finetune.batch=16 > $L/ft_1gpu_b16.log 2>&1; stamp "finetune 1 GPU batch 16 rc $?"
$B launch --gpus 2 -- finetune $(args ft_2gpu_b16) finetune.batch=16 > $L/ft_2gpu_b16.log 2>&1
stamp "finetune 2 GPUs batch 16 rc $?"
$B launch --gpus 2 -- finetune $(args ft_2gpu_b32) finetune.batch=32 > $L/ft_2gpu_b32.log 2>&1
stamp "finetune 2 GPUs batch 32 rc $?"
$B launch --gpus 2 -- finetune $(args ft_2gpu_b16_zero1) finetune.batch=16 dist.shard_optimizer=true \
  > $L/ft_2gpu_b16_zero1.log 2>&1; stamp "finetune 2 GPUs batch 16 ZeRO-1 rc $?"

# 3. Teacher training from scratch (no weights), 1 vs 2 GPUs, same global batch.
TEACHER_ARGS=('teacher.weights=""' teacher.steps=${TEACHER_STEPS:-100} teacher.log_every=1 teacher.checkpoint_every=100000)
$B teacher $(args teacher_1gpu) "${TEACHER_ARGS[@]}" > $L/teacher_1gpu.log 2>&1; stamp "teacher 1 GPU rc $?"
$B launch --gpus 2 -- teacher $(args teacher_2gpu) "${TEACHER_ARGS[@]}" > $L/teacher_2gpu.log 2>&1
stamp "teacher 2 GPUs rc $?"

# 4 and 5. A rank killed (SIGKILL) or stopped (SIGSTOP) mid fine-tuning.
drill() {  # name signal
  local name=$1 sig=$2 port=$((29600 + RANDOM % 300))
  copy distill_1gpu $name
  local pids=()
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port CUDA_VISIBLE_DEVICES=$r \
      REHYAT_DIST_TIMEOUT=${DRILL_TIMEOUT:-30} $B finetune $(args $name) finetune.batch=16 finetune.steps=120 \
      > $L/${name}_rank$r.log 2>&1 &
    pids+=($!)
  done
  local m=$W/$name/shapes-h100/finetune/metrics.jsonl
  for i in $(seq 1 900); do [ -f $m ] && [ $(wc -l < $m) -ge 45 ] && break; sleep 0.1; done
  kill -$sig ${pids[1]}; local k=$(now)
  stamp "$name: SIG$sig to rank 1 after $(wc -l < $m) steps"
  wait ${pids[0]}; local rc=$?; local e=$(now)
  stamp "$name: rank 0 exited with status $rc $(python3 -c "print(f'{$e - $k:.2f}')") s later"
  grep "error" $L/${name}_rank0.log | tail -1 | tee -a $OUT/timeline.txt
  kill -9 ${pids[1]} 2>/dev/null; wait ${pids[1]} 2>/dev/null
  $B launch --gpus 2 -- finetune $(args $name) finetune.batch=16 finetune.steps=120 --resume > $L/${name}_resume.log 2>&1
  stamp "$name: --resume on 2 GPUs rc $? ($(grep -o 'resuming at step [0-9]*' $L/${name}_resume.log | head -1)), last line $(tail -1 $m | cut -c1-60)"
}
drill killed_rank KILL
drill stopped_rank STOP
python3 $(dirname $0)/report.py $OUT | tee $OUT/table.md
