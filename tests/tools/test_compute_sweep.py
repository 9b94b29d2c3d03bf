"""`rehyat sweep` on a compute-sweep file (a `compute:` mapping, sweep/compute_sweep.h), on the CPU.

- A tiny sweep (the toy model, five attention variants, videos of 5 and 9 frames) measures
  every variant at every length (positive milliseconds and peak bytes) beside the block's
  analytic FLOPs; the FLOPs tables' softmax and ReHyAt rows, and a run's block FLOPs, equal
  `rehyat flops --json` of the same model and size; softmax > ReHyAt > linear in
  self-attention FLOPs; table.md names the device and the command, table.csv holds every
  row, the plots are PNGs.
- Results measured on another device are kept unless --force; other files in the results
  folder are never touched.
- Bad files fail naming the file, line and key: an unknown key, a variant with an unknown
  attention kind, an override outside attention.*, the ablation-only options.
- The shipped experiments/compute.yaml passes a dry run, which writes nothing.
The binary comes from $REHYAT_BIN (set by ctest); $REHYAT_PNG says whether it writes PNGs.
"""
import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs" / "models" / "toy.yaml"
VARIANTS = ["softmax", "uniform_r2", "uniform_r4", "linear", "rehyat_tc3"]
FRAMES = [5, 9]
PLOTS = ["latency_vs_frames.png", "peak_memory_vs_frames.png", "self_attention_tflops_vs_chunk_frames.png",
         "self_attention_tflops_vs_overlap_frames.png"]
TINY = f"""\
compute:
  model: {TOY}
  device: cpu
  dtype: f32
  flops: {{frames: 81, height: 480, width: 832, chunk_frames: [1, 3, 5], overlap_frames: [0, 1, 2]}}
  latency:
    frames: {FRAMES}
    height: 64
    width: 64
    iters: 2
    variants:
      softmax: [attention.kind=softmax]
      uniform_r2: [attention.kind=uniform_hybrid, attention.rate=2]
      uniform_r4: [attention.kind=uniform_hybrid, attention.rate=4]
      linear: [attention.kind=linear]
      rehyat_tc3: [attention.kind=rehyat, attention.chunk_frames=3, attention.overlap_frames=1, attention.causal=true]
"""
REHYAT_TC3 = ["attention.kind=rehyat", "attention.chunk_frames=3", "attention.overlap_frames=1",
              "attention.causal=true", "attention.degree=2"]


def run(rehyat_bin, *args, cwd=None):
    result = subprocess.run([rehyat_bin, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)
    result.output = result.stdout + result.stderr
    return result


def flops_json(rehyat_bin, *sets, frames=81, height=480, width=832):
    args = ["flops", "--model", TOY, "--frames", frames, "--height", height, "--width", width, "--json"]
    for s in sets:
        args += ["--set", s]
    result = run(rehyat_bin, *args)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def tiny(rehyat_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("compute")
    file = root / "tiny_compute.yaml"
    file.write_text(TINY)
    result = run(rehyat_bin, "sweep", file.name, cwd=root)
    assert result.returncode == 0, result.output
    results = root / "results" / "tiny_compute"
    return {"root": root, "file": file, "results": results, "output": result.output,
            "json": json.loads((results / "results.json").read_text())}


def test_every_variant_and_length_is_measured(tiny):
    r = tiny["json"]
    assert r["device"] == "cpu" and r["device_name"] == "cpu" and r["dtype"] == "f32"
    latency = r["latency"]
    assert [f["video_frames"] for f in latency["frames"]] == FRAMES
    assert [v["name"] for v in latency["variants"]] == VARIANTS
    for v in latency["variants"]:
        assert [run["video_frames"] for run in v["runs"]] == FRAMES
        for run in v["runs"]:
            assert run["status"] == "ok", (v["name"], run)
            assert run["ms"] > 0 and run["peak_bytes"] > 0 and run["output_bytes"] > 0
            assert run["block_tflops"] > 0 and run["achieved_tflops"] > 0
            assert run["achieved_tflops"] == pytest.approx(run["block_tflops"] / (run["ms"] * 1e-3), rel=1e-9)
    # one progress line per run
    for i in range(1, len(VARIANTS) * len(FRAMES) + 1):
        assert f"[{i}/{len(VARIANTS) * len(FRAMES)}]" in tiny["output"]
    # a 9-frame video (3 latent frames) has more tokens than a 5-frame one
    assert latency["frames"][1]["tokens"] > latency["frames"][0]["tokens"]


def test_flops_tables_agree_with_rehyat_flops(rehyat_bin, tiny):
    f = tiny["json"]["flops"]
    assert f["tokens"]["total"] == 21 * 30 * 52
    softmax = flops_json(rehyat_bin)
    assert f["softmax"]["block_tflops"] == pytest.approx(softmax["softmax_block_tflops"], rel=1e-12)
    assert f["softmax"]["self_attention_tflops"] == pytest.approx(softmax["softmax_self_attention_tflops"], rel=1e-12)
    assert f["softmax"]["model_tflops"] == pytest.approx(softmax["softmax_model_tflops"], rel=1e-12)
    assert f["softmax"]["model_ratio"] == 1

    hybrid = flops_json(rehyat_bin, *REHYAT_TC3)
    row = next(r for r in f["vs_chunk"] if r["attention"]["chunk_frames"] == 3)
    assert row["attention"]["overlap_frames"] == 1
    assert row["self_attention_tflops"] == pytest.approx(hybrid["self_attention_tflops"], rel=1e-12)
    assert row["block_tflops"] == pytest.approx(hybrid["hybrid_block_tflops"], rel=1e-12)
    assert row["model_tflops"] == pytest.approx(hybrid["model_tflops"], rel=1e-12)
    assert row["model_ratio"] == pytest.approx(hybrid["model_tflops"] / hybrid["softmax_model_tflops"], rel=1e-12)
    assert [r["attention"]["chunk_frames"] for r in f["vs_chunk"]] == [1, 3, 5]
    assert [r["attention"]["overlap_frames"] for r in f["vs_overlap"]] == [0, 1, 2]
    # more exact-softmax keys per query cost more
    for table in ["vs_chunk", "vs_overlap"]:
        costs = [r["self_attention_tflops"] for r in f[table]]
        assert costs == sorted(costs) and len(set(costs)) == len(costs), table

    by_name = {r["label"]: r for r in f["variants"]}
    assert list(by_name) == VARIANTS
    sa = {name: r["self_attention_tflops"] for name, r in by_name.items()}
    assert sa["softmax"] > sa["uniform_r2"] > sa["uniform_r4"] > sa["rehyat_tc3"] > sa["linear"] > 0

    # A latency run's block FLOPs are those of `rehyat flops` at its video size.
    runs = {v["name"]: v["runs"] for v in tiny["json"]["latency"]["variants"]}
    small = flops_json(rehyat_bin, *REHYAT_TC3, frames=9, height=64, width=64)
    assert runs["rehyat_tc3"][1]["block_tflops"] == pytest.approx(small["hybrid_block_tflops"], rel=1e-12)
    small = flops_json(rehyat_bin, "attention.kind=uniform_hybrid", "attention.rate=2", frames=5, height=64, width=64)
    assert runs["uniform_r2"][0]["block_tflops"] == pytest.approx(small["hybrid_block_tflops"], rel=1e-12)


def test_tables_and_plots(tiny):
    results, r = tiny["results"], tiny["json"]
    md = (results / "table.md").read_text()
    assert "- Device: **cpu** (cpu)" in md
    assert "- Command: `rehyat sweep tiny_compute.yaml`" in md
    for heading in ["### vs chunk size Tc (To = 1)", "### vs overlap To (Tc = 3)", "### Latency, ms",
                    "### Peak working memory, GiB", "### Achieved TFLOP/s"]:
        assert heading in md, heading
    assert "| variant | 5 fr (32 tok) | 9 fr (48 tok) |" in md  # 2 and 3 latent frames of 4 x 4 tokens
    for name in VARIANTS:
        assert f"| {name} |" in md

    rows = list(csv.DictReader((results / "table.csv").open()))
    latency = [row for row in rows if row["table"] == "latency"]
    assert [(row["variant"], int(row["video_frames"])) for row in latency] == \
        [(v, f) for v in VARIANTS for f in FRAMES]
    for row, (v, i) in zip(latency, [(v, i) for v in r["latency"]["variants"] for i in range(len(FRAMES))]):
        assert row["status"] == "ok"
        assert float(row["ms"]) == v["runs"][i]["ms"]
        assert int(row["peak_bytes"]) == v["runs"][i]["peak_bytes"]
    assert [row["chunk_frames"] for row in rows if row["table"] == "flops_vs_chunk"] == ["", "1", "3", "5"]
    assert len([row for row in rows if row["table"] == "flops_variants"]) == len(VARIANTS)

    if os.environ.get("REHYAT_PNG") == "1":
        assert r["plots"] == PLOTS
        for name in PLOTS:
            assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            assert f"![{name}]({name})" in md
    else:
        assert r["plots"] == []


def test_results_of_another_device_need_force(rehyat_bin, tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text(TINY.replace("frames: [5, 9]", "frames: [5]").replace("iters: 2", "iters: 1"))
    results = tmp_path / "results" / "c"
    results.mkdir(parents=True)
    (results / "notes.txt").write_text("mine")
    (results / "results.json").write_text(json.dumps({"device_name": "NVIDIA H100 80GB HBM3"}))
    result = run(rehyat_bin, "sweep", file)
    assert result.returncode != 0
    assert "measured on 'NVIDIA H100 80GB HBM3'" in result.output and "--force" in result.output
    assert json.loads((results / "results.json").read_text()) == {"device_name": "NVIDIA H100 80GB HBM3"}
    result = run(rehyat_bin, "sweep", file, "--force")
    assert result.returncode == 0, result.output
    assert json.loads((results / "results.json").read_text())["device_name"] == "cpu"
    assert (results / "notes.txt").read_text() == "mine"
    # the same device again: replaced without --force; --set overrides a key
    result = run(rehyat_bin, "sweep", file, "--set", "compute.latency.iters=2")
    assert result.returncode == 0, result.output
    assert json.loads((results / "results.json").read_text())["latency"]["iters"] == 2


@pytest.mark.parametrize("change, line, wanted", [
    (("iters: 2", "iterz: 2"), 10, "unknown key 'compute.latency.iterz'"),
    (("attention.kind=linear]", "attention.kind=bogus]"), 15, "compute.latency.variants.linear"),
    (("attention.rate=4]", "attention.rate=4, model.dim=64]"), 14, "is not of the form attention.key=value"),
    (("attention.rate=2]", 'attention.rate=2, "attention.hybrid_blocks=[0]"]'), 13, "converts every block"),
])
def test_bad_files_name_file_line_and_key(rehyat_bin, tmp_path, change, line, wanted):
    file = tmp_path / "bad.yaml"
    text = TINY.replace(*change)
    assert text != TINY
    file.write_text(text)
    result = run(rehyat_bin, "sweep", file, "--dry-run")
    assert result.returncode != 0
    assert f"{file}:{line}" in result.output, result.output
    assert wanted in result.output, result.output
    if "bogus" in text:
        assert "attention.kind" in result.output and "bogus" in result.output
    assert not (tmp_path / "results").exists()


def test_ablation_options_are_refused(rehyat_bin, tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text(TINY)
    for option in [["--stages", "distill"], ["--only", "softmax"], ["--jobs", "2"]]:
        result = run(rehyat_bin, "sweep", file, *option)
        assert result.returncode != 0
        assert "is a compute sweep" in result.output, result.output
    assert not (tmp_path / "results").exists()


def test_shipped_compute_sweep_dry_run(rehyat_bin, tmp_path):
    result = run(rehyat_bin, "sweep", ROOT / "experiments" / "compute.yaml", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.output
    out = result.output
    assert "24 runs" in out and "21 x 20 x 30 = 12600 tokens" in out and "161 x 20 x 30 = 96600 tokens" in out
    for name in ["softmax", "uniform_r2", "uniform_r4", "uniform_r8", "linear", "rehyat_tc3"]:
        assert f"  {name}: attention.kind=" in out
    assert str(ROOT / "experiments" / "results" / "compute") in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
