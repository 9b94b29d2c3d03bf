// The sweep file of `rehyat sweep` (issue 6): which run config every variant starts from
// and what each variant changes. One YAML mapping, `sweep:`, paths relative to the file:
//
//   sweep:
//     name: tc                            # default: the file's stem
//     base: ../configs/shapes-h100.yaml   # the run config every variant starts from
//     set: [finetune.steps=400]           # overrides for every variant (and the shared run)
//     stages: [distill, finetune, sample, eval]   # the default; a subset in pipeline order
//     grid:                               # the cartesian product of run-config keys -> values
//       attention.chunk_frames: [1, 2, 3, 5, 7]
//       attention.overlap_frames: [1]
//     # or, instead of grid, a list:
//     # variants: [{name: causal, set: [attention.causal=true]}, ...]
//     x: attention.chunk_frames           # the plots' x axis, one of the swept keys (default: the
//                                         # first grid key, or the one key the variants set)
//     results: results                    # default: results/ beside the sweep file
//     shared: shapes-h100-teacher         # the shared run's folder under run.out_dir
//                                         # (default: sweep-<name>/shared): sweeps naming
//                                         # the same one share one teacher and cache
//
// `set` (of the sweep or of a variant) is a list of "key=value" strings or a mapping of
// dotted keys to values. Grid variants are named after their values, last key component
// first: `chunk_frames-3_overlap_frames-1` (the whole dotted key where two last components
// clash). Every key must be a run-config key (train/run_config.h); a variant may not set
// run.name or run.out_dir, which the sweep owns. Values are checked later, per variant:
// a value run_config rejects fails that variant alone.
//
// The teacher and the activation cache are made once, in the shared run, so no variant
// may change what they depend on (teacher_cache_keys()); check_shared_keys() enforces it.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"

namespace rehyat::sweep {

struct Variant {
  std::string name;                    // its run folder's name
  std::vector<std::string> overrides;  // "key=value" (grid values, or the variant's set)
  // Swept key -> the value's YAML text as the sweep file gives it, in key order.
  std::vector<std::pair<std::string, std::string>> values;
  std::string origin;  // where it is defined: "file:line: sweep.variants[2]" (for errors)
};

struct SweepSpec {
  std::string file;                 // the sweep file as given
  std::string name;                 // sweep.name
  std::string base;                 // the base run config (relative to the working directory, or absolute)
  std::vector<std::string> set;     // "key=value" overrides for every variant
  std::vector<std::string> stages;  // per variant, pipeline order
  std::vector<std::string> keys;    // swept keys: the grid's, or every key a variant sets, first-seen order
  std::string x_key;                // "" (variants without x): the plots put variants side by side
  std::string results_dir;          // <results>/<name>
  std::string shared;               // sweep.shared: the shared run's name under run.out_dir; "": sweep-<name>/shared
  std::vector<Variant> variants;
};

// Parses and checks a sweep file; errors (rehyat::Error) name the file, line and key.
SweepSpec load_sweep(const std::string& path);

// The stages a variant can run, in order: distill, finetune, sample, eval.
const std::vector<std::string>& variant_stage_names();
// Checks a stage list (e.g. from --stages) against variant_stage_names() and puts it in
// pipeline order; `where` names its source in errors.
std::vector<std::string> check_variant_stages(const std::vector<std::string>& stages, const std::string& where);

// A grid's variants: the cartesian product of `grid` (key -> YAML texts of its values,
// in key order), the last key varying fastest. `where` names the grid in errors
// (duplicate names).
std::vector<Variant> expand_grid(const std::vector<std::pair<std::string, std::vector<std::string>>>& grid,
                                 const std::string& where);

// A variant's folder name from its values: "<key>-<value>" joined with '_'; <key> is the
// last component of the dotted key unless two keys share it; the value's characters
// other than letters, digits, '.', '+' and '-' become '-' (lists: items joined with '+').
std::string variant_name(const std::vector<std::pair<std::string, std::string>>& values);

// Where the sweep's runs live: <run.out_dir of base + set>/sweep-<name>/ (absolute).
struct SweepLayout {
  std::string root;            // the sweep's run folder, holding a folder per variant
  std::string shared_out_dir;  // the shared run's run.out_dir: root, or run.out_dir with sweep.shared
  std::string shared_name;     // its run.name: "shared", or sweep.shared
  std::string shared_dir;      // shared_out_dir/shared_name: the teacher and cache run
  std::string variant_dir(const std::string& variant) const { return root + "/" + variant; }
};
SweepLayout sweep_layout(const SweepSpec& spec);

// The overrides of the shared run (teacher and cache): the sweep's set, then every block
// converted (the cache then holds them all) and parallel sampling (it samples nothing,
// so no recurrent-sampling check can reject it).
std::vector<std::string> shared_overrides(const SweepSpec& spec, const SweepLayout& layout);
// The overrides of a variant's run: the sweep's set, the variant's, then its folder.
std::vector<std::string> variant_overrides(const SweepSpec& spec, const Variant& variant, const SweepLayout& layout);

// The base run config with `overrides`, schema-checked (not yet run_config_from'd).
Config load_sweep_config(const SweepSpec& spec, const std::vector<std::string>& overrides);

// A config as dotted key -> YAML text of each leaf value ("[1, 2]" for lists).
using FlatConfig = std::map<std::string, std::string>;
FlatConfig flatten_config(const Config& config);
// The same of a resolved config file's text (config.resolved.yaml; comment lines ignored);
// `name` names it in errors.
FlatConfig flatten_config_text(const std::string& yaml, const std::string& name);

// Keys (dotted prefixes) the teacher and the activation cache depend on: model., data.,
// teacher., cache., run.seed, run.compute, and sample.solver, sample.shift and
// sample.guidance (the cache follows the teacher's guided sampling trajectories).
const std::vector<std::string>& teacher_cache_keys();

struct KeyChange {
  std::string key, before, after;  // YAML texts; "" where absent
};
// The teacher_cache_keys() keys whose values differ between `before` and `after`.
std::vector<KeyChange> teacher_cache_changes(const FlatConfig& before, const FlatConfig& after);

// Throws naming the variant's origin, the key and both values when `variant` changes a
// teacher_cache_keys() key of `shared` (the forbidden-key check).
void check_shared_keys(const FlatConfig& shared, const FlatConfig& variant, const Variant& which);

}  // namespace rehyat::sweep
