// The sweep runner's pieces without running a pipeline: sweep files (parsing, defaults,
// errors naming file, line and key), grid expansion and variant names, the check that no
// variant changes what the shared teacher and cache depend on, the runs' overrides, the
// results (JSON, Markdown, CSV, plots) from synthetic run folders, and the hard links
// that share the teacher. tests/tools/test_sweep.py runs real sweeps.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "attention/flops.h"
#include "sweep/plot.h"
#include "sweep/sweep.h"
#include "sweep/sweep_file.h"
#include "sweep/sweep_results.h"
#include "temp_dir.h"
#include "train/pipeline.h"
#include "train/run_config.h"

namespace rehyat::sweep {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::error_message;
using testing::expect_contains;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

const std::string kTinyBase = std::string(REHYAT_SOURCE_DIR) + "/configs/sweep-tiny.yaml";

// A sweep file in `dir` whose `sweep:` body is `body` (base: the tiny CPU config).
std::string sweep_file(const TempDir& dir, const std::string& name, const std::string& body) {
  const std::string path = dir.file(name);
  write_file(path, "sweep:\n  base: " + kTinyBase + "\n  set: [run.out_dir=" + dir.file("runs") + "]\n" + body);
  return path;
}

std::vector<std::string> names(const SweepSpec& spec) {
  std::vector<std::string> out;
  for (const Variant& v : spec.variants) out.push_back(v.name);
  return out;
}

// ---- sweep files ------------------------------------------------------------------------

TEST(SweepFile, GridIsTheCartesianProductLastKeyFastest) {
  TempDir dir;
  const std::string path = sweep_file(dir, "tc.yaml",
                                      "  grid:\n"
                                      "    attention.chunk_frames: [1, 2, 3]\n"
                                      "    attention.overlap_frames: [0, 1]\n");
  const SweepSpec spec = load_sweep(path);
  EXPECT_EQ(spec.name, "tc");  // the file's stem
  EXPECT_EQ(spec.base, kTinyBase);
  EXPECT_EQ(spec.stages, (std::vector<std::string>{"distill", "finetune", "sample", "eval"}));
  EXPECT_EQ(spec.keys, (std::vector<std::string>{"attention.chunk_frames", "attention.overlap_frames"}));
  EXPECT_EQ(spec.x_key, "attention.chunk_frames");
  EXPECT_EQ(spec.results_dir, (dir.path() / "results" / "tc").string());
  EXPECT_EQ(names(spec),
            (std::vector<std::string>{"chunk_frames-1_overlap_frames-0", "chunk_frames-1_overlap_frames-1",
                                      "chunk_frames-2_overlap_frames-0", "chunk_frames-2_overlap_frames-1",
                                      "chunk_frames-3_overlap_frames-0", "chunk_frames-3_overlap_frames-1"}));
  EXPECT_EQ(spec.variants[3].overrides,
            (std::vector<std::string>{"attention.chunk_frames=2", "attention.overlap_frames=1"}));
  EXPECT_EQ(spec.variants[3].values[1], (std::pair<std::string, std::string>{"attention.overlap_frames", "1"}));
}

TEST(SweepFile, ExplicitNameStagesXAndResultsAreRelativeToTheFile) {
  TempDir dir;
  fs::create_directories(dir.path() / "sub");
  write_file(dir.file("sub/s.yaml"),
             "sweep:\n"
             "  name: mine\n"
             "  base: " +
                 fs::relative(kTinyBase, dir.path() / "sub").string() +
                 "\n"
                 "  stages: [eval, distill]\n"
                 "  grid: {attention.degree: [1, 2], attention.causal: [true]}\n"
                 "  x: attention.causal\n"
                 "  results: out\n");
  // The base path above is relative to the file's folder: it must resolve to the same file.
  const SweepSpec spec = load_sweep(dir.file("sub/s.yaml"));
  EXPECT_TRUE(fs::equivalent(spec.base, kTinyBase));
  EXPECT_EQ(spec.name, "mine");
  EXPECT_EQ(spec.stages, (std::vector<std::string>{"distill", "eval"}));  // pipeline order
  EXPECT_EQ(spec.x_key, "attention.causal");
  EXPECT_EQ(spec.results_dir, (dir.path() / "sub" / "out" / "mine").string());
  EXPECT_EQ(names(spec), (std::vector<std::string>{"degree-1_causal-true", "degree-2_causal-true"}));
}

TEST(SweepFile, VariantListTakesSetAsListOrMapping) {
  TempDir dir;
  const std::string path = sweep_file(dir, "causal.yaml",
                                      "  variants:\n"
                                      "    - {name: causal, set: {attention.causal: true}}\n"
                                      "    - name: noncausal\n"
                                      "      set: [attention.causal=false, sample.mode=parallel]\n");
  const SweepSpec spec = load_sweep(path);
  EXPECT_EQ(names(spec), (std::vector<std::string>{"causal", "noncausal"}));
  EXPECT_EQ(spec.keys, (std::vector<std::string>{"attention.causal", "sample.mode"}));
  EXPECT_EQ(spec.x_key, "");  // two keys and no x: variants side by side
  EXPECT_EQ(spec.variants[0].overrides, (std::vector<std::string>{"attention.causal=true"}));
  EXPECT_EQ(spec.variants[1].overrides, (std::vector<std::string>{"attention.causal=false", "sample.mode=parallel"}));
  expect_contains(spec.variants[1].origin, {path + ":6:", "sweep.variants[1]"});

  const std::string one_key = sweep_file(dir, "one.yaml",
                                         "  variants:\n"
                                         "    - {name: a, set: [attention.degree=1]}\n"
                                         "    - {name: b, set: [attention.degree=3]}\n");
  EXPECT_EQ(load_sweep(one_key).x_key, "attention.degree");  // the one key the variants set
}

TEST(SweepFile, ErrorsNameTheFileLineAndKey) {
  TempDir dir;
  struct Case {
    std::string body;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"  grids: {attention.degree: [1]}\n", {":4:", "sweep.grids", "unknown key"}},
      {"  grid: {attention.chunk_frame: [1]}\n",
       {":4:", "sweep.grid", "'attention.chunk_frame' is not a run-config key"}},
      {"  grid: {attention.degree: []}\n", {":4:", "sweep.grid.attention.degree", "non-empty list"}},
      {"  grid: {attention.degree: 2}\n", {":4:", "sweep.grid.attention.degree", "non-empty list"}},
      {"  grid: {run.name: [a, b]}\n", {"sweep.grid", "'run.name' is set by the sweep itself"}},
      {"  grid: {run.out_dir: [a, b]}\n", {"sweep.grid", "'run.out_dir' is set by the sweep itself"}},
      {"  grid: {attention.degree: [1]}\n  variants: [{name: a, set: [attention.degree=2]}]\n",
       {"either sweep.grid or sweep.variants"}},
      {"  x: 3\n", {"either sweep.grid or sweep.variants"}},
      {"  grid: {attention.degree: [1]}\n  stages: [teacher, distill]\n",
       {":5:", "sweep.stages", "stage 'teacher' runs once for the whole sweep"}},
      {"  grid: {attention.degree: [1]}\n  stages: [distil]\n", {"sweep.stages", "unknown stage 'distil'"}},
      {"  grid: {attention.degree: [1]}\n  x: attention.degre\n",
       {":5:", "sweep.x", "not one of the keys the sweep varies"}},
      {"  grid: {attention.degree: [1]}\n  x: attention.causal\n", {":5:", "sweep.x", "'attention.causal' is not one"}},
      {"  variants: [{name: a, set: [attention.degree=2]}, {name: a, set: [attention.degree=3]}]\n",
       {"sweep.variants[1]", "a second variant named 'a'"}},
      {"  variants: [{name: shared, set: [attention.degree=2]}]\n", {"sweep.variants[0]", "'shared'"}},
      {"  variants: [{name: a, set: [attention.degree]}]\n", {"sweep.variants[0].set", "not of the form key=value"}},
      {"  variants: [{name: a, sets: [attention.degree=1]}]\n", {"sweep.variants[0]", "needs 'name:' and 'set:'"}},
      {"  variants: [{name: a, set: [attention.degree=1], note: x}]\n", {"sweep.variants[0]", "unknown key 'note'"}},
      {"  grid: {attention.degree: [1]}\n  name: a/b\n", {"sweep.name", "plain folder name"}},
  };
  for (const Case& c : cases) {
    const std::string path = sweep_file(dir, "bad.yaml", c.body);
    std::vector<std::string> parts = c.parts;
    parts.push_back(path);
    expect_contains(error_message([&] { load_sweep(path); }), parts);
  }

  write_file(dir.file("nobase.yaml"), "sweep:\n  grid: {attention.degree: [1]}\n");
  expect_contains(error_message([&] { load_sweep(dir.file("nobase.yaml")); }),
                  {"nobase.yaml", "sweep.base is missing"});
  write_file(dir.file("badbase.yaml"), "sweep:\n  base: nowhere.yaml\n  grid: {attention.degree: [1]}\n");
  expect_contains(error_message([&] { load_sweep(dir.file("badbase.yaml")); }),
                  {"badbase.yaml:2", "sweep.base", "nowhere.yaml", "not found"});
  write_file(dir.file("syntax.yaml"), "sweep:\n  grid: {attention.degree: [1\n");
  expect_contains(error_message([&] { load_sweep(dir.file("syntax.yaml")); }), {"syntax.yaml", "YAML syntax error"});
  write_file(dir.file("top.yaml"), "sweep:\n  base: x\nextra: 1\n");
  expect_contains(error_message([&] { load_sweep(dir.file("top.yaml")); }),
                  {"top.yaml:3", "unknown top-level key 'extra'"});
  expect_contains(error_message([&] { load_sweep(dir.file("missing.yaml")); }), {"missing.yaml", "not found"});
}

TEST(SweepFile, VariantNamesAreFolderSafeAndUnique) {
  EXPECT_EQ(variant_name({{"attention.hybrid_blocks", "[0, 1, 2]"}, {"attention.causal", "true"}}),
            "hybrid_blocks-0+1+2_causal-true");
  EXPECT_EQ(variant_name({{"attention.hybrid_blocks", "[]"}}), "hybrid_blocks-none");
  EXPECT_EQ(variant_name({{"distill.lr", "1.0e-3"}, {"finetune.lr", "1e-4"}}), "distill-lr-1.0e-3_finetune-lr-1e-4");
  EXPECT_EQ(variant_name({{"sample.solver", "uni/pc x"}}), "solver-uni-pc-x");
  expect_contains(error_message([] {
                    expand_grid({{"sample.solver", {"a b", "a/b"}}}, "f.yaml:3: sweep.grid");
                  }),
                  {"f.yaml:3: sweep.grid", "both be named 'solver-a-b'"});
  expect_contains(error_message([] {
                    expand_grid({{"sample.solver", {}}}, "f.yaml:3: sweep.grid");
                  }),
                  {"sweep.grid.sample.solver", "at least one value"});
}

TEST(SweepFile, VariantStagesAreCheckedAndOrdered) {
  EXPECT_EQ(check_variant_stages({"eval", "distill", "sample"}, "--stages"),
            (std::vector<std::string>{"distill", "sample", "eval"}));
  expect_contains(error_message([] { check_variant_stages({"cache"}, "--stages"); }),
                  {"--stages", "'cache' runs once"});
  expect_contains(error_message([] { check_variant_stages({"train"}, "--stages"); }),
                  {"--stages", "unknown stage 'train'"});
  expect_contains(error_message([] { check_variant_stages({}, "--stages"); }), {"--stages", "no stages"});
}

// ---- configs of the runs --------------------------------------------------------------------

TEST(SweepConfig, RunsLiveUnderTheSweepFolderWithEveryBlockCachedInShared) {
  TempDir dir;
  // The base converts one block (and so samples in parallel); the shared run converts all.
  write_file(dir.file("tc.yaml"), "sweep:\n  base: " + kTinyBase + "\n  set: [run.out_dir=" + dir.file("runs") +
                                      ", attention.hybrid_block_count=1, sample.mode=parallel]\n"
                                      "  grid: {attention.chunk_frames: [2]}\n");
  const SweepSpec spec = load_sweep(dir.file("tc.yaml"));
  const SweepLayout layout = sweep_layout(spec);
  EXPECT_EQ(layout.root, (dir.path() / "runs" / "sweep-tc").string());
  EXPECT_EQ(layout.shared_dir, layout.root + "/shared");
  EXPECT_EQ(layout.shared_out_dir, layout.root);
  EXPECT_EQ(layout.shared_name, "shared");

  const Config shared = load_sweep_config(spec, shared_overrides(spec, layout));
  EXPECT_EQ(shared.get<std::string>("run.name"), "shared");
  EXPECT_EQ(shared.get<std::string>("run.out_dir"), layout.root);
  EXPECT_EQ(shared.get<int64_t>("attention.hybrid_block_count"), 0);
  EXPECT_TRUE(shared.get<std::vector<int64_t>>("attention.hybrid_blocks").empty());
  EXPECT_EQ(shared.get<std::string>("sample.mode"), "parallel");
  const train::RunConfig shared_run = train::run_config_from(shared);
  EXPECT_EQ(shared_run.attention.converted_blocks(shared_run.model.num_layers).size(),
            size_t(shared_run.model.num_layers));

  const Config variant = load_sweep_config(spec, variant_overrides(spec, spec.variants[0], layout));
  EXPECT_EQ(variant.get<std::string>("run.name"), spec.variants[0].name);
  EXPECT_EQ(variant.get<std::string>("run.out_dir"), layout.root);
  EXPECT_EQ(variant.get<int64_t>("attention.chunk_frames"), 2);
  EXPECT_EQ(variant.get<int64_t>("attention.hybrid_block_count"), 1);
  EXPECT_EQ(train::run_config_from(variant).run_dir(), layout.variant_dir(spec.variants[0].name));
}

TEST(SweepConfig, SweepsNamingOneSharedRunShareItsFolder) {
  TempDir dir;
  const SweepSpec tc =
      load_sweep(sweep_file(dir, "tc.yaml", "  shared: teacher-a\n  grid: {attention.chunk_frames: [2]}\n"));
  const SweepSpec to =
      load_sweep(sweep_file(dir, "to.yaml", "  shared: teacher-a\n  grid: {attention.overlap_frames: [2]}\n"));
  const SweepLayout a = sweep_layout(tc), b = sweep_layout(to);
  EXPECT_EQ(a.shared_dir, (dir.path() / "runs" / "teacher-a").string());
  EXPECT_EQ(a.shared_dir, b.shared_dir);
  EXPECT_NE(a.root, b.root);
  const Config shared = load_sweep_config(tc, shared_overrides(tc, a));
  EXPECT_EQ(train::run_config_from(shared).run_dir(), a.shared_dir);
  expect_contains(error_message([&] {
                    load_sweep(sweep_file(dir, "x.yaml", "  shared: sweep-x\n  grid: {attention.degree: [1]}\n"));
                  }),
                  {"sweep.shared", "not starting with 'sweep-'"});
}

TEST(SweepConfig, AnOutDirWithYamlSpecialCharactersSurvivesTheOverride) {
  TempDir dir;
  const std::string odd = dir.file("a: b #c");
  write_file(dir.file("s.yaml"), "sweep:\n  base: " + kTinyBase + "\n  set: ['run.out_dir=\"" + odd +
                                     "\"']\n  grid: {attention.degree: [1]}\n");
  const SweepSpec spec = load_sweep(dir.file("s.yaml"));
  const SweepLayout layout = sweep_layout(spec);
  EXPECT_EQ(layout.root, odd + "/sweep-s");
  const Config variant = load_sweep_config(spec, variant_overrides(spec, spec.variants[0], layout));
  EXPECT_EQ(variant.get<std::string>("run.out_dir"), layout.root);
}

TEST(SweepConfig, VariantsMayNotChangeWhatTheTeacherAndCacheDependOn) {
  TempDir dir;
  const std::string path = sweep_file(dir, "bad.yaml", "  grid:\n    teacher.steps: [20, 5]\n");
  const SweepSpec spec = load_sweep(path);
  const SweepLayout layout = sweep_layout(spec);
  const FlatConfig shared = flatten_config(load_sweep_config(spec, shared_overrides(spec, layout)));
  // 20 is the base's value: that variant is fine; 5 is not.
  check_shared_keys(shared, flatten_config(load_sweep_config(spec, variant_overrides(spec, spec.variants[0], layout))),
                    spec.variants[0]);
  const FlatConfig changed = flatten_config(load_sweep_config(spec, variant_overrides(spec, spec.variants[1], layout)));
  expect_contains(error_message([&] { check_shared_keys(shared, changed, spec.variants[1]); }),
                  {path + ":", "sweep.grid", "variant 'steps-5'", "teacher.steps (20 -> 5)", "sweep.set"});

  // Each protected key, and keys that are free to vary.
  for (const std::string key : {"model.num_heads=4", "data.frames=6", "cache.prompts=2", "run.seed=3",
                                "sample.guidance=2.0", "sample.solver=euler", "sample.shift=3.0", "run.compute=bf16"}) {
    FlatConfig v = shared;
    const size_t eq = key.find('=');
    v[key.substr(0, eq)] = key.substr(eq + 1);
    const std::vector<KeyChange> changes = teacher_cache_changes(shared, v);
    ASSERT_EQ(changes.size(), 1u) << key;
    EXPECT_EQ(changes[0].key, key.substr(0, eq));
    EXPECT_EQ(changes[0].after, key.substr(eq + 1));
  }
  for (const std::string key : {"attention.chunk_frames", "distill.steps", "finetune.lr", "sample.mode", "sample.steps",
                                "eval.videos", "run.device", "run.name"}) {
    FlatConfig v = shared;
    v[key] = "12345";
    EXPECT_TRUE(teacher_cache_changes(shared, v).empty()) << key;
  }
}

TEST(SweepConfig, FlattenedResolvedConfigMatchesTheLoadedOne) {
  TempDir dir;
  const SweepSpec spec = load_sweep(sweep_file(dir, "s.yaml", "  grid: {attention.degree: [3]}\n"));
  const Config config = load_sweep_config(spec, shared_overrides(spec, sweep_layout(spec)));
  const std::string saved = config.save_resolved(dir.file("run"));
  const FlatConfig from_file = flatten_config_text(read_file(saved), saved);
  EXPECT_EQ(from_file, flatten_config(config));
  EXPECT_EQ(from_file.at("cache.capture_steps"), "[1, 3]");
  EXPECT_EQ(from_file.at("teacher.steps"), "20");
}

// ---- results ----------------------------------------------------------------------------------

void write_json(const std::string& path, const json& j) {
  fs::create_directories(fs::path(path).parent_path());
  write_file(path, j.dump(2));
}

json metrics_of(double prompt, double psnr, double incoherence, double latency_ms = 0) {
  json m = {{"prompt_agreement", prompt},
            {"colour_agreement", 1.0},
            {"motion_agreement", prompt},
            {"trajectory_smoothness", 1.5},
            {"chunk_boundary_incoherence", incoherence},
            {"heldout_fm_loss", 0.03}};
  if (psnr > 0) m["psnr_vs_teacher"] = psnr;
  if (latency_ms > 0) {  // what the eval stage measures
    m["latency_ms"] = latency_ms;
    m["peak_memory_bytes"] = size_t(3) << 20;
    m["latency_mode"] = psnr > 0 ? "recurrent" : "parallel";
    m["device"] = "cpu";
  }
  return m;
}

// A finished variant's run folder with the files the pipeline writes (contents made up).
void finished_run(const std::string& dir, double prompt, double psnr, const std::vector<int>& converted) {
  for (const char* f : {"distill/model.safetensors", "finetune/model.safetensors", "samples/done", "report.md",
                        "config.resolved.yaml"}) {
    fs::create_directories(fs::path(dir + "/" + f).parent_path());
    write_file(dir + "/" + f, "x");
  }
  write_json(dir + "/stages.json", {{"distill", {{"seconds", 10.5}, {"device", "cpu"}}},
                                    {"finetune", {{"seconds", 20.0}, {"device", "cpu"}}},
                                    {"sample", {{"seconds", 3.0}, {"device", "cpu"}}},
                                    {"eval", {{"seconds", 1.0}, {"device", "cpu"}}}});
  write_json(dir + "/distill/errors.json",
             {{"blocks", {{"0", {{"before", 0.5}, {"after", 0.25}}}, {"1", {{"before", 1.0}, {"after", 0.0625}}}}},
              {"ranking", {0, 1}},
              {"converted_blocks", converted}});
  write_json(dir + "/eval/metrics.json", {{"teacher", metrics_of(0.75, 0, 1.0, 5.0)},
                                          {"distill", metrics_of(prompt / 2, psnr - 1, 2.0, 2.0)},
                                          {"finetune", metrics_of(prompt, psnr, 1.5, psnr / 10)}});
}

class SweepResultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = sweep_file(dir_, "tc.yaml",
                       "  grid:\n    attention.chunk_frames: [1, 3]\n    attention.overlap_frames: [0, 1]\n");
    spec_ = load_sweep(path_);
    layout_ = sweep_layout(spec_);
    // chunk_frames-1_overlap_frames-0: finished; -1_overlap-1: finished, one block converted;
    // 3_overlap_frames-0: failed; 3_overlap_frames-1: pending (no folder).
    finished_run(layout_.variant_dir(spec_.variants[0].name), 0.5, 14.25, {0, 1});
    finished_run(layout_.variant_dir(spec_.variants[1].name), 0.625, 16.5, {1});
    write_json(layout_.variant_dir(spec_.variants[0].name) + "/sweep.json",
               {{"status", "finished"}, {"device", "cpu"}, {"seconds", 40.0}});
    write_json(layout_.variant_dir(spec_.variants[2].name) + "/sweep.json",
               {{"status", "failed"},
                {"device", "cpu"},
                {"seconds", 2.0},
                {"exit_code", 1},
                {"signal", nullptr},
                {"error", nullptr},
                {"log_tail", {"step 2", "rehyat: error: loss is NaN at step 2"}}});
    write_json(layout_.shared_dir + "/stages.json", {{"teacher", {{"seconds", 30.0}}}, {"cache", {{"seconds", 4.0}}}});
  }

  TempDir dir_;
  std::string path_;
  SweepSpec spec_;
  SweepLayout layout_;
};

TEST_F(SweepResultsTest, ResultsJsonHasEveryVariantWithStatusValuesFlopsAndMetrics) {
  const json r = collect_results(spec_, layout_, spec_.stages);
  EXPECT_EQ(r["sweep"], "tc");
  EXPECT_EQ(r["x"], "attention.chunk_frames");
  EXPECT_EQ(r["video"]["frames"], 9);
  EXPECT_EQ(r["video"]["tokens"], 9 * 8 * 8);
  EXPECT_EQ(r["shared"]["seconds"]["teacher"], 30.0);
  EXPECT_EQ(r["counts"], json({{"finished", 2}, {"failed", 1}, {"incomplete", 0}, {"pending", 1}}));
  const json& v = r["variants"];
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0]["status"], "finished");
  EXPECT_EQ(v[1]["status"], "finished");
  EXPECT_EQ(v[2]["status"], "failed");
  EXPECT_EQ(v[3]["status"], "pending");
  EXPECT_EQ(v[2]["failure"]["exit_code"], 1);
  EXPECT_EQ(v[2]["failure"]["log_tail"][1], "rehyat: error: loss is NaN at step 2");
  EXPECT_EQ(v[0]["values"], json({{"attention.chunk_frames", 1}, {"attention.overlap_frames", 0}}));
  EXPECT_TRUE(v[0]["values"]["attention.chunk_frames"].is_number_integer());
  EXPECT_EQ(v[3]["x"], 3);
  EXPECT_EQ(v[0]["device"], "cpu");
  EXPECT_EQ(v[0]["wall_seconds"], 40.0);
  EXPECT_EQ(v[1]["seconds"]["finetune"], 20.0);
  // Latency and memory: the last student's (finetune) from the eval metrics.
  EXPECT_DOUBLE_EQ(v[0]["latency_ms"].get<double>(), 1.425);
  EXPECT_EQ(v[0]["peak_memory_bytes"], size_t(3) << 20);
  EXPECT_EQ(v[0]["latency_model"], json({{"model", "finetune"}, {"mode", "recurrent"}, {"device", "cpu"}}));
  EXPECT_TRUE(v[3]["latency_ms"].is_null());
  EXPECT_TRUE(v[3]["peak_memory_bytes"].is_null());
  // Means over the converted blocks only.
  EXPECT_DOUBLE_EQ(v[0]["distill"]["after_mean"].get<double>(), (0.25 + 0.0625) / 2);
  EXPECT_DOUBLE_EQ(v[0]["distill"]["before_mean"].get<double>(), 0.75);
  EXPECT_DOUBLE_EQ(v[1]["distill"]["after_mean"].get<double>(), 0.0625);
  EXPECT_DOUBLE_EQ(v[1]["distill"]["before_mean"].get<double>(), 1.0);
  EXPECT_TRUE(v[3]["distill"].is_null());
  EXPECT_EQ(v[1]["metrics"]["finetune"]["prompt_agreement"], 0.625);

  // FLOPs: the analytic counter on the variant's model and video, blocks as distilled.
  const train::RunConfig run =
      train::run_config_from(load_sweep_config(spec_, variant_overrides(spec_, spec_.variants[1], layout_)));
  attention::AttentionConfig one_block = run.attention;
  one_block.hybrid_blocks = {1};
  const layers::TokenGrid grid{9, 8, 8};
  EXPECT_DOUBLE_EQ(v[1]["flops"]["model_tflops"].get<double>(),
                   double(attention::model_flops(run.model, one_block, 1, grid).total()) / 1e12);
  EXPECT_EQ(v[1]["flops"]["converted_blocks"], json({1}));
  EXPECT_EQ(v[0]["flops"]["converted_blocks"], json({0, 1}));
  const attention::ModelFlops teacher = attention::model_flops(run.model, attention::AttentionConfig{}, 1, grid);
  EXPECT_DOUBLE_EQ(r["teacher_flops"]["model_tflops"].get<double>(), double(teacher.total()) / 1e12);
  // Tc changes the self-attention cost (pending variants too: from their config).
  EXPECT_NE(v[0]["flops"]["self_attention_tflops"], v[3]["flops"]["self_attention_tflops"]);
  EXPECT_GT(v[3]["flops"]["self_attention_tflops"].get<double>(), 0.0);
}

TEST_F(SweepResultsTest, MarkdownTableHasOneRowPerVariantAndTheFailures) {
  const std::string md = results_table_md(collect_results(spec_, layout_, spec_.stages));
  expect_contains(md,
                  {"# Sweep `tc`", "| variant | chunk_frames | overlap_frames | status | model TFLOP",
                   "| chunk_frames-1_overlap_frames-0 | 1 | 0 | finished |",
                   "| chunk_frames-3_overlap_frames-1 | 3 | 1 | pending |",
                   "| 0.75 → 0.156 |",  // distill error means of variant 0 (0.75 -> 0.15625)
                   "0.625", "16.5", "14.25", "## Distilled students", "## Failed variants",
                   "### chunk_frames-3_overlap_frames-0", "exit status 1", "loss is NaN at step 2",
                   "2 finished, 1 failed, 0 incomplete, 1 pending", "teacher 30.0 s, cache 4.0 s", "## Latency and memory",
                   "| chunk_frames-1_overlap_frames-0 | finetune | recurrent | cpu | 1.425 | 3 |",
                   "| chunk_frames-1_overlap_frames-1 | finetune | recurrent | cpu | 1.65 | 3 |",
                   "| teacher (in chunk_frames-1_overlap_frames-0) | teacher | parallel | cpu | 5 | 3 |"});
  // The teacher row: every variant's teacher agrees on prompt agreement (0.75).
  const size_t teacher_row = md.find("| teacher |");
  ASSERT_NE(teacher_row, std::string::npos);
  const std::string row = md.substr(teacher_row, md.find('\n', teacher_row) - teacher_row);
  expect_contains(row, {"| 0.75 |", "| 1.5 |"});
}

TEST_F(SweepResultsTest, CsvHasEveryColumnForEveryVariant) {
  const std::string csv = results_table_csv(collect_results(spec_, layout_, spec_.stages));
  std::istringstream in(csv);
  std::string line;
  std::vector<std::vector<std::string>> rows;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string c;
    while (std::getline(ss, c, ',')) cells.push_back(c);
    if (!line.empty() && line.back() == ',') cells.push_back("");
    rows.push_back(cells);
  }
  ASSERT_EQ(rows.size(), 5u);
  for (const auto& row : rows) EXPECT_EQ(row.size(), rows[0].size()) << fmt::format("{}", fmt::join(row, ","));
  auto column = [&](const std::string& name) {
    const auto it = std::find(rows[0].begin(), rows[0].end(), name);
    EXPECT_NE(it, rows[0].end()) << name;
    return size_t(it - rows[0].begin());
  };
  EXPECT_EQ(rows[0][0], "variant");
  EXPECT_EQ(rows[0][1], "attention.chunk_frames");
  EXPECT_EQ(rows[2][column("finetune_prompt_agreement")], "0.625");
  EXPECT_EQ(rows[2][column("distill_psnr_vs_teacher")], "15.5");
  EXPECT_EQ(rows[2][column("teacher_psnr_vs_teacher")], "");
  EXPECT_EQ(rows[2][column("converted_blocks")], "1");
  EXPECT_EQ(rows[1][column("converted_blocks")], "0 1");
  EXPECT_EQ(rows[1][column("distill_error_after_mean")], "0.15625");
  EXPECT_EQ(rows[1][column("seconds_distill")], "10.5");
  EXPECT_EQ(rows[3][column("status")], "failed");
  EXPECT_EQ(rows[4][column("status")], "pending");
  EXPECT_EQ(rows[4][column("finetune_prompt_agreement")], "");
  EXPECT_EQ(rows[1][column("latency_ms")], "1.425");
  EXPECT_EQ(rows[1][column("peak_memory_bytes")], "3145728");
  EXPECT_EQ(rows[4][column("latency_ms")], "");
  EXPECT_NE(rows[4][column("model_tflops")], "");
}

TEST_F(SweepResultsTest, WriteResultsWritesEveryFileAndThePlots) {
  write_results(collect_results(spec_, layout_, spec_.stages), spec_.results_dir);
  const json r = json::parse(read_file(spec_.results_dir + "/results.json"));
  EXPECT_EQ(r["variants"].size(), 4u);
  EXPECT_EQ(read_file(spec_.results_dir + "/table.md"), results_table_md(r));
  EXPECT_EQ(read_file(spec_.results_dir + "/table.csv"), results_table_csv(r));
  if (plot_png_supported()) {
    const std::vector<std::string> plots = r["plots"].get<std::vector<std::string>>();
    for (const char* expected : {"prompt_agreement_vs_tflops.png", "psnr_vs_teacher_vs_tflops.png",
                                 "prompt_agreement_vs_chunk_frames.png", "heldout_fm_loss_vs_chunk_frames.png",
                                 "distill_error_vs_chunk_frames.png", "model_tflops_vs_chunk_frames.png"})
      EXPECT_NE(std::find(plots.begin(), plots.end(), expected), plots.end()) << expected;
    for (const std::string& p : plots) {
      const std::string png = read_file(spec_.results_dir + "/" + p);
      ASSERT_GT(png.size(), 8u) << p;
      EXPECT_EQ(png.substr(1, 3), "PNG") << p;
    }
    expect_contains(read_file(spec_.results_dir + "/table.md"), {"![prompt_agreement_vs_tflops.png]"});
  } else {
    EXPECT_TRUE(r["plots"].empty());
  }
  for (const auto& entry : fs::directory_iterator(spec_.results_dir))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
}

TEST(SweepResults, CategoricalXAndQuotedCsvFields) {
  // A hand-made results.json: boolean x (categorical axis), a list value with commas.
  json r = {{"sweep", "causal"},
            {"file", "c.yaml"},
            {"base", "b.yaml"},
            {"set", json::array()},
            {"stages", {"distill", "eval"}},
            {"keys", {"attention.causal", "attention.hybrid_blocks"}},
            {"x", "attention.causal"},
            {"run_dir", "/r"},
            {"results_dir", "/x"},
            {"generated", "now"},
            {"video", nullptr},
            {"teacher_flops", nullptr},
            {"shared", {{"seconds", json::object()}, {"device", nullptr}}},
            {"counts", {{"finished", 2}}},
            {"plots", json::array()}};
  for (bool causal : {true, false}) {
    r["variants"].push_back(
        {{"name", causal ? "causal" : "noncausal"},
         {"values", {{"attention.causal", causal}, {"attention.hybrid_blocks", {0, 1}}}},
         {"x", causal},
         {"status", "finished"},
         {"log", "l"},
         {"device", "cpu"},
         {"wall_seconds", 1.0},
         {"seconds", json::object()},
         {"flops",
          {{"model_tflops", causal ? 1.0 : 2.0}, {"self_attention_tflops", 0.5}, {"converted_blocks", {0, 1}}}},
         {"distill", nullptr},
         {"metrics", {{"finetune", metrics_of(causal ? 0.5 : 0.25, 15, 1.0)}}},
         {"latency_ms", nullptr},
         {"peak_memory_bytes", nullptr}});
  }
  const std::string csv = results_table_csv(r);
  expect_contains(csv, {"\ncausal,true,\"[0,1]\",finished,cpu,1,0.5,0 1,"});
  expect_contains(results_table_md(r), {"| causal | true | [0,1] | finished |"});
  if (plot_png_supported()) {
    TempDir dir;
    const std::vector<std::string> plots = write_result_plots(r, dir.path().string());
    EXPECT_NE(std::find(plots.begin(), plots.end(), "prompt_agreement_vs_causal.png"), plots.end());
    EXPECT_TRUE(fs::exists(dir.file("prompt_agreement_vs_causal.png")));
    // No distillation errors: no such chart.
    EXPECT_EQ(std::find(plots.begin(), plots.end(), "distill_error_vs_causal.png"), plots.end());
  }
}

TEST(SweepResults, YamlTextBecomesTypedJson) {
  EXPECT_EQ(yaml_text_to_json("3"), json(3));
  EXPECT_TRUE(yaml_text_to_json("3").is_number_integer());
  EXPECT_EQ(yaml_text_to_json("1.0e-3"), json(1e-3));
  EXPECT_EQ(yaml_text_to_json("true"), json(true));
  EXPECT_EQ(yaml_text_to_json("[0, 1]"), json({0, 1}));
  EXPECT_EQ(yaml_text_to_json("unipc"), json("unipc"));
}

TEST(SweepResults, ARunIsFinishedWhenItsLastStageWroteItsOutput) {
  TempDir dir;
  EXPECT_FALSE(run_finished(dir.path().string(), {"distill", "finetune"}));
  fs::create_directories(dir.path() / "finetune");
  write_file(dir.file("finetune/model.safetensors"), "x");
  EXPECT_TRUE(run_finished(dir.path().string(), {"distill", "finetune"}));
  EXPECT_FALSE(run_finished(dir.path().string(), {"distill", "finetune", "sample"}));
  EXPECT_EQ(train::stage_output("eval"), "report.md");
  EXPECT_EQ(train::stage_output("cache"), "cache/done");
}

// ---- sharing the teacher ---------------------------------------------------------------------

ino_t inode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

TEST(SweepLinks, SharedFilesAreHardLinkedIntoEachVariant) {
  TempDir dir;
  const std::string shared = dir.file("shared"), variant = dir.file("v");
  for (const char* f : {"data/train.h5", "data/heldout.h5", "teacher/model.safetensors", "teacher/metrics.jsonl",
                        "cache/activations.h5", "cache/done"}) {
    fs::create_directories(fs::path(shared + "/" + f).parent_path());
    write_file(shared + "/" + f, std::string(f));
  }
  write_file(shared + "/cache/activations.h5.tmp.77", "half-written");
  write_file(shared + "/config.resolved.yaml", "run: {name: shared}\n");

  const LinkCounts first = link_shared_files(shared, variant);
  EXPECT_EQ(first.linked + first.copied, 6);
  EXPECT_EQ(first.present, 0);
  EXPECT_EQ(inode(variant + "/teacher/model.safetensors"), inode(shared + "/teacher/model.safetensors"));
  EXPECT_EQ(inode(variant + "/cache/activations.h5"), inode(shared + "/cache/activations.h5"));
  EXPECT_EQ(read_file(variant + "/data/heldout.h5"), "data/heldout.h5");
  EXPECT_FALSE(fs::exists(variant + "/cache/activations.h5.tmp.77"));  // temp files stay behind
  EXPECT_FALSE(fs::exists(variant + "/config.resolved.yaml"));         // the variant writes its own

  const LinkCounts again = link_shared_files(shared, variant);
  EXPECT_EQ(again.present, 6);
  EXPECT_EQ(again.linked + again.copied, 0);

  // A variant holding another teacher is refused, naming the file.
  fs::remove(variant + "/teacher/model.safetensors");
  write_file(variant + "/teacher/model.safetensors", "another teacher, longer");
  expect_contains(error_message([&] { link_shared_files(shared, variant); }),
                  {variant + "/teacher/model.safetensors", "differs", "--force --only v"});

  fs::remove_all(shared + "/cache");
  expect_contains(error_message([&] { link_shared_files(shared, dir.file("w")); }), {shared + "/cache", "missing"});
}

TEST(SweepGpus, ChildrenArePinnedToTheVisibleGpus) {
  const char* before = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string saved = before ? before : "";
  ::setenv("CUDA_VISIBLE_DEVICES", "3,5", 1);
  EXPECT_EQ(visible_gpus(2), (std::vector<std::string>{"3", "5"}));
  EXPECT_EQ(visible_gpus(1), (std::vector<std::string>{"3"}));
  ::unsetenv("CUDA_VISIBLE_DEVICES");
  EXPECT_EQ(visible_gpus(3), (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_TRUE(visible_gpus(0).empty());
  if (before) ::setenv("CUDA_VISIBLE_DEVICES", saved.c_str(), 1);
}

}  // namespace
}  // namespace rehyat::sweep
