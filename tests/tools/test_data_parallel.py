"""Multi-process training end to end on the CPU (issue 7): `rehyat launch --gpus N --
rehyat <stage> ...` with run.device=cpu runs its ranks over the communicator's host
backend, so the data-parallel and block-parallel logic is checked without GPUs (the same
code runs over NCCL on GPUs; see the README's multi-GPU section).

- Two ranks with the same global batch and seed track one process: equal losses (to
  float rounding: the gradient is averaged over ranks instead of summed in one loss) and
  equal final weights.
- The sharded optimizer (ZeRO-1) gives bit-identically what the replicated one gives.
- A 2-rank run killed after a checkpoint resumes on 1 rank and ends where the
  uninterrupted 2-rank run ends.
- Block-parallel distillation writes bit-identically what one process writes; with more
  ranks than blocks each block trains data-parallel.
- A rank killed mid-training makes the other exit non-zero, naming it, within the timeout.
- The whole pipeline runs under the launcher (cache, sample and eval on rank 0).
The binary comes from $REHYAT_BIN (set by ctest).
"""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from run_files import metrics, safetensors_tensors

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

TINY = [
    "data.train_videos=16", "data.heldout_videos=4",
    "teacher.steps=12", "teacher.batch=2", "teacher.checkpoint_every=6", "teacher.log_every=1", "teacher.warmup=2",
    "cache.prompts=3", "cache.sample_steps=4", "cache.capture_steps=[1,3]",
    "distill.steps=12", "distill.checkpoint_every=6", "distill.log_every=1", "distill.eval_entries=2",
    "sample.prompts=2", "sample.steps=4", "eval.videos=2", "eval.sigmas=2",
]

DIST_VARIABLES = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "CUDA_VISIBLE_DEVICES", "REHYAT_RENDEZVOUS_FILE", "REHYAT_DIST_TIMEOUT", "OMPI_COMM_WORLD_RANK",
                  "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env["REHYAT_DIST_TIMEOUT"] = "30"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(rehyat_bin, *args, ranks=1, check=True, timeout=600):
    cmd = [rehyat_bin, *map(str, args)]
    if ranks > 1:
        cmd = [rehyat_bin, "launch", "--gpus", str(ranks), "--grace", "2", "--", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env())
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def floats(raw: bytes):
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def assert_close_models(a: Path, b: Path, rtol):
    ta, tb = safetensors_tensors(a), safetensors_tensors(b)
    assert ta.keys() == tb.keys()
    worst = 0.0
    for name in ta:
        x, y = floats(ta[name]), floats(tb[name])
        scale = max(max(abs(v) for v in x), 1e-6)
        worst = max(worst, max(abs(u - v) for u, v in zip(x, y)) / scale)
    assert worst < rtol, f"{a} and {b} differ by {worst:.3g} (relative to each tensor's largest value)"


def assert_losses_track(rows_a, rows_b, rtol):
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert abs(ra["loss"] - rb["loss"]) <= rtol * abs(ra["loss"]), (ra, rb)
        assert ra["lr"] == rb["lr"]


def teacher_dir(out: Path):
    return out / "quickstart" / "teacher"


def test_two_ranks_track_one_process(rehyat_bin, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={one}", *TINY)
    result = run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={two}", *TINY, ranks=2)
    assert "data-parallel over 2 ranks (host backend), 1 videos per rank per step" in result.stderr
    a, b = metrics(teacher_dir(one) / "metrics.jsonl"), metrics(teacher_dir(two) / "metrics.jsonl")
    assert len(a) == 12
    assert_losses_track(a, b, rtol=1e-4)
    # The loss moved (a test on a constant would prove nothing).
    assert a[-1]["loss"] != a[0]["loss"]
    assert_close_models(teacher_dir(one) / "model.safetensors", teacher_dir(two) / "model.safetensors", rtol=1e-4)


def test_sharded_optimizer_is_bit_identical(rehyat_bin, tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={plain}", *TINY, ranks=2)
    result = run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={sharded}", *TINY, "dist.shard_optimizer=true",
                 ranks=2)
    assert "optimizer state sharded" in result.stderr
    untimed = lambda rows: [dict(r, time=0) for r in rows]  # noqa: E731
    assert untimed(metrics(teacher_dir(plain) / "metrics.jsonl")) == untimed(metrics(teacher_dir(sharded) / "metrics.jsonl"))
    assert safetensors_tensors(teacher_dir(plain) / "model.safetensors") == safetensors_tensors(teacher_dir(sharded) / "model.safetensors")


def test_two_rank_checkpoint_resumes_on_one_rank(rehyat_bin, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={whole}", *TINY, ranks=2)
    # Stop a 2-rank run right after its step-6 checkpoint: the launcher and its ranks are killed.
    args = [rehyat_bin, "launch", "--gpus", "2", "--grace", "1", "--", "teacher", str(QUICKSTART),
            f"run.out_dir={split}", *TINY]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(),
                            start_new_session=True)
    marker = teacher_dir(split) / "state.safetensors"
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before {marker} appeared:\n{proc.stderr.read().decode()}"
        assert time.time() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (teacher_dir(split) / "model.safetensors").exists()
    run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={split}", *TINY, "--resume")
    a, b = metrics(teacher_dir(whole) / "metrics.jsonl"), metrics(teacher_dir(split) / "metrics.jsonl")
    assert_losses_track(a, b, rtol=1e-4)
    assert_close_models(teacher_dir(whole) / "model.safetensors", teacher_dir(split) / "model.safetensors", rtol=1e-4)


def test_block_parallel_distillation(rehyat_bin, tmp_path):
    base = tmp_path / "base"
    run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={base}", "--stages", "teacher,cache", *TINY)
    runs = {}
    for name, ranks, extra in [("one", 1, []), ("two", 2, []), ("one_b2", 1, ["distill.batch=2"]),
                               ("two_dp", 2, ["distill.batch=2"])]:
        runs[name] = tmp_path / name
        shutil.copytree(base, runs[name])
        block_args = ["attention.hybrid_blocks=[1]", "sample.mode=parallel"] if name.endswith(("b2", "dp")) else []
        result = run(rehyat_bin, "distill", QUICKSTART, f"run.out_dir={runs[name]}", *TINY, *extra, *block_args,
                     ranks=ranks)
        runs[name + ".log"] = result.stderr
    d = {k: v / "quickstart" / "distill" for k, v in runs.items() if not k.endswith(".log")}
    # Two blocks over two ranks: each block alone on its rank, as in one process.
    assert "distill: 2 blocks spread over 2 ranks" in runs["two.log"]
    assert safetensors_tensors(d["one"] / "model.safetensors") == safetensors_tensors(d["two"] / "model.safetensors")
    assert json.loads((d["one"] / "errors.json").read_text()) == json.loads((d["two"] / "errors.json").read_text())
    for e in json.loads((d["two"] / "errors.json").read_text())["blocks"].values():
        assert e["after"] < e["before"]
    # One block, two ranks: the block trains data-parallel, one entry per rank per step.
    assert "distill: 1 blocks, each data-parallel over 2 ranks" in runs["two_dp.log"]
    assert_losses_track(metrics(d["one_b2"] / "block_1.metrics.jsonl"), metrics(d["two_dp"] / "block_1.metrics.jsonl"),
                        rtol=1e-4)
    assert_close_models(d["one_b2"] / "block_1.safetensors", d["two_dp"] / "block_1.safetensors", rtol=1e-4)


def test_distillation_batch_must_split_over_the_ranks(rehyat_bin, tmp_path):
    run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", "--stages", "teacher,cache", *TINY,
        "teacher.steps=2")
    result = run(rehyat_bin, "distill", QUICKSTART, f"run.out_dir={tmp_path}", *TINY, "teacher.steps=2",
                 "attention.hybrid_blocks=[0]", "sample.mode=parallel", ranks=2, check=False)
    assert result.returncode != 0
    assert "distill.batch 1" in result.stderr and "multiple of 2" in result.stderr


def test_global_batch_must_split_over_the_ranks(rehyat_bin, tmp_path):
    result = run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={tmp_path}", *TINY, "teacher.batch=3", ranks=2,
                 check=False)
    assert result.returncode != 0
    assert "teacher.batch 3 is the global batch: it must be a multiple of the 2 ranks" in result.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_stops_the_training(rehyat_bin, tmp_path):
    """Ranks started without the launcher: SIGKILL rank 1 mid-training, rank 0 names it."""
    port = free_port()
    args = ["teacher", str(QUICKSTART), f"run.out_dir={tmp_path}", *TINY, "teacher.steps=100000",
            "teacher.log_every=1"]
    procs = []
    for rank in range(2):
        env = clean_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                        REHYAT_DIST_TIMEOUT=20)
        procs.append(subprocess.Popen([rehyat_bin, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, env=env))
    log = teacher_dir(tmp_path) / "metrics.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    start = time.monotonic()
    _, err = procs[0].communicate(timeout=60)
    procs[1].wait()
    assert procs[0].returncode != 0
    assert time.monotonic() - start < 20, "rank 0 did not stop within the timeout"
    assert "rank 1" in err and "went away" in err, err[-3000:]


def test_whole_pipeline_under_the_launcher(rehyat_bin, tmp_path):
    """`rehyat launch -- run`: cache, sample and eval run on rank 0 while rank 1 waits."""
    result = run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", *TINY, "finetune.steps=4",
                 "finetune.batch=2", ranks=2)
    folder = tmp_path / "quickstart"
    stages = json.loads((folder / "stages.json").read_text())
    assert set(stages) == {"teacher", "cache", "distill", "finetune", "sample", "eval"}
    assert "![finetune samples](samples/finetune/grid.png)" in (folder / "report.md").read_text()
    assert "distill: 2 blocks spread over 2 ranks" in result.stderr
    assert "[rank 1]" in result.stderr and "rehyat launch: all 2 ranks finished" in result.stderr
