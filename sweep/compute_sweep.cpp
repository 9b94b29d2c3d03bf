// The compute sweep (see compute_sweep.h): the file, the analytic FLOPs tables, the
// per-block latency and memory runs, and the tables and plots of their results.
#include "sweep/compute_sweep.h"

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "attention/flops.h"
#include "autograd/graph.h"
#include "core/allocator.h"
#include "core/atomic_file.h"
#include "core/check.h"
#include "core/config.h"
#include "core/device.h"
#include "core/log.h"
#include "layers/hybrid_core.h"
#include "layers/wan_model.h"
#include "core/measure.h"
#include "sweep/plot.h"

namespace rehyat::sweep {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kWarmup = 1;  // untimed runs before each measurement
constexpr int kBlock = 0;   // the block that is timed (of a one-block model)

const ConfigSchema& compute_schema() {
  static const ConfigSchema schema = [] {
    ConfigSchema s;
    s.section("compute", "a compute sweep: analytic FLOPs and per-block latency (sweep/compute_sweep.h)")
        .optional<std::string>("compute.name", "", "the sweep's name (default: the file's stem)")
        .required<std::string>("compute.model", "model YAML, relative to this file")
        .optional<std::string>("compute.results", "results",
                               "results folder (relative to this file); outputs in <results>/<name>/")
        .optional<std::string>("compute.device", "cuda", "cuda, cuda:N or cpu")
        .choice("compute.dtype", {"bf16", "f32"}, "bf16", "compute dtype (bf16 needs CUDA); parameters are f32")
        .section("compute.flops", "the analytic FLOPs tables at one video size")
        .optional<int64_t>("compute.flops.frames", 81, "video frames (4k + 1)")
        .optional<int64_t>("compute.flops.height", 480, "video height, pixels")
        .optional<int64_t>("compute.flops.width", 832, "video width, pixels")
        .optional<std::vector<int64_t>>("compute.flops.chunk_frames", {1, 2, 3, 5, 7}, "Tc values of the Tc table")
        .optional<int64_t>("compute.flops.overlap_for_chunk", 1, "To of the Tc table")
        .optional<std::vector<int64_t>>("compute.flops.overlap_frames", {0, 1, 2, 3}, "To values of the To table")
        .optional<int64_t>("compute.flops.chunk_for_overlap", 3, "Tc of the To table")
        .optional<bool>("compute.flops.causal", true, "causal ReHyAt in both tables")
        .optional<int64_t>("compute.flops.degree", 2, "P of the feature maps in both tables")
        .section("compute.latency", "one DiT block's forward: time and peak memory over video length")
        .optional<std::vector<int64_t>>("compute.latency.frames", {81, 161, 321, 641},
                                        "video frames (4k + 1), ascending")
        .optional<int64_t>("compute.latency.height", 320, "video height, pixels")
        .optional<int64_t>("compute.latency.width", 480, "video width, pixels")
        .optional<int64_t>("compute.latency.iters", 5, "timed runs per measurement (median)")
        .section("compute.latency.variants", "variant name -> list of attention.key=value overrides",
                 SectionKeys::Open);
    return s;
  }();
  return schema;
}

const ConfigSchema& model_schema() {
  static const ConfigSchema schema = [] {
    ConfigSchema s;
    layers::declare_model_config(s);
    attention::declare_attention_config(s);
    return s;
  }();
  return schema;
}

// Variant names head table columns, CSV cells and legend entries: kept plain.
bool plain_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '+') return false;
  return true;
}

double tflops(int64_t flops) { return double(flops) / 1e12; }
double gib(double bytes) { return bytes / double(1ull << 30); }

// The attention keys that matter for its kind (the others are absent).
json attention_json(const attention::AttentionConfig& a) {
  json j = {{"kind", attention::attention_kind_name(a.kind)}};
  switch (a.kind) {
    case attention::AttentionKind::Softmax: break;
    case attention::AttentionKind::Rehyat:
      j.update({{"chunk_frames", a.chunk_frames}, {"overlap_frames", a.overlap_frames}, {"causal", a.causal},
                {"degree", a.degree}});
      break;
    case attention::AttentionKind::UniformHybrid: j.update({{"rate", a.rate}, {"degree", a.degree}}); break;
    case attention::AttentionKind::Linear: j.update({{"degree", a.degree}}); break;
  }
  return j;
}

// A JSON value as a table cell: "" when absent (null), else as JSON writes it.
std::string value_cell(const json& j) { return j.is_null() ? "" : j.dump(); }

json grid_json(const layers::TokenGrid& grid) {
  return {{"frames", grid.frames}, {"height", grid.height}, {"width", grid.width}, {"total", grid.tokens()}};
}

// The ReHyAt attention of the FLOPs tables at (Tc, To).
attention::AttentionConfig table_attention(const ComputeSpec& spec, int64_t chunk, int64_t overlap,
                                           const std::string& where) {
  return compute_attention(spec,
                           {"attention.kind=rehyat", fmt::format("attention.chunk_frames={}", chunk),
                            fmt::format("attention.overlap_frames={}", overlap),
                            fmt::format("attention.causal={}", spec.flops.causal ? "true" : "false"),
                            fmt::format("attention.degree={}", spec.flops.degree)},
                           where);
}

void write_text(const std::string& path, const std::string& text) {
  AtomicFileWriter writer(path);
  writer.write(text);
  writer.commit();
}

double number_or_nan(const json& j) { return j.is_number() ? j.get<double>() : kNaN; }

std::string cell(double value, int significant = 4) {
  return std::isfinite(value) ? format_number(value, significant) : "–";
}

std::string csv_number(const json& j) {
  if (j.is_number_integer()) return j.dump();
  return j.is_number() ? fmt::format("{}", j.get<double>()) : "";
}

// The latency runs' cell text: the value, or what happened instead.
std::string run_cell(const json& run, double value, int significant) {
  const std::string status = run.value("status", "");
  if (status == "ok") return cell(value, significant);
  if (status == "OOM" || status == "skipped") return status;
  return "failed";
}

// The plots of a results.json (file names; none without libpng).
std::vector<std::string> write_compute_plots(const json& results, const std::string& dir) {
  std::vector<std::string> written;
  if (!plot_png_supported()) return written;
  const std::string device = results.value("device_name", "?");
  const json& latency = results["latency"];
  auto frames_plot = [&](const std::string& file, const std::string& title, const std::string& y_label,
                         const std::function<double(const json&)>& value) {
    std::vector<Series> series;
    bool any = false;
    for (const json& v : latency["variants"]) {
      Series s;
      s.label = v["name"].get<std::string>();
      for (const json& run : v["runs"]) {
        s.x.push_back(run["video_frames"].get<double>());
        s.y.push_back(run["status"] == "ok" ? value(run) : kNaN);
        any = any || run["status"] == "ok";
      }
      series.push_back(std::move(s));
    }
    if (!any) return;
    PlotOptions o;
    o.title = title;
    o.x_label = fmt::format("video frames at {} x {} pixels", latency["video"]["height"].get<int64_t>(),
                            latency["video"]["width"].get<int64_t>());
    o.y_label = y_label;
    o.log_x = true;
    o.width = 960;
    o.height = 600;
    write_plot_png(dir + "/" + file, series, o);
    written.push_back(file);
  };
  frames_plot("latency_vs_frames.png", fmt::format("One DiT block forward, {}", device), "ms (median)",
              [](const json& run) { return run["ms"].get<double>(); });
  frames_plot("peak_memory_vs_frames.png", fmt::format("Peak working memory of one block, {}", device), "GiB",
              [](const json& run) { return gib(run["peak_bytes"].get<double>()); });

  const json& flops = results["flops"];
  auto flops_plot = [&](const std::string& file, const char* table, const char* key, const std::string& x_label,
                        const std::string& title) {
    Series hybrid, softmax;
    hybrid.label = "ReHyAt";
    softmax.label = "softmax";
    for (const json& row : flops[table]) {
      hybrid.x.push_back(row["attention"][key].get<double>());
      hybrid.y.push_back(row["self_attention_tflops"].get<double>());
      softmax.x.push_back(hybrid.x.back());
      softmax.y.push_back(flops["softmax"]["self_attention_tflops"].get<double>());
    }
    if (hybrid.x.empty()) return;
    PlotOptions o;
    o.title = title;
    o.x_label = x_label;
    o.y_label = "self-attention TFLOP (one block)";
    o.width = 960;
    o.height = 600;
    write_plot_png(dir + "/" + file, {hybrid, softmax}, o);
    written.push_back(file);
  };
  const std::string size = fmt::format("{} x {} x {}", flops["video"]["frames"].get<int64_t>(),
                                       flops["video"]["height"].get<int64_t>(), flops["video"]["width"].get<int64_t>());
  flops_plot("self_attention_tflops_vs_chunk_frames.png", "vs_chunk", "chunk_frames", "chunk frames Tc",
             fmt::format("Self-attention FLOPs vs Tc (To = {}), {}", flops["overlap_for_chunk"].get<int64_t>(), size));
  flops_plot("self_attention_tflops_vs_overlap_frames.png", "vs_overlap", "overlap_frames", "overlap frames To",
             fmt::format("Self-attention FLOPs vs To (Tc = {}), {}", flops["chunk_for_overlap"].get<int64_t>(), size));
  return written;
}

}  // namespace

bool is_compute_sweep_file(const std::string& path) {
  try {
    const YAML::Node root = YAML::LoadFile(path);
    return root.IsMap() && root["compute"].IsDefined();
  } catch (const YAML::Exception&) {
    return false;
  }
}

attention::AttentionConfig compute_attention(const ComputeSpec& spec, const std::vector<std::string>& overrides,
                                             const std::string& where) {
  attention::AttentionConfig a;
  try {
    a = attention::attention_config_from(load_config(spec.model_path, model_schema(), overrides), spec.model);
  } catch (const Error& e) {
    REHYAT_FAIL("{}: {}", where, e.what());
  }
  REHYAT_CHECK(a.kind == attention::AttentionKind::Softmax ||
                   a.converted_blocks(spec.model.num_layers).size() == size_t(spec.model.num_layers),
               "{}: a compute sweep converts every block: leave attention.hybrid_blocks and "
               "attention.hybrid_block_count unset",
               where);
  return a;
}

ComputeSpec load_compute_sweep(const std::string& path, const std::vector<std::string>& overrides) {
  REHYAT_CHECK(fs::is_regular_file(path), "compute sweep file '{}' not found", path);
  const Config config = load_config(path, compute_schema(), overrides);  // unknown keys are errors
  auto where = [&](const std::string& key) {
    const std::string origin = config.origin(key);
    return fmt::format("{}: {}", origin == "default" ? path + " (default)" : origin, key);
  };
  const fs::path folder = fs::path(path).parent_path();
  auto relative_to_file = [&](const std::string& p) {
    return fs::path(p).is_absolute() ? p : (folder / p).lexically_normal().string();
  };

  ComputeSpec spec;
  spec.file = path;
  spec.name = config.get<std::string>("compute.name");
  if (spec.name.empty()) spec.name = fs::path(path).stem().string();
  REHYAT_CHECK(plain_name(spec.name), "{}: '{}' must be a plain folder name (letters, digits, '_', '-', '+')",
               where("compute.name"), spec.name);
  spec.model_path = relative_to_file(config.get<std::string>("compute.model"));
  REHYAT_CHECK(fs::is_regular_file(spec.model_path), "{}: model file '{}' not found (relative to the sweep file)",
               where("compute.model"), spec.model_path);
  try {
    spec.model = layers::from_config(load_config(spec.model_path, model_schema()));
  } catch (const Error& e) {
    REHYAT_FAIL("{}: {}", where("compute.model"), e.what());
  }
  spec.results_dir = (fs::path(relative_to_file(config.get<std::string>("compute.results"))) / spec.name)
                         .lexically_normal()
                         .string();
  spec.device = config.get<std::string>("compute.device");
  Device device;
  try {
    device = parse_device(spec.device);
  } catch (const Error& e) {
    REHYAT_FAIL("{}: {}", where("compute.device"), e.what());
  }
  spec.dtype = config.get<std::string>("compute.dtype");
  REHYAT_CHECK(spec.dtype != "bf16" || device.is_cuda(),
               "{}: bf16 compute runs on CUDA only; use dtype f32 with device {}", where("compute.dtype"), spec.device);

  // FLOPs: the video size and both tables' values.
  ComputeSpec::Flops& f = spec.flops;
  f.frames = config.get<int64_t>("compute.flops.frames");
  f.height = config.get<int64_t>("compute.flops.height");
  f.width = config.get<int64_t>("compute.flops.width");
  try {
    attention::video_token_grid(spec.model, f.frames, f.height, f.width);
  } catch (const Error& e) {
    REHYAT_FAIL("{} (with height, width): {}", where("compute.flops.frames"), e.what());
  }
  f.chunk_frames = config.get<std::vector<int64_t>>("compute.flops.chunk_frames");
  f.overlap_frames = config.get<std::vector<int64_t>>("compute.flops.overlap_frames");
  f.overlap_for_chunk = config.get<int64_t>("compute.flops.overlap_for_chunk");
  f.chunk_for_overlap = config.get<int64_t>("compute.flops.chunk_for_overlap");
  f.causal = config.get<bool>("compute.flops.causal");
  f.degree = config.get<int64_t>("compute.flops.degree");
  for (int64_t tc : f.chunk_frames) table_attention(spec, tc, f.overlap_for_chunk, where("compute.flops.chunk_frames"));
  for (int64_t to : f.overlap_frames)
    table_attention(spec, f.chunk_for_overlap, to, where("compute.flops.overlap_frames"));

  // Latency: the video sizes (ascending, so a variant out of memory can skip the rest).
  ComputeSpec::Latency& l = spec.latency;
  l.frames = config.get<std::vector<int64_t>>("compute.latency.frames");
  l.height = config.get<int64_t>("compute.latency.height");
  l.width = config.get<int64_t>("compute.latency.width");
  l.iters = config.get<int64_t>("compute.latency.iters");
  REHYAT_CHECK(!l.frames.empty(), "{}: give at least one video length", where("compute.latency.frames"));
  for (size_t i = 0; i < l.frames.size(); ++i) {
    REHYAT_CHECK(i == 0 || l.frames[i] > l.frames[i - 1], "{}: video lengths must be ascending, got {}",
                 where("compute.latency.frames"), fmt::join(l.frames, ", "));
    try {
      attention::video_token_grid(spec.model, l.frames[i], l.height, l.width);
    } catch (const Error& e) {
      REHYAT_FAIL("{} (with height, width): {}", where("compute.latency.frames"), e.what());
    }
  }
  REHYAT_CHECK(l.iters >= 1, "{}: must be at least 1, got {}", where("compute.latency.iters"), l.iters);

  const std::string section = "compute.latency.variants";
  REHYAT_CHECK(config.has(section) && !config.keys(section).empty(),
               "{}: compute.latency.variants is missing: map each variant's name to a list of attention.key=value",
               path);
  for (const std::string& name : config.keys(section)) {
    const std::string key = section + "." + name;
    ComputeVariant v;
    v.name = name;
    v.origin = where(key);
    REHYAT_CHECK(plain_name(name), "{}: '{}' must be a plain name (letters, digits, '_', '-', '+')", v.origin, name);
    v.overrides = config.get<std::vector<std::string>>(key);
    for (const std::string& o : v.overrides)
      REHYAT_CHECK(o.starts_with("attention.") && o.find('=') != std::string::npos,
                   "{}: '{}' is not of the form attention.key=value", v.origin, o);
    v.attention = compute_attention(spec, v.overrides, v.origin);
    spec.variants.push_back(std::move(v));
  }
  return spec;
}

json compute_flops(const ComputeSpec& spec) {
  const ComputeSpec::Flops& f = spec.flops;
  const layers::TokenGrid grid = attention::video_token_grid(spec.model, f.frames, f.height, f.width);
  const attention::ModelFlops softmax = attention::model_flops(spec.model, attention::AttentionConfig{}, 1, grid);
  auto row = [&](const std::string& label, const attention::AttentionConfig& a) {
    const attention::ModelFlops m = attention::model_flops(spec.model, a, 1, grid);
    return json{{"label", label},
                {"attention", attention_json(a)},
                {"self_attention_tflops", tflops(m.hybrid_block.self_attention())},
                {"block_tflops", tflops(m.hybrid_block.total())},
                {"model_tflops", tflops(m.total())},
                {"self_attention_ratio",
                 double(m.hybrid_block.self_attention()) / double(softmax.hybrid_block.self_attention())},
                {"block_ratio", double(m.hybrid_block.total()) / double(softmax.hybrid_block.total())},
                {"model_ratio", double(m.total()) / double(softmax.total())}};
  };
  json j;
  j["video"] = {{"frames", f.frames}, {"height", f.height}, {"width", f.width}};
  j["tokens"] = grid_json(grid);
  j["overlap_for_chunk"] = f.overlap_for_chunk;
  j["chunk_for_overlap"] = f.chunk_for_overlap;
  j["softmax"] = row("softmax", attention::AttentionConfig{});
  j["vs_chunk"] = json::array();
  for (int64_t tc : f.chunk_frames)
    j["vs_chunk"].push_back(row(fmt::format("rehyat Tc={} To={}", tc, f.overlap_for_chunk),
                                table_attention(spec, tc, f.overlap_for_chunk, spec.file)));
  j["vs_overlap"] = json::array();
  for (int64_t to : f.overlap_frames)
    j["vs_overlap"].push_back(row(fmt::format("rehyat Tc={} To={}", f.chunk_for_overlap, to),
                                  table_attention(spec, f.chunk_for_overlap, to, spec.file)));
  j["variants"] = json::array();
  for (const ComputeVariant& v : spec.variants) j["variants"].push_back(row(v.name, v.attention));
  return j;
}

json run_compute_sweep(const ComputeSweepOptions& options) {
  const ComputeSpec spec = load_compute_sweep(options.file, options.overrides);
  const Device device = parse_device(spec.device);
  const DType compute = parse_dtype(spec.dtype, "compute.dtype");
  const ComputeSpec::Latency& l = spec.latency;
  std::vector<layers::TokenGrid> grids;
  for (int64_t frames : l.frames) grids.push_back(attention::video_token_grid(spec.model, frames, l.height, l.width));

  json results;
  results["sweep"] = spec.name;
  results["file"] = spec.file;
  std::string command = fmt::format("rehyat sweep {}", spec.file);
  for (const std::string& o : options.overrides) command += fmt::format(" --set {}", o);
  results["command"] = command;
  results["device"] = device.str();
  results["model"] = spec.model_path;
  results["model_config"] = {{"dim", spec.model.dim},           {"ffn_dim", spec.model.ffn_dim},
                             {"num_heads", spec.model.num_heads}, {"head_dim", spec.model.head_dim()},
                             {"num_layers", spec.model.num_layers}, {"text_len", spec.model.text_len}};
  results["dtype"] = spec.dtype;
  results["param_dtype"] = "f32";
  results["flops"] = compute_flops(spec);

  // The plan.
  const json& flops = results["flops"];
  log::info("compute sweep {}: model {} ({} blocks of dim {}, {} heads of {}), {} on {}; results in {}", spec.name,
            spec.model_path, spec.model.num_layers, spec.model.dim, spec.model.num_heads, spec.model.head_dim(),
            spec.dtype, spec.device, spec.results_dir);
  log::info("FLOPs at {} x {} x {} pixels ({} tokens): Tc {} at To {}, To {} at Tc {} ({}causal, P {}), softmax and "
            "the {} variants",
            spec.flops.frames, spec.flops.height, spec.flops.width, flops["tokens"]["total"].get<int64_t>(),
            fmt::join(spec.flops.chunk_frames, ","), spec.flops.overlap_for_chunk,
            fmt::join(spec.flops.overlap_frames, ","),
            spec.flops.chunk_for_overlap, spec.flops.causal ? "" : "non-", spec.flops.degree, spec.variants.size());
  std::vector<std::string> sizes;
  for (size_t i = 0; i < grids.size(); ++i)
    sizes.push_back(fmt::format("{} ({} x {} x {} = {} tokens)", l.frames[i], grids[i].frames, grids[i].height,
                                grids[i].width, grids[i].tokens()));
  log::info("latency: block {} forward at {} x {} pixels, frames {}; median of {} after {} warm-up; {} runs:", kBlock,
            l.height, l.width, fmt::join(sizes, ", "), l.iters, kWarmup, spec.variants.size() * l.frames.size());
  for (const ComputeVariant& v : spec.variants)
    log::info("  {}: {}", v.name, fmt::join(v.overrides, " "));

  const bool device_present =
      !device.is_cuda() || (cuda_device_count() > 0 && device.index < cuda_device_count());
  const std::string results_path = spec.results_dir + "/results.json";
  std::string previous_device;
  if (fs::exists(results_path)) {
    std::ifstream in(results_path);
    try {
      previous_device = json::parse(in).value("device_name", "");
    } catch (const json::exception&) {
      previous_device = "";  // unreadable: replaced like any result of this device
    }
  }
  if (options.dry_run) {
    if (!device_present) log::warn("device {} is not present on this machine: the runs would fail", spec.device);
    if (!previous_device.empty())
      log::info("{} holds results measured on '{}': replaced by a run{}", results_path, previous_device,
                device_present && previous_device != device_name(device) ? " with --force (another device)" : "");
    return results;
  }
  REHYAT_CHECK(device_present, "{}: compute.device {}: no such CUDA device on this machine ({} found{})", spec.file,
               spec.device, cuda_device_count(), built_with_cuda() ? "" : "; this rehyat is built without CUDA");
  const std::string this_device = device_name(device);
  results["device_name"] = this_device;
  REHYAT_CHECK(options.force || previous_device.empty() || previous_device == this_device,
               "{}: {} holds results measured on '{}', this run is on '{}': run with --force to replace them",
               spec.file, results_path, previous_device, this_device);

  // Latency: one block of a one-block copy of the model (the other blocks would only take
  // memory), random weights, each variant's attention installed in turn.
  layers::WanConfig one_block = spec.model;
  one_block.num_layers = 1;
  layers::WanModel model(one_block, device, DType::F32, /*seed=*/1);
  const Tensor timestep = Tensor::full({1}, 700.0, DType::F32, device);
  const Tensor context =
      Tensor::randn({1, spec.model.text_len, spec.model.text_dim}, /*seed=*/3, 0, DType::F32, device);
  json& latency = results["latency"];
  latency["video"] = {{"height", l.height}, {"width", l.width}};
  latency["iters"] = l.iters;
  latency["warmup"] = kWarmup;
  latency["block"] = kBlock;
  latency["context_tokens"] = spec.model.text_len;
  latency["frames"] = json::array();
  for (size_t i = 0; i < grids.size(); ++i)
    latency["frames"].push_back({{"video_frames", l.frames[i]},
                                 {"latent_frames", grids[i].frames * spec.model.patch_size[0]},
                                 {"tokens", grids[i].tokens()}});
  latency["variants"] = json::array();
  const size_t total_runs = spec.variants.size() * grids.size();
  size_t run_index = 0;
  for (const ComputeVariant& v : spec.variants) {
    layers::apply_attention_config(model, v.attention, /*seed=*/2);
    model.set_requires_grad(false);
    json variant = {{"name", v.name}, {"overrides", v.overrides}, {"attention", attention_json(v.attention)}};
    variant["runs"] = json::array();
    std::optional<int64_t> out_of_memory_at;  // video frames of this variant's first OOM
    for (size_t i = 0; i < grids.size(); ++i) {
      const layers::TokenGrid& grid = grids[i];
      const attention::BlockFlops block = attention::block_flops(spec.model, v.attention, 1, grid);
      json run = {{"video_frames", l.frames[i]},
                  {"tokens", grid.tokens()},
                  {"block_tflops", tflops(block.total())},
                  {"self_attention_tflops", tflops(block.self_attention())}};
      std::string outcome;
      if (out_of_memory_at) {
        run["status"] = "skipped";
        outcome = fmt::format("skipped (out of memory at {} frames)", *out_of_memory_at);
      } else {
        Measurement m;
        layers::PreparedInputs prepared;
        try {
          autograd::NoGradGuard no_grad;
          const Tensor latents = Tensor::randn(
              {1, spec.model.in_dim, grid.frames * spec.model.patch_size[0], l.height / 8, l.width / 8},
              /*seed=*/4, 0, DType::F32, device);  // [1, in, F, H/8, W/8]
          prepared = model.prepare(latents, timestep, context, compute);
        } catch (const std::exception& e) {
          m.failure = describe_failure(e);
          empty_cache(device);
        }
        if (m.failure.empty())
          m = measure_run(device, kWarmup, int(l.iters), [&] {
            autograd::NoGradGuard no_grad;
            return model.run_block(kBlock, prepared.x, prepared);  // [1, N, D]
          });
        prepared = layers::PreparedInputs{};
        if (m.ok) {
          run["status"] = "ok";
          run["ms"] = m.ms;
          run["peak_bytes"] = m.working_peak;
          run["output_bytes"] = m.output_bytes;
          run["achieved_tflops"] = double(block.total()) / (m.ms * 1e-3) / 1e12;
          outcome = fmt::format("{:.4g} ms, {:.4g} GiB peak, {:.4g} TFLOP/s", m.ms, gib(double(m.working_peak)),
                                run["achieved_tflops"].get<double>());
        } else {
          run["status"] = m.failure;
          outcome = m.failure;
          if (m.failure == "OOM") out_of_memory_at = l.frames[i];
        }
      }
      log::info("[{}/{}] {} at {} frames ({} tokens): {}", ++run_index, total_runs, v.name, l.frames[i],
                grid.tokens(), outcome);
      variant["runs"].push_back(std::move(run));
    }
    latency["variants"].push_back(std::move(variant));
  }

  std::error_code ec;
  fs::create_directories(spec.results_dir, ec);
  REHYAT_CHECK(!ec, "cannot create the results folder '{}': {}", spec.results_dir, ec.message());
  results["plots"] = write_compute_plots(results, spec.results_dir);
  write_text(results_path, results.dump(2) + "\n");
  write_text(spec.results_dir + "/table.md", compute_table_md(results));
  write_text(spec.results_dir + "/table.csv", compute_table_csv(results));
  log::info("compute sweep {}: results in {} (table.md, table.csv, results.json, {} plots)", spec.name,
            spec.results_dir, results["plots"].size());
  return results;
}

std::string compute_table_md(const json& results) {
  const json& flops = results["flops"];
  const json latency = results.value("latency", json());  // absent in a dry run's results
  const json& mc = results["model_config"];
  std::string md = fmt::format("# Compute sweep `{}`\n\n", results["sweep"].get<std::string>());
  md += fmt::format("- Device: **{}** ({})\n", results.value("device_name", "?"), results["device"].get<std::string>());
  md += fmt::format("- Command: `{}`\n", results["command"].get<std::string>());
  md += fmt::format("- Model: `{}` (dim {}, FFN {}, {} heads of {}, {} blocks), random weights; compute {}, "
                    "parameters {}\n\n",
                    results["model"].get<std::string>(), mc["dim"].get<int64_t>(), mc["ffn_dim"].get<int64_t>(),
                    mc["num_heads"].get<int64_t>(), mc["head_dim"].get<int64_t>(), mc["num_layers"].get<int64_t>(),
                    results["dtype"].get<std::string>(), results["param_dtype"].get<std::string>());

  // FLOPs tables.
  const json& t = flops["tokens"];
  md += fmt::format(
      "## FLOPs at {} x {} x {} pixels ({} x {} x {} = {} tokens)\n\n"
      "Analytic (attention/flops.h): one forward, batch 1, matmuls as 2mnk, attention over the key pairs each "
      "query uses; elementwise ops not counted. *Self-attn*: the attention op of one block (feature maps, "
      "softmax and linear parts); *block*: one DiT block; *model*: the whole forward with every block converted. "
      "×sm: the ratio to softmax.\n\n",
      flops["video"]["frames"].get<int64_t>(), flops["video"]["height"].get<int64_t>(),
      flops["video"]["width"].get<int64_t>(), t["frames"].get<int64_t>(), t["height"].get<int64_t>(),
      t["width"].get<int64_t>(), t["total"].get<int64_t>());
  auto flops_table = [&](const std::string& title, const json& rows, bool softmax_first) {
    md += title + "\n\n";
    md += "| attention | Tc | To | self-attn TFLOP | ×sm | block TFLOP | ×sm | model TFLOP | ×sm |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    auto line = [&](const json& row) {
      const json& a = row["attention"];
      auto key_cell = [&](const char* key) { return a.contains(key) ? a[key].dump() : std::string("–"); };
      md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", row["label"].get<std::string>(),
                        key_cell("chunk_frames"), key_cell("overlap_frames"),
                        cell(row["self_attention_tflops"].get<double>()),
                        cell(row["self_attention_ratio"].get<double>(), 3),
                        cell(row["block_tflops"].get<double>()), cell(row["block_ratio"].get<double>(), 3),
                        cell(row["model_tflops"].get<double>()), cell(row["model_ratio"].get<double>(), 3));
    };
    if (softmax_first) line(flops["softmax"]);
    for (const json& row : rows) line(row);
    md += "\n";
  };
  flops_table(fmt::format("### vs chunk size Tc (To = {})", flops["overlap_for_chunk"].get<int64_t>()),
              flops["vs_chunk"], true);
  flops_table(fmt::format("### vs overlap To (Tc = {})", flops["chunk_for_overlap"].get<int64_t>()),
              flops["vs_overlap"], true);
  flops_table("### The latency variants at this size", flops["variants"], false);

  // Latency tables: variants as rows, video lengths as columns.
  if (latency.is_object()) {
    md += fmt::format(
        "## One DiT block at {} x {} pixels\n\n"
        "Block {} of a one-block copy of the model, forward only (no autograd), {} text tokens; median of {} "
        "runs after {} warm-up, device synchronized. Peak memory: the allocator's peak during the run beyond "
        "what was allocated before it (parameters, inputs), less the block's output. OOM: out of memory; "
        "skipped: a shorter video already ran out of memory.\n\n",
        latency["video"]["height"].get<int64_t>(), latency["video"]["width"].get<int64_t>(),
        latency["block"].get<int64_t>(), latency["context_tokens"].get<int64_t>(), latency["iters"].get<int64_t>(),
        latency["warmup"].get<int64_t>());
    std::string header = "| variant |", rule = "|---|";
    for (const json& f : latency["frames"]) {
      header += fmt::format(" {} fr ({} tok) |", f["video_frames"].get<int64_t>(), f["tokens"].get<int64_t>());
      rule += "---:|";
    }
    auto run_table = [&](const std::string& title, const std::function<std::string(const json&)>& text) {
      md += fmt::format("{}\n\n{}\n{}\n", title, header, rule);
      for (const json& v : latency["variants"]) {
        md += fmt::format("| {} |", v["name"].get<std::string>());
        for (const json& run : v["runs"]) md += fmt::format(" {} |", text(run));
        md += "\n";
      }
      md += "\n";
    };
    run_table("### Latency, ms", [](const json& r) { return run_cell(r, number_or_nan(r["ms"]), 4); });
    run_table("### Peak working memory, GiB",
              [](const json& r) { return run_cell(r, gib(number_or_nan(r["peak_bytes"])), 3); });
    run_table("### Achieved TFLOP/s (analytic block FLOPs / time)",
              [](const json& r) { return run_cell(r, number_or_nan(r["achieved_tflops"]), 3); });
    run_table("### Block TFLOP (analytic)", [](const json& r) { return cell(r["block_tflops"].get<double>()); });
    std::string failures;
    for (const json& v : latency["variants"])
      for (const json& run : v["runs"]) {
        const std::string status = run["status"].get<std::string>();
        if (status != "ok" && status != "skipped")
          failures += fmt::format("- {} at {} frames: {}\n", v["name"].get<std::string>(),
                                  run["video_frames"].get<int64_t>(), status);
      }
    if (!failures.empty()) md += "### Failures\n\n" + failures + "\n";
    md += "### Variants\n\n";
    for (const json& v : latency["variants"])
      md += fmt::format("- {}: `{}`\n", v["name"].get<std::string>(),
                        fmt::join(v["overrides"].get<std::vector<std::string>>(), " "));
    md += "\n";
  }
  if (results.contains("plots") && !results["plots"].empty()) {
    md += "## Plots\n\n";
    for (const json& p : results["plots"]) md += fmt::format("![{0}]({0})\n\n", p.get<std::string>());
  }
  return md;
}

std::string compute_table_csv(const json& results) {
  std::string csv =
      "table,variant,kind,chunk_frames,overlap_frames,rate,causal,degree,video_frames,height,width,tokens,"
      "self_attention_tflops,block_tflops,model_tflops,self_attention_ratio,block_ratio,model_ratio,status,ms,"
      "peak_bytes,achieved_tflops\n";
  auto attention_cells = [](const json& a) {
    return fmt::format("{},{},{},{},{},{}", a["kind"].get<std::string>(), value_cell(a.value("chunk_frames", json())),
                       value_cell(a.value("overlap_frames", json())), value_cell(a.value("rate", json())),
                       value_cell(a.value("causal", json())), value_cell(a.value("degree", json())));
  };
  const json& flops = results["flops"];
  const std::string video = fmt::format("{},{},{},{}", flops["video"]["frames"].dump(), flops["video"]["height"].dump(),
                                        flops["video"]["width"].dump(), flops["tokens"]["total"].dump());
  auto flops_rows = [&](const std::string& table, const json& rows) {
    for (const json& row : rows)
      csv += fmt::format("{},{},{},{},{},{},{},{},{},{},,,,\n", table, row["label"].get<std::string>(),
                         attention_cells(row["attention"]), video, csv_number(row["self_attention_tflops"]),
                         csv_number(row["block_tflops"]), csv_number(row["model_tflops"]),
                         csv_number(row["self_attention_ratio"]), csv_number(row["block_ratio"]),
                         csv_number(row["model_ratio"]));
  };
  flops_rows("flops_vs_chunk", json::array({flops["softmax"]}));
  flops_rows("flops_vs_chunk", flops["vs_chunk"]);
  flops_rows("flops_vs_overlap", flops["vs_overlap"]);
  flops_rows("flops_variants", flops["variants"]);
  if (const json latency = results.value("latency", json()); latency.is_object())
    for (const json& v : latency["variants"])
      for (const json& run : v["runs"]) {
        // Failure messages stay in results.json and table.md: the CSV says only what happened.
        std::string status = run["status"].get<std::string>();
        if (status.starts_with("failed")) status = "failed";
        // tokens, then self-attention and block TFLOPs, model TFLOPs and the ratios empty, status ...
        csv += fmt::format("latency,{},{},{},{},{},{},{},{},,,,,{},{},{},{}\n", v["name"].get<std::string>(),
                           attention_cells(v["attention"]), run["video_frames"].dump(),
                           latency["video"]["height"].dump(), latency["video"]["width"].dump(), run["tokens"].dump(),
                           csv_number(run["self_attention_tflops"]), csv_number(run["block_tflops"]), status,
                           csv_number(run.value("ms", json())), csv_number(run.value("peak_bytes", json())),
                           csv_number(run.value("achieved_tflops", json())));
      }
  return csv;
}

}  // namespace rehyat::sweep
