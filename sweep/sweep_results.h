// The outputs of a sweep, rebuilt from its run folders whenever a variant ends (so a
// partial sweep has partial tables) and on every invocation: in <results>/<name>/,
//
//   results.json  everything below, per variant (schema at collect_results)
//   table.md      the fine-tuned and the distilled students' metrics per variant, FLOPs,
//                 distillation error, seconds per stage, failures, the plots
//   table.csv     one row per variant, every number (columns at results_table_csv)
//   *.png         quality vs model FLOPs, and every metric vs the sweep's x key
//
// A variant's state comes from its run folder (train/pipeline.h) and the runner's record
// beside it, <variant>/sweep.json:
//   {"status": "running"|"finished"|"failed", "device": "NVIDIA H100 80GB HBM3 (GPU 0)",
//    "started": unix seconds, "seconds": wall seconds, "exit_code": int|null,
//    "signal": int|null, "error": "why it could not start"|null, "log_tail": [lines]}
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sweep/sweep_file.h"

namespace rehyat::sweep {

// Whether the run folder `dir` finished the last of `stages` (train::stage_output).
bool run_finished(const std::string& dir, const std::vector<std::string>& stages);

// One variant's entry of results.json, read from its folder:
//   name, values {key: value}, x (the x key's value), status ("finished" | "failed" |
//   "incomplete" (started, not finished) | "pending"), run_dir, log, device,
//   wall_seconds, seconds {stage: s} (stages.json),
//   flops {model_tflops, self_attention_tflops (summed over blocks), converted_blocks}
//     (one forward of one video at the data size; converted blocks as distillation
//     chose them, else as configured),
//   distill {blocks {"N": {before, after}}, converted_blocks, before_mean, after_mean
//     (means over the converted blocks)} or null,
//   metrics {teacher, distill, finetune: {SPEC §5 metrics, heldout_fm_loss}} (eval/metrics.json),
//   latency_ms, peak_memory_bytes: null (not measured yet),
//   failure {exit_code, signal, error, log_tail} when failed.
nlohmann::json collect_variant(const SweepSpec& spec, const Variant& variant, const SweepLayout& layout,
                               const std::vector<std::string>& stages);

// results.json: sweep, file, base, set, stages, keys, x, run_dir, results_dir, generated,
// video {frames, height, width, tokens}, teacher_flops {model_tflops,
// self_attention_tflops}, shared {status, seconds, device}, counts {finished, failed,
// incomplete, pending}, variants [collect_variant ...], plots [file names].
nlohmann::json collect_results(const SweepSpec& spec, const SweepLayout& layout,
                               const std::vector<std::string>& stages);

// The metrics the tables and plots show: key in eval/metrics.json, and a label.
struct MetricInfo {
  const char* key;
  const char* label;
};
const std::vector<MetricInfo>& shown_metrics();

// table.md and table.csv of a results.json. CSV columns: variant, the swept keys, status,
// device, model_tflops, self_attention_tflops, converted_blocks, distill_error_before_mean,
// distill_error_after_mean, seconds_<stage> per variant stage, wall_seconds,
// <model>_<metric> for model teacher, distill, finetune and every shown metric,
// latency_ms, peak_memory_bytes. Missing values are empty cells.
std::string results_table_md(const nlohmann::json& results);
std::string results_table_csv(const nlohmann::json& results);

// Writes the PNG charts into `dir` and returns their file names (none in builds without
// libpng, or where no variant has a value to plot).
std::vector<std::string> write_result_plots(const nlohmann::json& results, const std::string& dir);

// Writes results.json (with its "plots"), table.md, table.csv and the plots into `dir`,
// each atomically.
void write_results(nlohmann::json results, const std::string& dir);

// A YAML value's text as JSON: integer, number, bool, list or string.
nlohmann::json yaml_text_to_json(const std::string& text);

}  // namespace rehyat::sweep
