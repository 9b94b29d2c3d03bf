"""`rehyat sweep` end to end on the CPU, on configs/sweep-tiny.yaml (a few steps per stage).

- A two-variant grid (Tc 1 and 3) runs to completion; both variants share the shared run's
  teacher, cache and data (the same inodes); results.json, table.md, table.csv and the
  plots hold the swept values, FLOPs and metrics.
- A second invocation skips both variants in a second or two and rewrites the results.
- A second sweep naming the same shared run (so reusing the teacher) whose variants include
  one that fails at run time (NaN learning rate) and one that run_config rejects: both are
  reported, with the end of the log, while the third finishes; the sweep exits non-zero.
- A sweep stopped with SIGTERM mid-variant stops its child and records it as interrupted;
  run again, the half-finished variant resumes (the pipeline's --resume) and finishes.
- A variant that changes what the teacher depends on is refused before anything runs, as
  is a sweep whose shared teacher was made with other values.
- The shipped sweeps (experiments/*.yaml) pass a dry run: every variant's config is valid
  and none changes the shared teacher.
The binary comes from $REHYAT_BIN (set by ctest); $REHYAT_PNG says whether it writes PNGs.
"""
import csv
import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "sweep-tiny.yaml"
METRICS = ["prompt_agreement", "colour_agreement", "motion_agreement", "heldout_fm_loss",
           "trajectory_smoothness", "chunk_boundary_incoherence"]
VARIANTS = ["chunk_frames-1", "chunk_frames-3"]


def sweep(rehyat_bin, *args, timeout=600):
    start = time.time()
    result = subprocess.run([rehyat_bin, "sweep", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    result.seconds = time.time() - start
    result.output = result.stdout + result.stderr
    return result


def write_sweep(path: Path, runs: Path, body: str) -> Path:
    path.write_text(f"sweep:\n  base: {TINY}\n  set: [run.out_dir={runs}]\n{body}")
    return path


@pytest.fixture(scope="module")
def first(rehyat_bin, tmp_path_factory):
    """The two-variant sweep, run once for the module."""
    root = tmp_path_factory.mktemp("sweep")
    file = write_sweep(root / "tiny.yaml", root / "runs",
                       "  shared: tiny-teacher\n  grid:\n    attention.chunk_frames: [1, 3]\n")
    result = sweep(rehyat_bin, file)
    assert result.returncode == 0, result.output
    return {"root": root, "file": file, "runs": root / "runs" / "sweep-tiny", "shared": root / "runs" / "tiny-teacher",
            "results": root / "results" / "tiny", "result": result}


def test_every_variant_runs_to_the_end_on_one_shared_teacher(first):
    runs, out = first["runs"], first["result"].output
    print(f"\nfirst sweep: {first['result'].seconds:.1f} s")
    for name in VARIANTS:
        assert f"{name}: started on cpu" in out
        assert f"{name}: finished in" in out
        variant = runs / name
        for output in ["distill/model.safetensors", "finetune/model.safetensors", "samples/done", "eval/metrics.json",
                       "report.md"]:
            assert (variant / output).exists(), f"{variant / output} missing"
        for shared_file in ["teacher/model.safetensors", "cache/activations.h5", "data/train.h5", "data/heldout.h5"]:
            assert (variant / shared_file).stat().st_ino == (first["shared"] / shared_file).stat().st_ino, shared_file
        # The variant ran with its own value, in its own folder.
        resolved = (variant / "config.resolved.yaml").read_text()
        assert f"chunk_frames: {name.split('-')[1]}" in resolved
        assert "teacher" not in json.loads((variant / "stages.json").read_text())
        assert "==== rehyat sweep" in (variant / "sweep.log").read_text()
    # The shared run made the teacher and the cache (of every block) once.
    assert set(json.loads((first["shared"] / "stages.json").read_text())) == {"teacher", "cache"}
    assert out.count("shared (teacher, cache): started") == 1


def test_results_hold_values_flops_and_metrics(first):
    results = first["results"]
    r = json.loads((results / "results.json").read_text())
    assert r["sweep"] == "tiny" and r["x"] == "attention.chunk_frames"
    assert r["counts"] == {"finished": 2, "failed": 0, "incomplete": 0, "pending": 0}
    assert [v["name"] for v in r["variants"]] == VARIANTS
    assert [v["values"]["attention.chunk_frames"] for v in r["variants"]] == [1, 3]
    assert r["shared"]["status"] == "finished" and r["shared"]["seconds"]["teacher"] > 0
    for v in r["variants"]:
        assert v["status"] == "finished" and v["device"] == "cpu"
        assert set(v["seconds"]) == {"distill", "finetune", "sample", "eval"}
        assert v["flops"]["model_tflops"] > 0 and v["flops"]["converted_blocks"] == [0, 1]
        assert 0 < v["distill"]["after_mean"] < v["distill"]["before_mean"]
        for model in ["teacher", "distill", "finetune"]:
            for m in METRICS:
                assert m in v["metrics"][model], (model, m)
        assert v["metrics"]["finetune"]["psnr_vs_teacher"] > 0
        # measured by the eval stage: the fine-tuned student's recurrent forward of one video
        assert v["latency_ms"] > 0 and v["peak_memory_bytes"] > 0
        assert v["latency_model"] == {"model": "finetune", "mode": "recurrent", "device": "cpu"}
    # Tc changes the analytic cost of self-attention.
    assert r["variants"][0]["flops"]["self_attention_tflops"] != r["variants"][1]["flops"]["self_attention_tflops"]

    rows = list(csv.DictReader((results / "table.csv").open()))
    assert [row["variant"] for row in rows] == VARIANTS
    assert [row["attention.chunk_frames"] for row in rows] == ["1", "3"]
    for row, v in zip(rows, r["variants"]):
        assert float(row["finetune_prompt_agreement"]) == v["metrics"]["finetune"]["prompt_agreement"]
        assert float(row["model_tflops"]) == v["flops"]["model_tflops"]
        assert float(row["latency_ms"]) == v["latency_ms"]
        assert int(row["peak_memory_bytes"]) == v["peak_memory_bytes"]
    md = (results / "table.md").read_text()
    assert "| chunk_frames-1 | 1 | finished |" in md and "| chunk_frames-3 | 3 | finished |" in md
    assert "## Latency and memory" in md and "| chunk_frames-3 | finetune | recurrent | cpu |" in md

    if os.environ.get("REHYAT_PNG") == "1":
        for name in ["prompt_agreement_vs_tflops.png", "psnr_vs_teacher_vs_tflops.png",
                     "prompt_agreement_vs_chunk_frames.png", "heldout_fm_loss_vs_chunk_frames.png",
                     "distill_error_vs_chunk_frames.png"]:
            assert name in r["plots"], name
            assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            assert f"![{name}]({name})" in md
    else:
        assert r["plots"] == []


def test_a_second_run_skips_finished_variants_and_rewrites_the_results(rehyat_bin, first):
    results, runs = first["results"], first["runs"]
    (results / "table.md").unlink()
    (results / "table.csv").unlink()
    reports = {name: (runs / name / "report.md").stat().st_mtime_ns for name in VARIANTS}
    result = sweep(rehyat_bin, first["file"])
    print(f"\nsecond sweep: {result.seconds:.1f} s")
    assert result.returncode == 0, result.output
    assert result.output.count("already finished, skipped") == 2
    assert "started on" not in result.output
    assert result.seconds < 15, f"a sweep with nothing to do took {result.seconds:.1f} s"
    assert (results / "table.md").exists() and (results / "table.csv").exists()
    assert {name: (runs / name / "report.md").stat().st_mtime_ns for name in VARIANTS} == reports


def test_a_failing_variant_is_reported_while_the_others_finish(rehyat_bin, first):
    # Another sweep on the same shared run: no second teacher.
    root = first["root"]
    file = write_sweep(root / "fail.yaml", root / "runs",
                       "  shared: tiny-teacher\n  results: fail-results\n  variants:\n"
                       "    - {name: good, set: [attention.chunk_frames=2]}\n"
                       "    - {name: nan-lr, set: [distill.lr=.nan]}\n"
                       "    - {name: bad-value, set: [attention.chunk_frames=0]}\n")
    result = sweep(rehyat_bin, file, "--jobs", "2")
    print(f"\nfailing sweep: {result.seconds:.1f} s")
    out = result.output
    assert result.returncode != 0, out
    assert "nan-lr: FAILED after" in out and "exit status 1" in out
    assert "distillation loss is NaN" in out  # the end of its log, on the console
    assert "bad-value: FAILED before starting: invalid config" in out
    assert "attention.chunk_frames: must be at least 1" in out
    assert "good: finished in" in out
    assert "2 variant(s) failed: bad-value, nan-lr" in out
    assert "shared teacher and cache already made" in out and "shared (teacher, cache): started" not in out

    runs = root / "runs" / "sweep-fail"
    assert (runs / "good" / "report.md").exists()
    assert (runs / "good" / "teacher/model.safetensors").stat().st_ino == \
        (first["shared"] / "teacher/model.safetensors").stat().st_ino
    r = json.loads((root / "fail-results" / "fail" / "results.json").read_text())
    status = {v["name"]: v for v in r["variants"]}
    assert status["good"]["status"] == "finished"
    assert status["nan-lr"]["status"] == "failed"
    assert status["nan-lr"]["failure"]["exit_code"] == 1
    assert any("distillation loss is NaN" in line for line in status["nan-lr"]["failure"]["log_tail"])
    assert status["bad-value"]["status"] == "failed"
    assert "must be at least 1" in status["bad-value"]["failure"]["error"]
    md = (root / "fail-results" / "fail" / "table.md").read_text()
    assert "## Failed variants" in md and "### nan-lr" in md and "### bad-value" in md


def test_an_interrupted_sweep_resumes_its_half_finished_variant(rehyat_bin, first):
    root = first["root"]
    file = write_sweep(root / "resume.yaml", root / "runs",
                       "  shared: tiny-teacher\n  variants:\n    - {name: long, set: [finetune.steps=20]}\n")
    variant = root / "runs" / "sweep-resume" / "long"
    proc = subprocess.Popen([rehyat_bin, "sweep", str(file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    marker = variant / "finetune" / "state.safetensors"  # the first fine-tuning checkpoint
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{marker} never appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "long: stopped after" in out and "interrupted by signal 15" in out
    assert json.loads((variant / "sweep.json").read_text())["status"] == "interrupted"
    r = json.loads((root / "results" / "resume" / "results.json").read_text())
    assert r["variants"][0]["status"] == "incomplete"
    assert not (variant / "finetune" / "model.safetensors").exists()

    result = sweep(rehyat_bin, file)
    assert result.returncode == 0, result.output
    assert "long: started on cpu" in result.output and "long: finished in" in result.output
    log = (variant / "sweep.log").read_text()
    assert log.count("==== rehyat sweep") == 2
    assert "stage distill: already finished, skipped" in log
    assert "finetune: resuming at step" in log


def test_a_variant_may_not_change_the_shared_teacher(rehyat_bin, first):
    root = first["root"]
    file = write_sweep(root / "forbidden.yaml", root / "runs",
                       "  shared: tiny-teacher\n  grid:\n    teacher.steps: [20, 7]\n")
    result = sweep(rehyat_bin, file)
    assert result.returncode == 1
    assert "variant 'steps-7' changes teacher.steps (20 -> 7)" in result.output
    assert str(file) in result.output
    assert not (root / "runs" / "sweep-forbidden").exists()

    # A sweep asking the shared run for another teacher than the one it made.
    other = write_sweep(root / "other.yaml", root / "runs",
                        "  shared: tiny-teacher\n  grid:\n    attention.degree: [1]\n")
    other.write_text(other.read_text().replace("set: [", "set: [teacher.steps=25, "))
    result = sweep(rehyat_bin, other)
    assert result.returncode == 1
    assert "were made with other values of teacher.steps (20 then, 25 now)" in result.output

    result = sweep(rehyat_bin, first["file"], "--only", "chunk_frames-2")
    assert result.returncode == 1
    assert "no variant 'chunk_frames-2' (variants: chunk_frames-1, chunk_frames-3)" in result.output

    # The same variants, now asked for with other fine-tuning: kept, with a warning.
    changed = write_sweep(root / "changed.yaml", root / "runs",
                          "  name: tiny\n  shared: tiny-teacher\n  results: changed-results\n"
                          "  grid:\n    attention.chunk_frames: [1, 3]\n")
    changed.write_text(changed.read_text().replace("set: [", "set: [finetune.steps=11, "))
    result = sweep(rehyat_bin, changed)
    assert result.returncode == 0, result.output
    assert result.output.count("it finished with other values of finetune.steps") == 2

    # Two runners on one sweep folder: the second is refused.
    with open(first["runs"] / "sweep.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = sweep(rehyat_bin, first["file"])
    assert result.returncode == 1
    assert "another `rehyat sweep` is running" in result.output


def test_the_shipped_sweeps_are_valid(rehyat_bin, tmp_path):
    expected = {"tc": 5, "to": 4, "causal": 2, "degree": 3, "blocks": 3}
    for name, count in expected.items():
        result = subprocess.run([rehyat_bin, "sweep", str(ROOT / "experiments" / f"{name}.yaml"), "--dry-run"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert f"{count} to run, 0 finished" in out, out
        assert out.count(": to run: ") == count
        assert "shapes-h100-teacher" in out  # all share one teacher
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
