// `rehyat sweep experiments/NAME.yaml [--stages a,b] [--jobs N] [--only V1,V2] [--force] [--dry-run]`:
// an ablation sweep (sweep/sweep.h): one shared teacher and activation cache, then every
// variant of the sweep file through its stages in child processes, results in
// <results>/<name>/ (table.md, table.csv, results.json, PNG plots). Exits non-zero when
// a variant failed (after running the others).
//
// A file with a `compute:` mapping instead of `sweep:` is a compute sweep
// (sweep/compute_sweep.h): FLOPs tables and per-block latency and memory of attention
// variants, nothing trained. Of the options only --dry-run, --force (replace results
// measured on another device) and --set compute.key=value apply to it.
#include <algorithm>
#include <memory>

#include <fmt/format.h>

#include "core/check.h"
#include "sweep/compute_sweep.h"
#include "sweep/sweep.h"
#include "tools/commands.h"

namespace rehyat::tools {

namespace {

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  for (size_t begin = 0; begin < text.size();) {
    const size_t end = std::min(text.find(',', begin), text.size());
    if (end > begin) parts.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return parts;
}

struct SweepCommand {
  std::string file, stages, only;
  std::vector<std::string> sets;  // compute sweeps: compute.key=value
  int jobs = 0;
  bool force = false;
  bool dry_run = false;
};

}  // namespace

void add_sweep_command(CLI::App& app) {
  auto o = std::make_shared<SweepCommand>();
  CLI::App* cmd = app.add_subcommand(
      "sweep",
      "Run an ablation sweep: one teacher and cache, then each variant's distill -> finetune -> sample -> eval");
  cmd->add_option("file", o->file, "Sweep file (e.g. experiments/tc.yaml)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--stages", o->stages,
                  "Variant stages, comma-separated (default: the sweep file's; "
                  "from distill,finetune,sample,eval)");
  cmd->add_option("--jobs", o->jobs,
                  "Variants at once (default: one per CUDA device when the base runs on cuda, else 1)");
  cmd->add_option("--only", o->only, "Only these variants, comma-separated");
  cmd->add_flag("--force", o->force,
                "Delete the selected variants' run folders first (the shared teacher and cache stay); "
                "compute sweeps: replace results measured on another device");
  cmd->add_option("--set", o->sets,
                  "Compute sweeps only: override a key of the file, key=value, repeatable "
                  "(e.g. --set compute.device=cuda:1)");
  cmd->add_flag("--dry-run", o->dry_run,
                "Check the sweep file and every variant's config, print the plan, run nothing");
  cmd->callback([o] {
    if (sweep::is_compute_sweep_file(o->file)) {
      REHYAT_CHECK(o->stages.empty() && o->only.empty() && o->jobs == 0,
                   "{} is a compute sweep (compute:): --stages, --only and --jobs apply to ablation sweeps only",
                   o->file);
      sweep::ComputeSweepOptions options;
      options.file = o->file;
      options.overrides = o->sets;
      options.force = o->force;
      options.dry_run = o->dry_run;
      sweep::run_compute_sweep(options);
      return;
    }
    REHYAT_CHECK(o->sets.empty(), "--set applies to compute sweeps only; {} is an ablation sweep: put its "
                 "overrides in sweep.set", o->file);
    sweep::SweepOptions options;
    options.file = o->file;
    options.stages = split_commas(o->stages);
    options.only = split_commas(o->only);
    options.jobs = o->jobs;
    options.force = o->force;
    options.dry_run = o->dry_run;
    REHYAT_CHECK(o->jobs >= 0, "--jobs must be at least 1 (got {})", o->jobs);
    const sweep::SweepOutcome outcome = sweep::run_sweep(options);
    if (o->dry_run) {
      REHYAT_CHECK(outcome.failed.empty(), "sweep: {} variant(s) have invalid configs: {}", outcome.failed.size(),
                   fmt::join(outcome.failed, ", "));
      fmt::print("{} to run, {} finished\n", outcome.finished.size(), outcome.skipped.size());
      return;
    }
    REHYAT_CHECK(outcome.failed.empty(), "sweep: {} variant(s) failed: {} (see {}/table.md and each sweep.log)",
                 outcome.failed.size(), fmt::join(outcome.failed, ", "), outcome.results_dir);
  });
}

}  // namespace rehyat::tools
