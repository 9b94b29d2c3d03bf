"""The pipeline CLI (`rehyat run` and the stage subcommands) end to end on the CPU.

- Kill-and-resume: a teacher training (and a distillation) killed with SIGKILL right
  after a checkpoint and resumed with --resume writes bit-identical metrics and the
  bit-identical final checkpoint of an uninterrupted run (SPEC §7, issue 5).
- Reliability: an existing run folder is never overwritten without --resume/--force; a
  config typo fails before any work, naming file, line and key.
- Wrapped shapes data (data.wrap): a bad value names the key; a wrapped run writes the
  option into its datasets (read with h5py) and goes through every stage to the metrics.
- The quick start (configs/quickstart.yaml) runs every stage and its report shows the
  sample images (REHYAT_QUICKSTART=0 skips it, e.g. when iterating locally).
The binary comes from $REHYAT_BIN (set by ctest).
"""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from run_files import metrics, safetensors_tensors

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

# A smaller pipeline than the quick start, for the resume tests.
TINY = [
    "data.train_videos=24", "data.heldout_videos=4",
    "teacher.steps=60", "teacher.batch=2", "teacher.checkpoint_every=10", "teacher.log_every=5",
    "cache.prompts=3", "cache.sample_steps=4", "cache.capture_steps=[1,3]",
    "distill.steps=60", "distill.checkpoint_every=10", "distill.log_every=5", "distill.eval_entries=2",
    "sample.prompts=2", "sample.steps=4", "eval.videos=2", "eval.sigmas=2",
]


def run(rehyat_bin, *args, check=True, timeout=900):
    result = subprocess.run([rehyat_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"rehyat {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def kill_after(rehyat_bin, args, marker: Path, timeout=300):
    """Starts rehyat, SIGKILLs it as soon as `marker` exists; asserts it was really killed."""
    proc = subprocess.Popen([rehyat_bin, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"rehyat ended before {marker} appeared:\n{proc.stderr.read().decode()}"
        assert time.time() < deadline, f"{marker} never appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_teacher_kill_and_resume_is_bit_identical(rehyat_bin, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={a}", *TINY)
    args = ["teacher", QUICKSTART, f"run.out_dir={b}", *TINY]
    kill_after(rehyat_bin, args, b / "quickstart" / "teacher" / "state.safetensors")
    assert not (b / "quickstart" / "teacher" / "model.safetensors").exists()
    # Without --resume the interrupted state is not silently replaced.
    again = run(rehyat_bin, *args, check=False)
    assert again.returncode != 0 and "--resume" in again.stderr
    run(rehyat_bin, *args, "--resume")
    ra, rb = a / "quickstart" / "teacher", b / "quickstart" / "teacher"
    assert without_time(metrics(ra / "metrics.jsonl")) == without_time(metrics(rb / "metrics.jsonl"))
    assert safetensors_tensors(ra / "model.safetensors") == safetensors_tensors(rb / "model.safetensors")


def test_distill_kill_and_resume_is_bit_identical(rehyat_bin, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={a}", "--stages", "teacher,cache", *TINY)
    shutil.copytree(a, b)
    run(rehyat_bin, "distill", QUICKSTART, f"run.out_dir={a}", *TINY)
    args = ["distill", QUICKSTART, f"run.out_dir={b}", *TINY]
    kill_after(rehyat_bin, args, b / "quickstart" / "distill" / "block_0.state.safetensors")
    run(rehyat_bin, *args, "--resume")
    da, db = a / "quickstart" / "distill", b / "quickstart" / "distill"
    assert safetensors_tensors(da / "model.safetensors") == safetensors_tensors(db / "model.safetensors")
    assert json.loads((da / "errors.json").read_text()) == json.loads((db / "errors.json").read_text())
    errors = json.loads((da / "errors.json").read_text())
    assert set(errors["blocks"]) == {"0", "1"}
    for e in errors["blocks"].values():
        assert e["after"] < e["before"], "distillation did not lower the block's error"


def test_existing_run_folder_is_not_overwritten(rehyat_bin, tmp_path):
    run(rehyat_bin, "teacher", QUICKSTART, f"run.out_dir={tmp_path}", *TINY, "teacher.steps=2")
    model = tmp_path / "quickstart" / "teacher" / "model.safetensors"
    before = model.read_bytes()
    result = run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", *TINY, check=False)
    assert result.returncode != 0
    assert "--resume" in result.stderr and "--force" in result.stderr
    assert model.read_bytes() == before


def test_config_typo_fails_before_work(rehyat_bin, tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(f"include: {QUICKSTART}\nteacher:\n  stepz: 3\n")
    result = run(rehyat_bin, "run", cfg, f"run.out_dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert "typo.yaml" in result.stderr and "teacher.stepz" in result.stderr and ":3" in result.stderr
    assert not (tmp_path / "quickstart").exists()


def test_wrap_is_a_checked_data_key_and_reaches_the_datasets(rehyat_bin, tmp_path):
    cfg = tmp_path / "wrap.yaml"
    cfg.write_text(f"include: {QUICKSTART}\ndata:\n  wrap: sometimes\n")
    result = run(rehyat_bin, "run", cfg, f"run.out_dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert "wrap.yaml:3" in result.stderr and "data.wrap" in result.stderr and "bool" in result.stderr, result.stderr
    result = run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", "data.wrap=maybe", check=False)
    assert result.returncode != 0 and "data.wrap" in result.stderr, result.stderr
    assert not (tmp_path / "quickstart").exists()

    # A few seconds of every stage: the eval stage reads the wrapped videos' metrics.
    run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", "data.wrap=true", "data.train_videos=8",
        "data.heldout_videos=4", "teacher.steps=2", "teacher.batch=2", "cache.prompts=2", "cache.sample_steps=2",
        "cache.capture_steps=[1]", "distill.steps=2", "distill.eval_entries=1", "finetune.steps=2",
        "finetune.batch=2", "sample.prompts=2", "sample.steps=2", "eval.videos=2", "eval.sigmas=1")
    out = tmp_path / "quickstart"
    for name in ("train", "heldout"):
        with h5py.File(out / "data" / f"{name}.h5", "r") as f:
            assert f.attrs["wrap"] == 1
            assert f.attrs["clear_frames"] == 2  # kept, though wrapped data ignores it
            centres = f["trajectories"][:]
            centres = centres[~np.isnan(centres)]
            assert (centres >= 0).all() and (centres < 16).all()  # wrapped into the 16x16 frame
    m = json.loads((out / "eval" / "metrics.json").read_text())
    for name in ("teacher", "distill", "finetune"):
        assert 0 <= m[name]["prompt_agreement"] <= 1 and "trajectory_smoothness" in m[name], m[name]


@pytest.mark.skipif(os.environ.get("REHYAT_QUICKSTART") == "0", reason="REHYAT_QUICKSTART=0")
def test_quickstart_runs_every_stage_and_reports_images(rehyat_bin, tmp_path):
    start = time.time()
    run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", timeout=1800)
    print(f"quick start: {time.time() - start:.0f} s")
    out = tmp_path / "quickstart"
    report = (out / "report.md").read_text()
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) == 3, report  # teacher, distill-only and fine-tuned students
    for image in images:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(m) == {"teacher", "distill", "finetune"}
    for key in ("prompt_agreement", "heldout_fm_loss", "trajectory_smoothness", "chunk_boundary_incoherence"):
        assert key in m["teacher"]
    assert "psnr_vs_teacher" in m["finetune"]
    for name, mode in (("teacher", "parallel"), ("distill", "recurrent"), ("finetune", "recurrent")):
        assert m[name]["latency_ms"] > 0 and m[name]["peak_memory_bytes"] > 0, m[name]
        assert m[name]["latency_mode"] == mode and m[name]["device"] == "cpu"
    assert "| one forward (ms) |" in report
    assert (out / "config.resolved.yaml").exists()


def test_inconsistent_config_names_the_keys(rehyat_bin, tmp_path):
    result = run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", "attention.causal=false",
                 "run.compute=bf16", "data.heldout_videos=2", check=False)
    assert result.returncode != 0
    for needle in ("sample.mode", "recurrent sampling needs", "run.compute", "data.heldout_videos"):
        assert needle in result.stderr, result.stderr
    assert not (tmp_path / "quickstart").exists()
    count = run(rehyat_bin, "run", QUICKSTART, f"run.out_dir={tmp_path}", "attention.hybrid_block_count=1",
                check=False)
    assert count.returncode != 0 and "every block converted" in count.stderr, count.stderr
