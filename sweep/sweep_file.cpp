// Sweep files: parsing, grid expansion, variant names, the variants' run configs and the
// check that no variant changes what the shared teacher and cache depend on.
#include "sweep/sweep_file.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "core/check.h"
#include "train/run_config.h"

namespace rehyat::sweep {

namespace fs = std::filesystem;

namespace {

// "file:line: sweep.key" for errors about `node`.
std::string where(const std::string& file, const YAML::Node& node, const std::string& key) {
  const YAML::Mark mark = node.Mark();
  return mark.line >= 0 ? fmt::format("{}:{}: sweep.{}", file, mark.line + 1, key)
                        : fmt::format("{}: sweep.{}", file, key);
}

// The YAML text of a value: a scalar as written, anything else in flow style ("[1, 2]").
std::string yaml_text(const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsNull()) return "~";
  YAML::Emitter out;
  out << YAML::Flow << node;
  return out.c_str();
}

bool plain_folder_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find(',') == std::string::npos;
}

const ConfigSchema& run_schema() {
  static const ConfigSchema schema = [] {
    ConfigSchema s;
    train::declare_run_config(s);
    return s;
  }();
  return schema;
}

// Checks that `key` is a run-config key a sweep may set; `owned` are keys the sweep sets itself.
void check_key(const std::string& key, const std::vector<std::string>& owned, const std::string& context) {
  REHYAT_CHECK(run_schema().find_field(key) != nullptr,
               "{}: '{}' is not a run-config key (train/run_config.h; configs/quickstart.yaml lists every key)",
               context, key);
  REHYAT_CHECK(std::find(owned.begin(), owned.end(), key) == owned.end(),
               "{}: '{}' is set by the sweep itself (runs go to <run.out_dir>/sweep-<name>/<variant>/)", context, key);
}

// A `set:` node: a list of "key=value" strings or a mapping of dotted keys to values.
// Returns (key, value text) pairs in file order.
std::vector<std::pair<std::string, std::string>> parse_set(const YAML::Node& node, const std::string& file,
                                                           const std::string& key,
                                                           const std::vector<std::string>& owned) {
  std::vector<std::pair<std::string, std::string>> pairs;
  const std::string context = where(file, node, key);
  if (node.IsMap()) {
    for (const auto& item : node) {
      const std::string k = item.first.as<std::string>();
      check_key(k, owned, context);
      pairs.emplace_back(k, yaml_text(item.second));
    }
  } else if (node.IsSequence()) {
    for (const YAML::Node& item : node) {
      REHYAT_CHECK(item.IsScalar(), "{}: each entry must be a 'key=value' string", where(file, item, key));
      const std::string text = item.Scalar();
      const size_t eq = text.find('=');
      REHYAT_CHECK(eq != std::string::npos && eq > 0, "{}: '{}' is not of the form key=value", where(file, item, key),
                   text);
      check_key(text.substr(0, eq), owned, where(file, item, key));
      pairs.emplace_back(text.substr(0, eq), text.substr(eq + 1));
    }
  } else {
    REHYAT_FAIL("{}: must be a list of 'key=value' strings or a mapping of keys to values", context);
  }
  std::set<std::string> seen;
  for (const auto& [k, v] : pairs) REHYAT_CHECK(seen.insert(k).second, "{}: '{}' is set twice", context, k);
  return pairs;
}

std::vector<std::string> as_overrides(const std::vector<std::pair<std::string, std::string>>& pairs) {
  std::vector<std::string> out;
  for (const auto& [k, v] : pairs) out.push_back(k + "=" + v);
  return out;
}

std::string quoted(const std::string& text) {
  YAML::Emitter out;
  out << YAML::DoubleQuoted << text;
  return out.c_str();
}

void flatten(const YAML::Node& node, const std::string& prefix, FlatConfig& out) {
  if (node.IsMap()) {
    for (const auto& item : node)
      flatten(item.second, prefix.empty() ? item.first.as<std::string>() : prefix + "." + item.first.as<std::string>(),
              out);
  } else if (!prefix.empty()) {
    out[prefix] = yaml_text(node);
  }
}

bool is_teacher_cache_key(const std::string& key) {
  for (const std::string& k : teacher_cache_keys())
    if (key == k || (k.back() == '.' && key.starts_with(k))) return true;
  return false;
}

}  // namespace

const std::vector<std::string>& variant_stage_names() {
  static const std::vector<std::string> names = {"distill", "finetune", "sample", "eval"};
  return names;
}

std::vector<std::string> check_variant_stages(const std::vector<std::string>& stages, const std::string& where) {
  REHYAT_CHECK(!stages.empty(), "{}: no stages given (choose from {})", where, fmt::join(variant_stage_names(), ", "));
  for (const std::string& s : stages) {
    REHYAT_CHECK(s != "teacher" && s != "cache",
                 "{}: stage '{}' runs once for the whole sweep, in its shared run, not per variant", where, s);
    REHYAT_CHECK(
        std::find(variant_stage_names().begin(), variant_stage_names().end(), s) != variant_stage_names().end(),
        "{}: unknown stage '{}' (stages: {})", where, s, fmt::join(variant_stage_names(), ", "));
  }
  std::vector<std::string> ordered;
  for (const std::string& s : variant_stage_names())
    if (std::find(stages.begin(), stages.end(), s) != stages.end()) ordered.push_back(s);
  return ordered;
}

std::string variant_name(const std::vector<std::pair<std::string, std::string>>& values) {
  auto last_part = [](const std::string& key) {
    const size_t dot = key.rfind('.');
    return dot == std::string::npos ? key : key.substr(dot + 1);
  };
  std::vector<std::string> parts;
  for (const auto& [key, value] : values) {
    size_t same = 0;
    for (const auto& other : values) same += last_part(other.first) == last_part(key);
    std::string label = same > 1 ? key : last_part(key);
    std::replace(label.begin(), label.end(), '.', '-');
    std::string text = value;
    if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
      std::string items;
      for (char c : text.substr(1, text.size() - 2)) {
        if (c == ' ') continue;
        items += c == ',' ? '+' : c;
      }
      text = items;
    }
    for (char& c : text)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '+' && c != '-') c = '-';
    if (text.empty()) text = "none";
    parts.push_back(label + "-" + text);
  }
  return fmt::format("{}", fmt::join(parts, "_"));
}

std::vector<Variant> expand_grid(const std::vector<std::pair<std::string, std::vector<std::string>>>& grid,
                                 const std::string& where) {
  REHYAT_CHECK(!grid.empty(), "{}: the grid has no keys", where);
  size_t count = 1;
  for (const auto& [key, values] : grid) {
    REHYAT_CHECK(!values.empty(), "{}.{}: needs at least one value", where, key);
    count *= values.size();
  }
  std::vector<Variant> variants;
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < count; ++i) {
    Variant v;
    size_t rest = i;
    std::vector<size_t> index(grid.size());
    for (size_t k = grid.size(); k-- > 0;) {  // the last key varies fastest
      index[k] = rest % grid[k].second.size();
      rest /= grid[k].second.size();
    }
    for (size_t k = 0; k < grid.size(); ++k) {
      const auto& [key, values] = grid[k];
      v.values.emplace_back(key, values[index[k]]);
      v.overrides.push_back(key + "=" + values[index[k]]);
    }
    v.name = variant_name(v.values);
    v.origin = where;
    REHYAT_CHECK(v.name != "shared", "{}: a variant may not be called 'shared' (the shared run's folder)", where);
    auto [it, fresh] = by_name.emplace(v.name, i);
    REHYAT_CHECK(fresh, "{}: two variants would both be named '{}' (values '{}' and '{}' look alike in a folder name)",
                 where, v.name, fmt::join(variants[it->second].overrides, " "), fmt::join(v.overrides, " "));
    variants.push_back(std::move(v));
  }
  return variants;
}

SweepSpec load_sweep(const std::string& path) {
  REHYAT_CHECK(fs::is_regular_file(path), "sweep file '{}' not found", path);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::ParserException& e) {
    REHYAT_FAIL("{}:{}:{}: YAML syntax error: {}", path, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
  REHYAT_CHECK(root.IsMap() && root["sweep"] && root["sweep"].IsMap(),
               "{}: a sweep file is one mapping 'sweep:' (keys name, base, set, stages, grid or variants, x, results)",
               path);
  for (const auto& item : root)
    REHYAT_CHECK(item.first.as<std::string>() == "sweep", "{}:{}: unknown top-level key '{}' (only 'sweep:')", path,
                 item.first.Mark().line + 1, item.first.as<std::string>());
  const YAML::Node s = root["sweep"];
  static const std::vector<std::string> known = {"name",     "base", "set",     "stages", "grid",
                                                 "variants", "x",    "results", "shared"};
  for (const auto& item : s) {
    const std::string key = item.first.as<std::string>();
    REHYAT_CHECK(std::find(known.begin(), known.end(), key) != known.end(), "{}: unknown key (keys: {})",
                 where(path, item.first, key), fmt::join(known, ", "));
  }
  auto scalar = [&](const char* key) {
    const YAML::Node n = s[key];
    REHYAT_CHECK(n.IsScalar(), "{}: must be a single value", where(path, n, key));
    return n.Scalar();
  };
  const fs::path folder = fs::path(path).parent_path();
  auto relative_to_file = [&](const std::string& p) {
    return fs::path(p).is_absolute() ? p : (folder / p).lexically_normal().string();
  };

  SweepSpec spec;
  spec.file = path;
  spec.name = s["name"] ? scalar("name") : fs::path(path).stem().string();
  REHYAT_CHECK(plain_folder_name(spec.name), "{}: '{}' must be a plain folder name",
               s["name"] ? where(path, s["name"], "name") : path, spec.name);

  REHYAT_CHECK(s["base"], "{}: sweep.base is missing: the run config every variant starts from", path);
  spec.base = relative_to_file(scalar("base"));
  REHYAT_CHECK(fs::is_regular_file(spec.base), "{}: base run config '{}' not found (relative to the sweep file)",
               where(path, s["base"], "base"), spec.base);

  if (s["set"]) spec.set = as_overrides(parse_set(s["set"], path, "set", {"run.name"}));

  if (s["stages"]) {
    const YAML::Node n = s["stages"];
    REHYAT_CHECK(n.IsSequence(), "{}: must be a list of stages", where(path, n, "stages"));
    spec.stages = check_variant_stages(n.as<std::vector<std::string>>(), where(path, n, "stages"));
  } else {
    spec.stages = variant_stage_names();
  }

  const std::vector<std::string> owned = {"run.name", "run.out_dir"};
  REHYAT_CHECK(bool(s["grid"]) != bool(s["variants"]), "{}: give either sweep.grid or sweep.variants (exactly one)",
               path);
  if (s["grid"]) {
    const YAML::Node g = s["grid"];
    REHYAT_CHECK(g.IsMap() && g.size() > 0, "{}: must map run-config keys to lists of values", where(path, g, "grid"));
    std::vector<std::pair<std::string, std::vector<std::string>>> grid;
    for (const auto& item : g) {
      const std::string key = item.first.as<std::string>();
      check_key(key, owned, where(path, item.first, "grid"));
      REHYAT_CHECK(item.second.IsSequence() && item.second.size() > 0, "{}: needs a non-empty list of values",
                   where(path, item.second, "grid." + key));
      std::vector<std::string> values;
      for (const YAML::Node& v : item.second) values.push_back(yaml_text(v));
      grid.emplace_back(key, values);
      spec.keys.push_back(key);
    }
    spec.variants = expand_grid(grid, where(path, g, "grid"));
  } else {
    const YAML::Node list = s["variants"];
    REHYAT_CHECK(list.IsSequence() && list.size() > 0, "{}: must be a non-empty list of {{name: ..., set: [...]}}",
                 where(path, list, "variants"));
    std::set<std::string> names;
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node item = list[i];
      const std::string key = fmt::format("variants[{}]", i);
      REHYAT_CHECK(item.IsMap() && item["name"] && item["name"].IsScalar() && item["set"],
                   "{}: needs 'name:' and 'set:'", where(path, item, key));
      for (const auto& field : item) {
        const std::string f = field.first.as<std::string>();
        REHYAT_CHECK(f == "name" || f == "set", "{}: unknown key '{}' (name, set)", where(path, field.first, key), f);
      }
      Variant v;
      v.name = item["name"].Scalar();
      v.origin = where(path, item, key);
      REHYAT_CHECK(plain_folder_name(v.name) && v.name != "shared",
                   "{}.name: '{}' must be a plain folder name without commas, other than 'shared'", v.origin, v.name);
      REHYAT_CHECK(names.insert(v.name).second, "{}.name: a second variant named '{}'", v.origin, v.name);
      v.values = parse_set(item["set"], path, key + ".set", owned);
      v.overrides = as_overrides(v.values);
      for (const auto& [k, value] : v.values)
        if (std::find(spec.keys.begin(), spec.keys.end(), k) == spec.keys.end()) spec.keys.push_back(k);
      spec.variants.push_back(std::move(v));
    }
  }

  if (s["x"]) {
    spec.x_key = scalar("x");
    REHYAT_CHECK(std::find(spec.keys.begin(), spec.keys.end(), spec.x_key) != spec.keys.end(),
                 "{}: '{}' is not one of the keys the sweep varies ({})", where(path, s["x"], "x"), spec.x_key,
                 fmt::join(spec.keys, ", "));
  } else if (s["grid"] || spec.keys.size() == 1) {
    spec.x_key = spec.keys.front();
  }

  spec.results_dir =
      (fs::path(s["results"] ? relative_to_file(scalar("results")) : (folder / "results").string()) / spec.name)
          .lexically_normal()
          .string();
  if (s["shared"]) {
    spec.shared = scalar("shared");
    REHYAT_CHECK(plain_folder_name(spec.shared) && !spec.shared.starts_with("sweep-"),
                 "{}: '{}' must be a plain folder name (a run name under run.out_dir) not starting with 'sweep-' "
                 "(the sweeps' own folders)",
                 where(path, s["shared"], "shared"), spec.shared);
  }
  return spec;
}

Config load_sweep_config(const SweepSpec& spec, const std::vector<std::string>& overrides) {
  return load_config(spec.base, run_schema(), overrides);
}

SweepLayout sweep_layout(const SweepSpec& spec) {
  std::vector<std::string> overrides = spec.set;
  overrides.push_back("run.name=shared");  // the base may leave run.name to the command line
  const Config base = load_sweep_config(spec, overrides);
  SweepLayout layout;
  const fs::path out_dir = fs::absolute(base.get<std::string>("run.out_dir")).lexically_normal();
  layout.root = (out_dir / ("sweep-" + spec.name)).string();
  layout.shared_out_dir = spec.shared.empty() ? layout.root : out_dir.string();
  layout.shared_name = spec.shared.empty() ? "shared" : spec.shared;
  layout.shared_dir = layout.shared_out_dir + "/" + layout.shared_name;
  return layout;
}

std::vector<std::string> shared_overrides(const SweepSpec& spec, const SweepLayout& layout) {
  std::vector<std::string> o = spec.set;
  o.insert(o.end(), {"attention.hybrid_blocks=[]", "attention.hybrid_block_count=0", "sample.mode=parallel",
                     "run.out_dir=" + quoted(layout.shared_out_dir), "run.name=" + layout.shared_name});
  return o;
}

std::vector<std::string> variant_overrides(const SweepSpec& spec, const Variant& variant, const SweepLayout& layout) {
  std::vector<std::string> o = spec.set;
  o.insert(o.end(), variant.overrides.begin(), variant.overrides.end());
  o.insert(o.end(), {"run.out_dir=" + quoted(layout.root), "run.name=" + variant.name});
  return o;
}

FlatConfig flatten_config(const Config& config) { return flatten_config_text(config.to_yaml(), config.source()); }

FlatConfig flatten_config_text(const std::string& yaml, const std::string& name) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    REHYAT_FAIL("{}:{}: YAML syntax error: {}", name, e.mark.line + 1, e.msg);
  }
  FlatConfig out;
  flatten(root, "", out);
  return out;
}

const std::vector<std::string>& teacher_cache_keys() {
  static const std::vector<std::string> keys = {"model.",        "data.",        "teacher.",
                                                "cache.",        "run.seed",     "run.compute",
                                                "sample.solver", "sample.shift", "sample.guidance"};
  return keys;
}

std::vector<KeyChange> teacher_cache_changes(const FlatConfig& before, const FlatConfig& after) {
  std::set<std::string> keys;
  for (const auto& [k, v] : before)
    if (is_teacher_cache_key(k)) keys.insert(k);
  for (const auto& [k, v] : after)
    if (is_teacher_cache_key(k)) keys.insert(k);
  std::vector<KeyChange> changes;
  for (const std::string& k : keys) {
    const auto b = before.find(k), a = after.find(k);
    const std::string bv = b == before.end() ? "" : b->second, av = a == after.end() ? "" : a->second;
    if (bv != av) changes.push_back({k, bv, av});
  }
  return changes;
}

void check_shared_keys(const FlatConfig& shared, const FlatConfig& variant, const Variant& which) {
  const std::vector<KeyChange> changes = teacher_cache_changes(shared, variant);
  if (changes.empty()) return;
  std::vector<std::string> listed;
  for (const KeyChange& c : changes) listed.push_back(fmt::format("{} ({} -> {})", c.key, c.before, c.after));
  REHYAT_FAIL(
      "{}: variant '{}' changes {}, which the shared teacher and activation cache depend on (model, data, "
      "teacher, cache, run.seed, run.compute, sample.solver/shift/guidance): set it for every variant in "
      "sweep.set or in the base config instead",
      which.origin, which.name, fmt::join(listed, ", "));
}

}  // namespace rehyat::sweep
