// `rehyat run CONFIG.yaml [key=value ...]`: the whole pipeline (SPEC §4) of a run config
// (train/run_config.h), and one subcommand per stage (`rehyat teacher CONFIG ...`,
// `rehyat cache ...`, ...) that runs that stage alone on the same run folder.
//
// `run` refuses an existing run folder unless --resume (continue: finished stages are
// skipped, an interrupted one resumes from its last state file) or --force (delete it
// and start over). A stage subcommand works inside an existing run folder; an
// interrupted stage still needs --resume. Overrides may follow the config as key=value
// words or be given with --set.
#include <algorithm>
#include <memory>

#include <fmt/format.h>

#include "core/config.h"
#include "train/pipeline.h"
#include "train/run_config.h"
#include "tools/commands.h"

namespace rehyat::tools {

namespace {

struct RunOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string stages;  // comma-separated
  bool resume = false;
  bool force = false;
};

void add_common_options(CLI::App* cmd, RunOptions& o) {
  cmd->add_option("config", o.config_path, "Run config YAML (e.g. configs/quickstart.yaml)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("overrides", o.overrides, "Config overrides key=value (e.g. teacher.steps=50)");
  cmd->add_option("--set", o.overrides, "Config override key=value, repeatable")->expected(1);
  cmd->add_flag("--resume", o.resume, "Continue an interrupted run from its last checkpoints");
  cmd->add_flag("--force", o.force, "Delete the run folder first and start over");
}

void run(const RunOptions& o, const std::vector<std::string>& stages, bool reuse_folder) {
  ConfigSchema schema;
  train::declare_run_config(schema);
  const Config config = load_config(o.config_path, schema, o.overrides);
  train::PipelineOptions options;
  options.resume = o.resume;
  options.force = o.force;
  options.reuse_folder = reuse_folder || o.resume;
  train::run_pipeline(config, stages, options);
}

}  // namespace

void add_run_commands(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Run the pipeline of a run config: " +
                                                fmt::format("{}", fmt::join(train::stage_names(), " -> ")));
  add_common_options(cmd, *o);
  cmd->add_option("--stages", o->stages, "Only these stages, comma-separated (e.g. teacher,cache)");
  cmd->callback([o] {
    std::vector<std::string> stages;
    for (size_t begin = 0; begin < o->stages.size();) {
      const size_t end = std::min(o->stages.find(',', begin), o->stages.size());
      if (end > begin) stages.push_back(o->stages.substr(begin, end - begin));
      begin = end + 1;
    }
    run(*o, stages.empty() ? train::stage_names() : stages, false);
  });

  const std::map<std::string, std::string> docs = {
      {"teacher", "Write the shapes dataset and train the toy softmax teacher (or load teacher.weights)"},
      {"cache", "Store the teacher's self-attention inputs and outputs along its sampling trajectories"},
      {"distill", "Distill each converted block's feature maps from the cache (only φ trains); rank blocks"},
      {"finetune", "Fine-tune the whole hybrid DiT with flow matching"},
      {"sample", "Sample held-out prompts with the teacher and the students (GIF and PNG strips)"},
      {"eval", "Metrics of SPEC §5 and the run's report.md"}};
  for (const std::string& stage : train::stage_names()) {
    auto so = std::make_shared<RunOptions>();
    CLI::App* sub = app.add_subcommand(stage, docs.at(stage));
    add_common_options(sub, *so);
    sub->callback([so, stage] { run(*so, {stage}, true); });
  }
}

}  // namespace rehyat::tools
