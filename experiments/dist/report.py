"""Table and results.json of experiments/dist/run.sh: step rates, loss tracking, speed-ups.

usage: python3 experiments/dist/report.py OUT_DIR   (prints markdown, writes OUT_DIR/results.json)
"""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
runs = out / "runs"


def rows(run, stage):
    path = runs / run / "shapes-h100" / stage / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stage_seconds(run, stage):
    path = runs / run / "shapes-h100" / "stages.json"
    return json.loads(path.read_text())[stage]["seconds"] if path.exists() else float("nan")


def step_rate(r, skip=10):
    """Steps per second between the skip-th logged step and the last (warm-up excluded)."""
    if len(r) <= skip + 1:
        return float("nan")
    return (r[-1]["step"] - r[skip]["step"]) / (r[-1]["time"] - r[skip]["time"])


def tracking(a, b):
    rel = [abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b)]
    return {"steps": len(rel), "max_rel_loss_diff": max(rel) if rel else float("nan"),
            "mean_rel_loss_diff": sum(rel) / len(rel) if rel else float("nan"),
            "first_loss": [a[0]["loss"], b[0]["loss"]] if rel else None,
            "last_loss": [a[-1]["loss"], b[-1]["loss"]] if rel else None}


ft = {v: rows(v, "finetune") for v in ["ft_1gpu_b16", "ft_2gpu_b16", "ft_2gpu_b32", "ft_2gpu_b16_zero1"]}
rate = {v: step_rate(r) for v, r in ft.items()}
batch = {"ft_1gpu_b16": 16, "ft_2gpu_b16": 16, "ft_2gpu_b32": 32, "ft_2gpu_b16_zero1": 16}
results = {
    "finetune": {v: {"steps_per_s": rate[v], "videos_per_s": rate[v] * batch[v], "global_batch": batch[v],
                     "gpus": 1 if "1gpu" in v else 2} for v in ft},
    "weak_scaling_speedup": rate["ft_2gpu_b32"] * 32 / (rate["ft_1gpu_b16"] * 16),
    "strong_scaling_speedup": rate["ft_2gpu_b16"] / rate["ft_1gpu_b16"],
    "finetune_tracking_1_vs_2_gpus": tracking(ft["ft_1gpu_b16"], ft["ft_2gpu_b16"]),
    "finetune_zero1_vs_plain": tracking(ft["ft_2gpu_b16"], ft["ft_2gpu_b16_zero1"]),
    "teacher_tracking_1_vs_2_gpus": tracking(rows("teacher_1gpu", "teacher"), rows("teacher_2gpu", "teacher")),
    "distill_seconds": {"1gpu": stage_seconds("distill_1gpu", "distill"),
                        "2gpu": stage_seconds("distill_2gpu", "distill")},
}
results["distill_speedup"] = results["distill_seconds"]["1gpu"] / results["distill_seconds"]["2gpu"]
e1, e2 = (runs / r / "shapes-h100" / "distill" / "errors.json" for r in ["distill_1gpu", "distill_2gpu"])
results["distill_errors_identical"] = e1.exists() and e2.exists() and json.loads(e1.read_text()) == json.loads(e2.read_text())
(out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

print("| fine-tuning run | GPUs | global batch | steps/s | videos/s |\n|---|---|---|---|---|")
for v, r in results["finetune"].items():
    print(f"| {v} | {r['gpus']} | {r['global_batch']} | {r['steps_per_s']:.2f} | {r['videos_per_s']:.1f} |")
print(f"\nWeak scaling (2 GPUs x 16 vs 1 GPU x 16, videos/s): {results['weak_scaling_speedup']:.2f}x; "
      f"strong scaling (batch 16 on 2 GPUs): {results['strong_scaling_speedup']:.2f}x")
for k in ["finetune_tracking_1_vs_2_gpus", "finetune_zero1_vs_plain", "teacher_tracking_1_vs_2_gpus"]:
    t = results[k]
    print(f"{k}: {t['steps']} steps, max relative loss difference {t['max_rel_loss_diff']:.2e} "
          f"(mean {t['mean_rel_loss_diff']:.2e})")
d = results["distill_seconds"]
print(f"Block-parallel distillation, all blocks: {d['1gpu']:.1f} s on 1 GPU, {d['2gpu']:.1f} s on 2 "
      f"({results['distill_speedup']:.2f}x); errors.json identical: {results['distill_errors_identical']}")
