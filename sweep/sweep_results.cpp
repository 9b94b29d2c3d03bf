// A sweep's results: read back from the run folders, written as JSON, Markdown, CSV and
// PNG charts (see sweep_results.h).
#include "sweep/sweep_results.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "attention/flops.h"
#include "core/atomic_file.h"
#include "core/check.h"
#include "sweep/plot.h"
#include "train/pipeline.h"
#include "train/run_config.h"

namespace rehyat::sweep {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The JSON in `path`, or null when the file is missing or unreadable (a results table
// must not fail because one run folder holds a half-written file).
json read_json_or_null(const std::string& path) {
  std::ifstream in(path);
  if (!in.good()) return nullptr;
  try {
    return json::parse(in);
  } catch (const json::exception&) {
    return nullptr;
  }
}

double number_or_nan(const json& j) { return j.is_number() ? j.get<double>() : kNaN; }

// j[a][b]... as a double, NaN where absent or null.
double lookup(const json& j, std::initializer_list<const char*> path) {
  const json* node = &j;
  for (const char* key : path) {
    if (!node->is_object() || !node->contains(key)) return kNaN;
    node = &(*node)[key];
  }
  return number_or_nan(*node);
}

std::string last_part(const std::string& key) {
  const size_t dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

// Column names of the swept keys: the last component, or the whole key where two clash.
std::vector<std::string> short_keys(const std::vector<std::string>& keys) {
  std::vector<std::string> out;
  for (const std::string& k : keys) {
    size_t same = 0;
    for (const std::string& other : keys) same += last_part(other) == last_part(k);
    out.push_back(same > 1 ? k : last_part(k));
  }
  return out;
}

std::string value_text(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return format_number(v.get<double>(), 6);
  return v.dump();
}

std::string cell(double value, int significant = 4) {
  return std::isfinite(value) ? format_number(value, significant) : "–";
}

std::string csv_number(double value) { return std::isfinite(value) ? fmt::format("{}", value) : ""; }

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

void write_text(const std::string& path, const std::string& text) {
  AtomicFileWriter writer(path);
  writer.write(text);
  writer.commit();
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

// FLOPs of one forward of one video of `run` with `attention`.
json flops_json(const train::RunConfig& run, const attention::AttentionConfig& attention) {
  const layers::TokenGrid grid{run.shapes.frames / run.model.patch_size[0], run.shapes.height / run.model.patch_size[1],
                               run.shapes.width / run.model.patch_size[2]};
  const attention::ModelFlops flops = attention::model_flops(run.model, attention, 1, grid);
  int64_t self_attention = 0;
  for (const attention::BlockFlops& block : flops.blocks) self_attention += block.self_attention();
  return {{"model_tflops", double(flops.total()) / 1e12},
          {"self_attention_tflops", double(self_attention) / 1e12},
          {"converted_blocks", attention.converted_blocks(run.model.num_layers)}};
}

}  // namespace

json yaml_text_to_json(const std::string& text) {
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::Exception&) {
    return text;
  }
  std::function<json(const YAML::Node&)> convert = [&](const YAML::Node& n) -> json {
    if (n.IsSequence()) {
      json list = json::array();
      for (const YAML::Node& item : n) list.push_back(convert(item));
      return list;
    }
    if (n.IsMap()) {
      json map = json::object();
      for (const auto& item : n) map[item.first.as<std::string>()] = convert(item.second);
      return map;
    }
    if (!n.IsScalar()) return nullptr;
    int64_t i;
    double d;
    bool b;
    if (YAML::convert<int64_t>::decode(n, i)) return i;
    if (YAML::convert<double>::decode(n, d) && std::isfinite(d)) return d;  // ".nan" stays text (JSON has no NaN)
    if (YAML::convert<bool>::decode(n, b)) return b;
    return n.Scalar();
  };
  return convert(node);
}

bool run_finished(const std::string& dir, const std::vector<std::string>& stages) {
  return !stages.empty() && fs::exists(dir + "/" + train::stage_output(stages.back()));
}

const std::vector<MetricInfo>& shown_metrics() {
  static const std::vector<MetricInfo> metrics = {
      {"prompt_agreement", "prompt agreement"},
      {"colour_agreement", "colour agreement"},
      {"motion_agreement", "motion agreement"},
      {"psnr_vs_teacher", "PSNR vs teacher (dB)"},
      {"heldout_fm_loss", "held-out FM loss"},
      {"trajectory_smoothness", "trajectory smoothness (px)"},
      {"chunk_boundary_incoherence", "chunk-boundary incoherence"},
  };
  return metrics;
}

json collect_variant(const SweepSpec& spec, const Variant& variant, const SweepLayout& layout,
                     const std::vector<std::string>& stages) {
  const std::string dir = layout.variant_dir(variant.name);
  json v;
  v["name"] = variant.name;

  // The variant's resolved config gives every swept key's value (also those a `variants:`
  // entry leaves at the base's); an invalid config falls back to the texts it sets.
  FlatConfig flat;
  std::optional<train::RunConfig> run;
  try {
    const Config config = load_sweep_config(spec, variant_overrides(spec, variant, layout));
    flat = flatten_config(config);
    run = train::run_config_from(config);
  } catch (const Error&) {
  }
  auto value_of = [&](const std::string& key) -> json {
    for (const auto& [k, text] : variant.values)
      if (k == key && !flat.count(key)) return yaml_text_to_json(text);
    return flat.count(key) ? yaml_text_to_json(flat.at(key)) : json(nullptr);
  };
  json values = json::object();
  for (const std::string& key : spec.keys) values[key] = value_of(key);
  v["values"] = values;
  v["x"] = spec.x_key.empty() ? json(variant.name) : value_of(spec.x_key);

  const json record = read_json_or_null(dir + "/sweep.json");
  const std::string recorded = record.is_object() ? record.value("status", "") : "";
  std::string status = "pending";
  if (run_finished(dir, stages))
    status = "finished";
  else if (recorded == "failed")
    status = "failed";
  else if (fs::exists(dir + "/config.resolved.yaml") || recorded == "running")
    status = "incomplete";
  v["status"] = status;
  v["run_dir"] = dir;
  v["log"] = dir + "/sweep.log";

  const json times = read_json_or_null(dir + "/stages.json");
  json seconds = json::object();
  std::string stage_device;
  for (const std::string& s : variant_stage_names())
    if (times.is_object() && times.contains(s)) {
      seconds[s] = times[s].value("seconds", kNaN);
      stage_device = times[s].value("device", "");
    }
  v["seconds"] = seconds;
  v["device"] = record.is_object() && record.contains("device") ? record["device"]
                : stage_device.empty()                          ? json(nullptr)
                                                                : json(stage_device);
  v["wall_seconds"] = record.is_object() && record.contains("seconds") ? record["seconds"] : json(nullptr);

  const json errors = read_json_or_null(dir + "/distill/errors.json");
  if (errors.is_object() && errors.contains("blocks")) {
    std::vector<int64_t> converted = errors.value("converted_blocks", std::vector<int64_t>{});
    double before = 0, after = 0;
    int n = 0;
    for (const auto& [block, e] : errors["blocks"].items()) {
      const bool used =
          converted.empty() || std::find(converted.begin(), converted.end(), std::stoll(block)) != converted.end();
      if (!used) continue;
      before += number_or_nan(e["before"]);
      after += number_or_nan(e["after"]);
      ++n;
    }
    v["distill"] = {{"blocks", errors["blocks"]},
                    {"converted_blocks", converted},
                    {"before_mean", n ? before / n : kNaN},
                    {"after_mean", n ? after / n : kNaN}};
  } else {
    v["distill"] = nullptr;
  }

  if (run) {
    attention::AttentionConfig attention = run->attention;
    if (errors.is_object() && errors.contains("converted_blocks")) {
      attention.hybrid_blocks = errors["converted_blocks"].get<std::vector<int64_t>>();
      attention.hybrid_block_count = 0;
    }
    v["flops"] = flops_json(*run, attention);
  } else {
    v["flops"] = nullptr;
  }

  const json metrics = read_json_or_null(dir + "/eval/metrics.json");
  v["metrics"] = metrics.is_object() ? metrics : json::object();
  // The eval stage measures one velocity evaluation of one video per model (in the sample
  // stage's mode); a variant's figure is its last student's (finetune, else distill).
  v["latency_ms"] = nullptr;
  v["peak_memory_bytes"] = nullptr;
  v["latency_model"] = nullptr;
  for (const char* model : {"finetune", "distill"})
    if (v["metrics"].contains(model) && v["metrics"][model].contains("latency_ms")) {
      const json& m = v["metrics"][model];
      v["latency_ms"] = m["latency_ms"];
      v["peak_memory_bytes"] = m.value("peak_memory_bytes", json(nullptr));
      v["latency_model"] = {{"model", model},
                            {"mode", m.value("latency_mode", json(nullptr))},
                            {"device", m.value("device", json(nullptr))}};
      break;
    }
  if (status == "failed")
    v["failure"] = {{"exit_code", record.value("exit_code", json(nullptr))},
                    {"signal", record.value("signal", json(nullptr))},
                    {"error", record.value("error", json(nullptr))},
                    {"log_tail", record.value("log_tail", json::array())}};
  return v;
}

json collect_results(const SweepSpec& spec, const SweepLayout& layout, const std::vector<std::string>& stages) {
  json r;
  r["sweep"] = spec.name;
  r["file"] = spec.file;
  r["base"] = spec.base;
  r["set"] = spec.set;
  r["stages"] = stages;
  r["keys"] = spec.keys;
  r["x"] = spec.x_key.empty() ? json(nullptr) : json(spec.x_key);
  r["run_dir"] = layout.root;
  r["results_dir"] = spec.results_dir;
  r["generated"] = utc_now();
  try {
    const train::RunConfig shared = train::run_config_from(load_sweep_config(spec, shared_overrides(spec, layout)));
    const layers::TokenGrid grid{shared.shapes.frames / shared.model.patch_size[0],
                                 shared.shapes.height / shared.model.patch_size[1],
                                 shared.shapes.width / shared.model.patch_size[2]};
    r["video"] = {{"frames", shared.shapes.frames},
                  {"height", shared.shapes.height},
                  {"width", shared.shapes.width},
                  {"tokens", grid.tokens()}};
    r["teacher_flops"] = flops_json(shared, attention::AttentionConfig{});
  } catch (const Error&) {
    r["video"] = nullptr;
    r["teacher_flops"] = nullptr;
  }
  const json shared_times = read_json_or_null(layout.shared_dir + "/stages.json");
  const json shared_record = read_json_or_null(layout.shared_dir + "/sweep.json");
  json shared_seconds = json::object();
  for (const char* s : {"teacher", "cache"})
    if (shared_times.is_object() && shared_times.contains(s))
      shared_seconds[s] = shared_times[s].value("seconds", kNaN);
  r["shared"] = {{"run_dir", layout.shared_dir},
                 {"status", run_finished(layout.shared_dir, {"teacher", "cache"}) ? "finished" : "pending"},
                 {"seconds", shared_seconds},
                 {"device", shared_record.is_object() ? shared_record.value("device", json(nullptr)) : json(nullptr)}};
  json counts = {{"finished", 0}, {"failed", 0}, {"incomplete", 0}, {"pending", 0}};
  r["variants"] = json::array();
  for (const Variant& variant : spec.variants) {
    json v = collect_variant(spec, variant, layout, stages);
    counts[v["status"].get<std::string>()] = counts[v["status"].get<std::string>()].get<int>() + 1;
    r["variants"].push_back(std::move(v));
  }
  r["counts"] = counts;
  r["measured"] =
      "latency_ms: one velocity evaluation of one video by the variant's last student (latency_model), median of "
      "the eval stage's runs with the device to itself; peak_memory_bytes: the allocator's peak during it beyond "
      "the parameters and inputs";
  r["plots"] = json::array();
  return r;
}

// ---- tables -------------------------------------------------------------------------------

namespace {

double metric(const json& variant, const char* model, const char* key) {
  return lookup(variant, {"metrics", model, key});
}

// The teacher's value of a metric when every variant that measured it agrees (the
// boundary incoherence depends on each variant's Tc), else NaN.
double teacher_metric(const json& results, const char* key, bool* varies) {
  double value = kNaN;
  *varies = false;
  for (const json& v : results["variants"]) {
    const double m = metric(v, "teacher", key);
    if (!std::isfinite(m)) continue;
    if (!std::isfinite(value))
      value = m;
    else if (std::abs(m - value) > 1e-9 * std::max(1.0, std::abs(value)))
      *varies = true;
  }
  return *varies ? kNaN : value;
}

std::string md_row(const std::vector<std::string>& cells) {
  return "| " + fmt::format("{}", fmt::join(cells, " | ")) + " |\n";
}

std::string md_rule(size_t n) {
  std::string s = "|";
  for (size_t i = 0; i < n; ++i) s += "---|";
  return s + "\n";
}

std::string duration_text(double seconds) {
  if (!std::isfinite(seconds)) return "–";
  if (seconds < 60) return fmt::format("{:.1f} s", seconds);
  return fmt::format("{}m{:02d}s", int64_t(seconds) / 60, int64_t(seconds) % 60);
}

std::vector<std::string> value_cells(const json& results, const json& v) {
  std::vector<std::string> cells;
  for (const std::string& key : results["keys"].get<std::vector<std::string>>())
    cells.push_back(value_text(v["values"].value(key, json(nullptr))));
  return cells;
}

}  // namespace

std::string results_table_md(const json& results) {
  const std::vector<std::string> keys = results["keys"].get<std::vector<std::string>>();
  const std::vector<std::string> shorts = short_keys(keys);
  const json& variants = results["variants"];
  std::string md = fmt::format("# Sweep `{}`\n\n", results["sweep"].get<std::string>());
  md += fmt::format("Sweep file `{}`; every variant starts from `{}`", results["file"].get<std::string>(),
                    results["base"].get<std::string>());
  if (!results["set"].empty())
    md += fmt::format(" with `{}`", fmt::join(results["set"].get<std::vector<std::string>>(), " "));
  md += fmt::format(" and runs {}. Runs: `{}` (one teacher and activation cache for all, in `shared/`).\n",
                    fmt::join(results["stages"].get<std::vector<std::string>>(), ", "),
                    results["run_dir"].get<std::string>());
  if (results["video"].is_object()) {
    const json& video = results["video"];
    md += fmt::format(
        "FLOPs: one forward of one {} x {} x {} video ({} tokens); the teacher (softmax everywhere) "
        "takes {} TFLOP.\n",
        video["frames"].get<int64_t>(), video["height"].get<int64_t>(), video["width"].get<int64_t>(),
        video["tokens"].get<int64_t>(), cell(lookup(results, {"teacher_flops", "model_tflops"})));
  }
  const json& counts = results["counts"];
  md += fmt::format("Variants: {} finished, {} failed, {} incomplete, {} pending (generated {}).\n\n",
                    counts.value("finished", 0), counts.value("failed", 0), counts.value("incomplete", 0),
                    counts.value("pending", 0), results["generated"].get<std::string>());

  std::vector<std::string> head = {"variant"};
  head.insert(head.end(), shorts.begin(), shorts.end());
  const std::vector<std::string> value_head = head;
  head.insert(head.end(), {"status", "model TFLOP", "self-attn TFLOP", "distill error (before → after)"});
  for (const MetricInfo& m : shown_metrics()) head.push_back(m.label);

  md +=
      "## Fine-tuned students\n\nMetrics on held-out prompts (SPEC §5); distill error: the relative "
      "self-attention output error, mean over the converted blocks.\n\n";
  md += md_row(head) + md_rule(head.size());
  for (const json& v : variants) {
    std::vector<std::string> row = {v["name"].get<std::string>()};
    for (const std::string& c : value_cells(results, v)) row.push_back(c);
    row.push_back(v["status"].get<std::string>());
    row.push_back(cell(lookup(v, {"flops", "model_tflops"})));
    row.push_back(cell(lookup(v, {"flops", "self_attention_tflops"})));
    const double before = lookup(v, {"distill", "before_mean"}), after = lookup(v, {"distill", "after_mean"});
    row.push_back(std::isfinite(after) ? cell(before, 3) + " → " + cell(after, 3) : "–");
    for (const MetricInfo& m : shown_metrics()) row.push_back(cell(metric(v, "finetune", m.key)));
    md += md_row(row);
  }
  std::vector<std::string> teacher_row = {"teacher"};
  for (size_t i = 0; i < keys.size(); ++i) teacher_row.push_back("");
  teacher_row.insert(teacher_row.end(), {"", cell(lookup(results, {"teacher_flops", "model_tflops"})),
                                         cell(lookup(results, {"teacher_flops", "self_attention_tflops"})), "–"});
  bool any_varies = false;
  for (const MetricInfo& m : shown_metrics()) {
    bool varies = false;
    const double t = teacher_metric(results, m.key, &varies);
    any_varies |= varies;
    teacher_row.push_back(varies ? "varies" : cell(t));
  }
  md += md_row(teacher_row);
  if (any_varies)
    md +=
        "\n(teacher: \"varies\" where the metric depends on the variant, e.g. the boundary "
        "incoherence is measured at each variant's chunk size; see results.json)\n";

  md += "\n## Distilled students (before fine-tuning)\n\n";
  std::vector<std::string> dhead = value_head;
  for (const MetricInfo& m : shown_metrics()) dhead.push_back(m.label);
  md += md_row(dhead) + md_rule(dhead.size());
  for (const json& v : variants) {
    std::vector<std::string> row = {v["name"].get<std::string>()};
    for (const std::string& c : value_cells(results, v)) row.push_back(c);
    for (const MetricInfo& m : shown_metrics()) row.push_back(cell(metric(v, "distill", m.key)));
    md += md_row(row);
  }

  md += "\n## Time\n\n";
  const json& shared = results["shared"];
  md += fmt::format("Shared run: teacher {}, cache {} (device {}).\n\n",
                    duration_text(lookup(shared, {"seconds", "teacher"})),
                    duration_text(lookup(shared, {"seconds", "cache"})),
                    shared["device"].is_string() ? shared["device"].get<std::string>() : "–");
  std::vector<std::string> thead = {"variant", "device"};
  for (const std::string& s : variant_stage_names()) thead.push_back(s);
  thead.push_back("wall (sweep)");
  md += md_row(thead) + md_rule(thead.size());
  for (const json& v : variants) {
    std::vector<std::string> row = {v["name"].get<std::string>(),
                                    v["device"].is_string() ? v["device"].get<std::string>() : "–"};
    for (const std::string& s : variant_stage_names()) row.push_back(duration_text(lookup(v, {"seconds", s.c_str()})));
    row.push_back(duration_text(number_or_nan(v["wall_seconds"])));
    md += md_row(row);
  }
  md += "\n## Latency and memory\n\nOne velocity evaluation of one video (the eval stage, median of its runs), in "
        "the mode the sample stage used; peak memory: the allocator's peak beyond the parameters and inputs, less "
        "the returned velocity.\n\n";
  md += md_row({"variant", "model", "mode", "device", "ms", "peak MiB"}) + md_rule(6);
  auto latency_row = [&](const std::string& variant, const std::string& model, const json& m) {
    const double bytes = number_or_nan(m.value("peak_memory_bytes", json(nullptr)));
    md += md_row({variant, model, m.value("latency_mode", "–"), m.value("device", "–"),
                  cell(number_or_nan(m.value("latency_ms", json(nullptr)))), cell(bytes / double(1 << 20))});
  };
  const json* teacher = nullptr;  // the same model in every variant: one row, from the first that measured it
  std::string teacher_from;
  for (const json& v : variants) {
    if (!v["latency_model"].is_object()) continue;
    const std::string model = v["latency_model"]["model"];
    latency_row(v["name"].get<std::string>(), model, v["metrics"][model]);
    if (!teacher && v["metrics"].contains("teacher") && v["metrics"]["teacher"].contains("latency_ms")) {
      teacher = &v["metrics"]["teacher"];
      teacher_from = v["name"].get<std::string>();
    }
  }
  if (teacher) latency_row("teacher (in " + teacher_from + ")", "teacher", *teacher);

  bool any_failed = false;
  for (const json& v : variants) any_failed |= v["status"] == "failed";
  if (any_failed) {
    md += "\n## Failed variants\n";
    for (const json& v : variants) {
      if (v["status"] != "failed") continue;
      const json& f = v["failure"];
      const std::string why = f["error"].is_string()       ? "not run"
                              : f["signal"].is_number()    ? fmt::format("killed by signal {}", f["signal"].get<int>())
                              : f["exit_code"].is_number() ? fmt::format("exit status {}", f["exit_code"].get<int>())
                                                           : std::string("failed");
      md += fmt::format("\n### {}\n\n{} (log: `{}`)\n", v["name"].get<std::string>(), why, v["log"].get<std::string>());
      if (f["error"].is_string()) md += fmt::format("\n```\n{}\n```\n", f["error"].get<std::string>());
      if (!f["log_tail"].empty())
        md += fmt::format("\n```\n{}\n```\n", fmt::join(f["log_tail"].get<std::vector<std::string>>(), "\n"));
    }
  }

  if (results.contains("plots") && !results["plots"].empty()) {
    md += "\n## Plots\n\n";
    for (const json& p : results["plots"]) md += fmt::format("![{0}]({0})\n", p.get<std::string>());
  }
  return md;
}

std::string results_table_csv(const json& results) {
  const std::vector<std::string> keys = results["keys"].get<std::vector<std::string>>();
  std::vector<std::string> head = {"variant"};
  head.insert(head.end(), keys.begin(), keys.end());
  head.insert(head.end(), {"status", "device", "model_tflops", "self_attention_tflops", "converted_blocks",
                           "distill_error_before_mean", "distill_error_after_mean"});
  for (const std::string& s : variant_stage_names()) head.push_back("seconds_" + s);
  head.push_back("wall_seconds");
  const char* models[] = {"teacher", "distill", "finetune"};
  for (const char* model : models)
    for (const MetricInfo& m : shown_metrics()) head.push_back(fmt::format("{}_{}", model, m.key));
  head.insert(head.end(), {"latency_ms", "peak_memory_bytes"});

  std::string csv;
  auto add_row = [&](const std::vector<std::string>& cells) {
    std::vector<std::string> quoted;
    for (const std::string& c : cells) quoted.push_back(csv_field(c));
    csv += fmt::format("{}\n", fmt::join(quoted, ","));
  };
  add_row(head);
  for (const json& v : results["variants"]) {
    std::vector<std::string> row = {v["name"].get<std::string>()};
    for (const std::string& c : value_cells(results, v)) row.push_back(c);
    row.push_back(v["status"].get<std::string>());
    row.push_back(v["device"].is_string() ? v["device"].get<std::string>() : "");
    row.push_back(csv_number(lookup(v, {"flops", "model_tflops"})));
    row.push_back(csv_number(lookup(v, {"flops", "self_attention_tflops"})));
    std::vector<std::string> blocks;
    if (v["flops"].is_object())
      for (const json& b : v["flops"]["converted_blocks"]) blocks.push_back(b.dump());
    row.push_back(fmt::format("{}", fmt::join(blocks, " ")));
    row.push_back(csv_number(lookup(v, {"distill", "before_mean"})));
    row.push_back(csv_number(lookup(v, {"distill", "after_mean"})));
    for (const std::string& s : variant_stage_names()) row.push_back(csv_number(lookup(v, {"seconds", s.c_str()})));
    row.push_back(csv_number(number_or_nan(v["wall_seconds"])));
    for (const char* model : models)
      for (const MetricInfo& m : shown_metrics()) row.push_back(csv_number(metric(v, model, m.key)));
    row.push_back(csv_number(number_or_nan(v["latency_ms"])));
    row.push_back(csv_number(number_or_nan(v["peak_memory_bytes"])));
    add_row(row);
  }
  return csv;
}

// ---- plots ----------------------------------------------------------------------------------

namespace {

bool has_finite_point(const std::vector<Series>& series) {
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) return true;
  return false;
}

void drop_empty(std::vector<Series>& series) {
  std::erase_if(series, [](const Series& s) { return !has_finite_point({s}); });
}

}  // namespace

std::vector<std::string> write_result_plots(const json& results, const std::string& dir) {
  std::vector<std::string> written;
  if (!plot_png_supported()) return written;
  const json& variants = results["variants"];
  const std::string sweep = results["sweep"].get<std::string>();
  const std::vector<std::string> keys = results["keys"].get<std::vector<std::string>>();
  const std::vector<std::string> shorts = short_keys(keys);
  const std::string x_key = results["x"].is_string() ? results["x"].get<std::string>() : "";

  // Quality vs model FLOPs: one marker per variant (its fine-tuned student, else the
  // distilled one), the teacher as a reference where it has the metric.
  for (const char* key : {"prompt_agreement", "psnr_vs_teacher"}) {
    const MetricInfo* info = nullptr;
    for (const MetricInfo& m : shown_metrics())
      if (std::string(m.key) == key) info = &m;
    std::vector<Series> series;
    bool finetuned = false;
    for (const json& v : variants) {
      const double x = lookup(v, {"flops", "model_tflops"});
      double y = metric(v, "finetune", key);
      finetuned |= std::isfinite(y);
      if (!std::isfinite(y)) y = metric(v, "distill", key);
      if (std::isfinite(x) && x > 0) series.push_back({v["name"].get<std::string>(), {x}, {y}});
    }
    bool varies = false;
    const double teacher = teacher_metric(results, key, &varies);
    const double teacher_x = lookup(results, {"teacher_flops", "model_tflops"});
    if (std::isfinite(teacher) && std::isfinite(teacher_x)) series.push_back({"teacher", {teacher_x}, {teacher}});
    drop_empty(series);
    if (series.empty()) continue;
    PlotOptions options;
    options.title =
        fmt::format("{}: {} vs model FLOPs ({} students)", sweep, info->label, finetuned ? "fine-tuned" : "distilled");
    options.x_label = "model TFLOP per forward (one video)";
    options.y_label = info->label;
    options.lines = false;
    const std::string name = fmt::format("{}_vs_tflops.png", key);
    write_plot_png(dir + "/" + name, series, options);
    written.push_back(name);
  }

  // Every metric vs the x key: one series per model and combination of the other keys.
  std::vector<double> xs;
  std::vector<std::string> tick_labels;
  bool numeric = !x_key.empty();
  for (const json& v : variants) numeric &= v["x"].is_number();
  for (const json& v : variants) {
    if (numeric) {
      xs.push_back(v["x"].get<double>());
      continue;
    }
    const std::string label = value_text(v["x"]);
    auto it = std::find(tick_labels.begin(), tick_labels.end(), label);
    if (it == tick_labels.end()) it = tick_labels.insert(tick_labels.end(), label);
    xs.push_back(double(it - tick_labels.begin()));
  }
  std::vector<std::string> groups;  // per variant: "key=value, ..." of the other swept keys
  for (const json& v : variants) {
    std::vector<std::string> parts;
    for (size_t k = 0; k < keys.size(); ++k)
      if (keys[k] != x_key) parts.push_back(shorts[k] + "=" + value_text(v["values"].value(keys[k], json(nullptr))));
    groups.push_back(fmt::format("{}", fmt::join(parts, ", ")));
  }
  std::vector<std::string> group_names;
  for (const std::string& g : groups)
    if (std::find(group_names.begin(), group_names.end(), g) == group_names.end()) group_names.push_back(g);
  const std::string x_short = x_key.empty() ? "variant" : last_part(x_key);

  struct Chart {
    std::string key, label;
    std::vector<std::string> models;  // "" : a per-variant value, not a model's metric
  };
  std::vector<Chart> charts;
  for (const MetricInfo& m : shown_metrics()) charts.push_back({m.key, m.label, {"finetune", "distill", "teacher"}});
  charts.push_back({"distill_error", "distillation error after (mean over converted blocks)", {""}});
  charts.push_back({"model_tflops", "model TFLOP per forward (one video)", {""}});
  for (const Chart& chart : charts) {
    std::vector<Series> series;
    auto value = [&](const json& v, const std::string& model) {
      if (chart.key == "distill_error") return lookup(v, {"distill", "after_mean"});
      if (chart.key == "model_tflops") return lookup(v, {"flops", "model_tflops"});
      return metric(v, model.c_str(), chart.key.c_str());
    };
    for (const std::string& model : chart.models) {
      if (model == "teacher") {
        // One teacher series: its value at each x (from the first variant there).
        Series s{"teacher", {}, {}};
        for (size_t i = 0; i < variants.size(); ++i) {
          if (std::find(s.x.begin(), s.x.end(), xs[i]) != s.x.end()) continue;
          s.x.push_back(xs[i]);
          s.y.push_back(value(variants[i], model));
        }
        series.push_back(std::move(s));
        continue;
      }
      for (const std::string& group : group_names) {
        std::vector<std::string> label_parts;
        if (!model.empty()) label_parts.push_back(model);
        if (!group.empty()) label_parts.push_back(group);
        Series s{fmt::format("{}", fmt::join(label_parts, ", ")), {}, {}};
        for (size_t i = 0; i < variants.size(); ++i) {
          if (groups[i] != group) continue;
          s.x.push_back(xs[i]);
          s.y.push_back(value(variants[i], model));
        }
        series.push_back(std::move(s));
      }
    }
    drop_empty(series);
    if (series.empty()) continue;
    PlotOptions options;
    options.title = fmt::format("{}: {} vs {}", sweep, chart.label, x_short);
    options.x_label = x_key.empty() ? "variant" : x_key;
    options.y_label = chart.label;
    options.x_tick_labels = numeric ? std::vector<std::string>{} : tick_labels;
    const std::string name = fmt::format("{}_vs_{}.png", chart.key, x_short);
    write_plot_png(dir + "/" + name, series, options);
    written.push_back(name);
  }
  return written;
}

void write_results(json results, const std::string& dir) {
  fs::create_directories(dir);
  results["plots"] = write_result_plots(results, dir);
  write_text(dir + "/results.json", results.dump(2) + "\n");
  write_text(dir + "/table.md", results_table_md(results));
  write_text(dir + "/table.csv", results_table_csv(results));
}

}  // namespace rehyat::sweep
