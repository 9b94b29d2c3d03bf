// The ablation-sweep runner behind `rehyat sweep experiments/NAME.yaml` (issue 6): one
// teacher and one activation cache, then every variant of the sweep file
// (sweep/sweep_file.h) through distill -> finetune -> sample -> eval, each in its own
// process, spread over the GPUs; results in <results>/<name>/ (sweep/sweep_results.h).
//
// Run folders, under <run.out_dir of the base config>/sweep-<name>/:
//   shared/      an ordinary pipeline run of the base config (run.name shared, every block
//                converted so the cache holds them all) that runs teacher and cache once;
//   <variant>/   an ordinary run folder per variant whose data/, teacher/ and cache/ files
//                are hard links of shared's (copies where the filesystem refuses links),
//                so `rehyat run` resumes it like any other; sweep.log holds the child's
//                output, sweep.json the runner's record (sweep_results.h).
//
// A variant runs as `<this rehyat binary> run BASE <sweep set> <variant set>
// run.out_dir=<root> run.name=<variant> --resume --stages <stages>`, stdout and stderr to
// its sweep.log; up to `jobs` at once, child i pinned to one GPU with CUDA_VISIBLE_DEVICES
// when the base config runs on cuda. Before anything runs, every variant's config is
// loaded: a variant that changes a key the teacher or cache depend on stops the sweep
// (naming the key); one whose config is invalid fails alone. Finished variants (the last
// stage's output exists) are skipped, half-finished ones resume; a failed one (non-zero
// exit or a signal) is reported with the end of its log and the rest go on. Results are
// rewritten after every variant ends and at the end.
#pragma once

#include <string>
#include <vector>

namespace rehyat::sweep {

struct SweepOptions {
  std::string file;                 // the sweep file
  std::vector<std::string> stages;  // empty: the sweep file's
  std::vector<std::string> only;    // variant names; empty: all
  int jobs = 0;                     // children at once; 0: the CUDA devices when the base runs on cuda, else 1
  bool force = false;               // delete the selected variants' run folders first (not shared/)
  std::string executable;           // the rehyat binary the children run; "": this process's (/proc/self/exe)
  double heartbeat_seconds = 120;   // a "still running" line this often while children run
  bool dry_run = false;             // check everything and print the plan; run and write nothing
};

struct SweepOutcome {
  std::vector<std::string> finished;  // ran to the end now (dry run: would run)
  std::vector<std::string> skipped;   // finished before
  std::vector<std::string> failed;    // (dry run: invalid configs)
  std::string results_dir;
};

// Runs the sweep; throws rehyat::Error for a bad sweep file, a forbidden key or a failed
// shared run (naming its log). Failed variants are in the outcome, not thrown. A dry run
// loads and checks every config, prints what would run, and touches no file.
SweepOutcome run_sweep(const SweepOptions& options);

// Hard-links every file under shared_dir's data/, teacher/ and cache/ into the same place
// under variant_dir (copies where linking fails). Files already there are kept when they
// are the same file or the same size (an earlier copy); a different one is an error naming
// it (it came from another teacher).
struct LinkCounts {
  int linked = 0, copied = 0, present = 0;
};
LinkCounts link_shared_files(const std::string& shared_dir, const std::string& variant_dir);

// The children's GPU slots: CUDA_VISIBLE_DEVICES of this process split at commas, else
// "0".."count-1".
std::vector<std::string> visible_gpus(int count);

}  // namespace rehyat::sweep
