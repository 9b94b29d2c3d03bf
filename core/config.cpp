// Config loading: parse each file, merge includes and overrides into one tree while
// remembering where every key came from (file and line), validate the whole tree
// against the schema collecting every error, then fill defaults. The origin map exists
// because yaml-cpp marks carry a line but no file name, and merged trees mix files.
#include "core/config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "core/atomic_file.h"
#include "core/check.h"

namespace rehyat {

namespace fs = std::filesystem;

const char* config_type_name(ConfigType type) {
  switch (type) {
    case ConfigType::Int: return "int";
    case ConfigType::Float: return "float";
    case ConfigType::Bool: return "bool";
    case ConfigType::String: return "string";
    case ConfigType::IntList: return "list of ints";
    case ConfigType::FloatList: return "list of floats";
    case ConfigType::StringList: return "list of strings";
  }
  return "?";
}

namespace {

constexpr const char* kIncludeKey = "include";
constexpr const char* kResolvedFileName = "config.resolved.yaml";

std::string join_key(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

std::string parent_key(const std::string& key) {
  size_t dot = key.rfind('.');
  return dot == std::string::npos ? std::string() : key.substr(0, dot);
}

// --- scalar encoding and decoding -----------------------------------------------------

YAML::Node encode_value(int64_t v) { return YAML::Node(std::to_string(v)); }
YAML::Node encode_value(bool v) { return YAML::Node(std::string(v ? "true" : "false")); }
YAML::Node encode_value(const std::string& v) { return YAML::Node(v); }
// Shortest text that reads back to the same double ("0.001", not yaml-cpp's
// "0.0010000000000000000208").
YAML::Node encode_value(double v) {
  if (std::isnan(v)) return YAML::Node(std::string(".nan"));
  if (std::isinf(v)) return YAML::Node(std::string(v > 0 ? ".inf" : "-.inf"));
  char text[64];
  auto [end, ec] = std::to_chars(text, text + sizeof text, v);
  return YAML::Node(std::string(text, end));
}
template <typename T>
YAML::Node encode_value(const std::vector<T>& values) {
  YAML::Node list(YAML::NodeType::Sequence);
  for (const T& v : values) list.push_back(encode_value(v));
  list.SetStyle(YAML::EmitterStyle::Flow);
  return list;
}

template <typename T>
bool decode_value(const YAML::Node& node, T& out) {
  return node.IsScalar() && YAML::convert<T>::decode(node, out);
}
bool decode_value(const YAML::Node& node, int& out) {
  int64_t wide;
  if (!decode_value(node, wide) || wide < std::numeric_limits<int>::min() || wide > std::numeric_limits<int>::max())
    return false;
  out = int(wide);
  return true;
}
template <typename T>
bool decode_value(const YAML::Node& node, std::vector<T>& out) {
  if (!node.IsSequence()) return false;
  out.clear();
  for (const YAML::Node& item : node) {
    T value;
    if (!decode_value(item, value)) return false;
    out.push_back(std::move(value));
  }
  return true;
}

// "an int", "a list of floats": for messages.
std::string with_article(const char* type_name) {
  return fmt::format("{} {}", std::strchr("aeiou", type_name[0]) ? "an" : "a", type_name);
}
template <typename T> const char* type_name_of() { return config_type_name(ConfigTypeOf<T>::value); }
template <> const char* type_name_of<int>() { return "int"; }

bool matches_type(const YAML::Node& node, ConfigType type) {
  switch (type) {
    case ConfigType::Int: { int64_t v; return decode_value(node, v); }
    case ConfigType::Float: { double v; return decode_value(node, v); }
    case ConfigType::Bool: { bool v; return decode_value(node, v); }
    case ConfigType::String: return node.IsScalar();
    case ConfigType::IntList: { std::vector<int64_t> v; return decode_value(node, v); }
    case ConfigType::FloatList: { std::vector<double> v; return decode_value(node, v); }
    case ConfigType::StringList: { std::vector<std::string> v; return decode_value(node, v); }
  }
  return false;
}

// A value as it would appear in flow YAML, for error messages.
std::string show_value(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "an empty value";
  YAML::Emitter out;
  out.SetMapFormat(YAML::Flow);
  out.SetSeqFormat(YAML::Flow);
  out << node;
  return fmt::format("'{}'", out.c_str());
}

// Child of a map without yaml-cpp's insert-on-lookup (only the const operator[] is
// side-effect free). Undefined node when absent.
YAML::Node child_of(const YAML::Node& map, const std::string& key) {
  if (!map.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  return map[key];
}

YAML::Node lookup_key(const YAML::Node& root, const std::string& key) {
  YAML::Node node;
  node.reset(root);  // reset() rebinds; operator= would write into the tree
  for (const std::string& part : split_key(key)) {
    YAML::Node next = child_of(node, part);
    if (!next.IsDefined()) return next;
    node.reset(next);
  }
  return node;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string did_you_mean(const std::string& key, const ConfigSchema& schema) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, key.size() / 3) + 1;
  for (const std::string& candidate : schema.all_keys()) {
    size_t d = edit_distance(key, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best.empty() ? std::string() : fmt::format(" (did you mean '{}'?)", best);
}

// --- trees with origins ---------------------------------------------------------------

struct Origin {
  std::string source;  // a file name, or "override 'k=v'"
  int line = 0;        // 1-based; 0 when not from a file line
  std::string where() const { return line > 0 ? fmt::format("{}:{}", source, line) : source; }
};

// A (partially) merged config: the tree and where each dotted key came from.
struct ConfigLayer {
  YAML::Node tree{YAML::NodeType::Map};
  std::map<std::string, Origin> origins;
};

using Errors = std::vector<std::string>;

void erase_subtree(std::map<std::string, Origin>& origins, const std::string& key) {
  origins.erase(key);
  const std::string prefix = key + ".";
  for (auto it = origins.lower_bound(prefix); it != origins.end() && it->first.rfind(prefix, 0) == 0;)
    it = origins.erase(it);
}

// Records file:line of every map key and reports keys that are not plain scalars and
// keys given twice in one mapping (yaml-cpp keeps both silently).
void record_origins(const YAML::Node& map, const std::string& file, const std::string& prefix,
                    std::map<std::string, Origin>& origins, Errors& errors) {
  std::map<std::string, int> first_line;
  for (auto it = map.begin(); it != map.end(); ++it) {
    int line = it->first.Mark().line + 1;
    if (!it->first.IsScalar()) {
      errors.push_back(fmt::format("{}:{}: keys must be plain names, got {}", file, line, show_value(it->first)));
      continue;
    }
    std::string key = join_key(prefix, it->first.Scalar());
    auto [seen, fresh] = first_line.emplace(it->first.Scalar(), line);
    if (!fresh)
      errors.push_back(fmt::format("{}:{}: duplicate key '{}' (first given at line {})", file, line, key, seen->second));
    origins.emplace(key, Origin{file, line});  // a duplicated key keeps its first line
    if (it->second.IsMap()) record_origins(it->second, file, key, origins, errors);
  }
}

// Merges `top` over `base`: mappings merge key by key, anything else is replaced whole.
void merge_over(ConfigLayer& base, YAML::Node base_map, const ConfigLayer& top, const YAML::Node& top_map,
                const std::string& prefix) {
  for (auto it = top_map.begin(); it != top_map.end(); ++it) {
    if (!it->first.IsScalar()) continue;  // already reported by record_origins
    const std::string& name = it->first.Scalar();
    const std::string key = join_key(prefix, name);
    YAML::Node existing = child_of(base_map, name);
    auto origin = top.origins.find(key);
    if (existing.IsDefined() && existing.IsMap() && it->second.IsMap()) {
      if (origin != top.origins.end()) base.origins.insert(*origin);  // a section keeps its first origin
      merge_over(base, existing, top, it->second, key);
      continue;
    }
    erase_subtree(base.origins, key);
    for (auto o = top.origins.lower_bound(key); o != top.origins.end(); ++o) {
      if (o->first != key && o->first.rfind(key + ".", 0) != 0) break;
      base.origins.insert(*o);
    }
    base_map[name] = YAML::Clone(it->second);
  }
}

void merge_over(ConfigLayer& base, const ConfigLayer& top) { merge_over(base, base.tree, top, top.tree, ""); }

YAML::Node parse_yaml_file(const std::string& path) {
  std::ifstream in(path);
  REHYAT_CHECK(in.good(), "cannot open config file '{}': {}", path, std::strerror(errno));
  try {
    return YAML::Load(in);
  } catch (const YAML::ParserException& e) {
    REHYAT_FAIL("{}:{}:{}: YAML syntax error: {}", path, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
}

std::vector<std::string> include_names(const YAML::Node& include, const Origin& where, Errors& errors) {
  std::vector<std::string> names;
  if (decode_value(include, names)) return names;
  std::string single;
  if (decode_value(include, single)) return {single};
  errors.push_back(fmt::format("{}: 'include' must be a file name or a list of file names, got {}", where.where(),
                               show_value(include)));
  return {};
}

// The file at `path` with its includes merged underneath it.
ConfigLayer load_file_layer(const std::string& path, std::vector<fs::path>& include_chain,
                            std::vector<std::string>& files, Errors& errors) {
  YAML::Node tree = parse_yaml_file(path);
  if (tree.IsNull()) tree = YAML::Node(YAML::NodeType::Map);  // an empty file
  REHYAT_CHECK(tree.IsMap(), "{}: a config must be a mapping of keys at the top level, got {}", path,
               show_value(tree));
  files.push_back(path);
  ConfigLayer own;
  record_origins(tree, path, "", own.origins, errors);

  ConfigLayer merged;
  YAML::Node include = child_of(tree, kIncludeKey);
  if (include.IsDefined()) {
    const Origin where = own.origins[kIncludeKey];
    include_chain.push_back(fs::weakly_canonical(path));
    for (const std::string& name : include_names(include, where, errors)) {
      fs::path included = fs::path(name).is_absolute() ? fs::path(name) : fs::path(path).parent_path() / name;
      included = included.lexically_normal();
      if (!fs::is_regular_file(included)) {
        errors.push_back(fmt::format("{}: included file '{}' not found (looked for '{}')", where.where(), name,
                                     included.string()));
        continue;
      }
      if (std::find(include_chain.begin(), include_chain.end(), fs::weakly_canonical(included)) !=
          include_chain.end()) {
        errors.push_back(fmt::format("{}: include cycle: '{}' is already being loaded", where.where(),
                                     included.string()));
        continue;
      }
      merge_over(merged, load_file_layer(included.string(), include_chain, files, errors));
    }
    include_chain.pop_back();
    tree.remove(kIncludeKey);
    own.origins.erase(kIncludeKey);
  }
  own.tree.reset(tree);
  merge_over(merged, own);
  return merged;
}

ConfigLayer override_layer(const ConfigOverride& override_spec, Errors& errors) {
  const std::string source = fmt::format("override '{}'", override_spec.text);
  ConfigLayer layer;
  YAML::Node value;
  try {
    value = YAML::Load(override_spec.value);
  } catch (const YAML::ParserException& e) {
    errors.push_back(fmt::format("{}: value is not valid YAML: {}", source, e.msg));
    return layer;
  }
  std::vector<std::string> parts = split_key(override_spec.key);
  YAML::Node nested;
  nested.reset(value);
  for (size_t i = parts.size(); i-- > 0;) {
    YAML::Node map(YAML::NodeType::Map);
    map[parts[i]] = nested;
    nested.reset(map);
  }
  layer.tree.reset(nested);
  std::string key;
  for (const std::string& part : parts) {
    key = join_key(key, part);
    layer.origins[key] = Origin{source, 0};
  }
  if (value.IsMap()) {
    std::map<std::string, Origin> inner;
    record_origins(value, source, override_spec.key, inner, errors);
    for (auto& [k, o] : inner) layer.origins[k] = Origin{source, 0};
  }
  return layer;
}

// --- validation -----------------------------------------------------------------------

struct Validator {
  const ConfigSchema& schema;
  const ConfigLayer& layer;
  const std::string& source;
  Errors& errors;

  std::string where(const std::string& key) const {
    auto it = layer.origins.find(key);
    return it != layer.origins.end() ? it->second.where() : source;
  }

  void check_field(const ConfigField& field, const YAML::Node& value) {
    if (!matches_type(value, field.type)) {
      errors.push_back(fmt::format("{}: key '{}' must be {}, got {}", where(field.key), field.key,
                                   with_article(config_type_name(field.type)), show_value(value)));
      return;
    }
    if (!field.choices.empty() &&
        std::find(field.choices.begin(), field.choices.end(), value.Scalar()) == field.choices.end())
      errors.push_back(fmt::format("{}: key '{}' must be one of {}, got '{}'", where(field.key), field.key,
                                   fmt::join(field.choices, ", "), value.Scalar()));
  }

  void check_map(const YAML::Node& map, const std::string& prefix, bool in_open_section) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (!it->first.IsScalar()) continue;  // already reported by record_origins
      const std::string key = join_key(prefix, it->first.Scalar());
      if (const ConfigField* field = schema.find_field(key)) {
        check_field(*field, it->second);
      } else if (const ConfigSection* section = schema.find_section(key)) {
        if (it->second.IsMap())
          check_map(it->second, key, in_open_section || section->keys == SectionKeys::Open);
        else if (!it->second.IsNull())  // "model:" with nothing under it is an empty section
          errors.push_back(fmt::format("{}: key '{}' is a section and must be a mapping of keys, got {}",
                                       where(key), key, show_value(it->second)));
      } else if (!in_open_section) {
        errors.push_back(fmt::format("{}: unknown key '{}'{}", where(key), key, did_you_mean(key, schema)));
      }
    }
  }

  void check_required() {
    for (const ConfigField& field : schema.fields()) {
      if (!field.required || lookup_key(layer.tree, field.key).IsDefined()) continue;
      std::string section = parent_key(field.key);
      std::string detail = fmt::format("{}: {}", config_type_name(field.type), field.doc);
      if (!section.empty() && lookup_key(layer.tree, section).IsDefined())
        errors.push_back(fmt::format("{}: section '{}' lacks required key '{}' ({})", where(section), section,
                                     field.key, detail));
      else
        errors.push_back(fmt::format("{}: missing required key '{}' ({})", source, field.key, detail));
    }
  }
};

void fill_defaults(ConfigLayer& layer, const ConfigSchema& schema) {
  for (const ConfigField& field : schema.fields()) {
    if (field.required || lookup_key(layer.tree, field.key).IsDefined()) continue;
    std::vector<std::string> parts = split_key(field.key);
    YAML::Node map;
    map.reset(layer.tree);
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      YAML::Node child = map[parts[i]];  // inserts when absent
      if (!child.IsMap()) child = YAML::Node(YAML::NodeType::Map);  // absent or an empty "section:"
      map.reset(child);
    }
    map[parts.back()] = YAML::Clone(field.default_value);
    layer.origins[field.key] = Origin{"default", 0};
  }
}

}  // namespace

// --- ConfigSchema ----------------------------------------------------------------------

ConfigSchema::ConfigSchema() { sections_[""] = ConfigSection{"", SectionKeys::Closed, "top level"}; }

ConfigSchema& ConfigSchema::section(const std::string& key, const std::string& doc, SectionKeys keys) {
  REHYAT_CHECK(!key.empty() && find_field(key) == nullptr, "config schema: '{}' cannot be a section", key);
  for (std::string parent = parent_key(key); !parent.empty(); parent = parent_key(parent))
    REHYAT_CHECK(find_field(parent) == nullptr, "config schema: section '{}' would sit under field '{}'", key, parent);
  for (std::string parent = parent_key(key); !parent.empty(); parent = parent_key(parent))
    sections_.try_emplace(parent, ConfigSection{parent, SectionKeys::Closed, ""});
  sections_[key] = ConfigSection{key, keys, doc};
  return *this;
}

ConfigSchema& ConfigSchema::add_field(ConfigField field) {
  const std::string& key = field.key;
  std::vector<std::string> parts = split_key(key);
  bool well_formed = std::none_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); });
  REHYAT_CHECK(well_formed, "config schema: malformed key '{}'", key);
  REHYAT_CHECK(key != kIncludeKey, "config schema: '{}' is reserved for includes", key);
  REHYAT_CHECK(find_field(key) == nullptr && find_section(key) == nullptr, "config schema: '{}' declared twice", key);
  for (std::string parent = parent_key(key); !parent.empty(); parent = parent_key(parent)) {
    REHYAT_CHECK(find_field(parent) == nullptr, "config schema: field '{}' would sit under field '{}'", key, parent);
    sections_.try_emplace(parent, ConfigSection{parent, SectionKeys::Closed, ""});
  }
  field_index_[key] = fields_.size();
  fields_.push_back(std::move(field));
  return *this;
}

template <typename T>
ConfigSchema& ConfigSchema::required(const std::string& key, const std::string& doc) {
  return add_field(ConfigField{key, ConfigTypeOf<T>::value, true, YAML::Node(), {}, doc});
}

template <typename T>
ConfigSchema& ConfigSchema::optional(const std::string& key, const T& default_value, const std::string& doc) {
  return add_field(ConfigField{key, ConfigTypeOf<T>::value, false, encode_value(default_value), {}, doc});
}

#define REHYAT_CONFIG_SCHEMA_TYPE(T)                                                          \
  template ConfigSchema& ConfigSchema::required<T>(const std::string&, const std::string&); \
  template ConfigSchema& ConfigSchema::optional<T>(const std::string&, const T&, const std::string&);
REHYAT_CONFIG_SCHEMA_TYPE(int64_t)
REHYAT_CONFIG_SCHEMA_TYPE(double)
REHYAT_CONFIG_SCHEMA_TYPE(bool)
REHYAT_CONFIG_SCHEMA_TYPE(std::string)
REHYAT_CONFIG_SCHEMA_TYPE(std::vector<int64_t>)
REHYAT_CONFIG_SCHEMA_TYPE(std::vector<double>)
REHYAT_CONFIG_SCHEMA_TYPE(std::vector<std::string>)
#undef REHYAT_CONFIG_SCHEMA_TYPE

ConfigSchema& ConfigSchema::choice(const std::string& key, const std::vector<std::string>& choices,
                                   const std::string& default_value, const std::string& doc) {
  REHYAT_CHECK(std::find(choices.begin(), choices.end(), default_value) != choices.end(),
               "config schema: default '{}' of '{}' is not one of its choices", default_value, key);
  return add_field(ConfigField{key, ConfigType::String, false, encode_value(default_value), choices, doc});
}

ConfigSchema& ConfigSchema::required_choice(const std::string& key, const std::vector<std::string>& choices,
                                            const std::string& doc) {
  return add_field(ConfigField{key, ConfigType::String, true, YAML::Node(), choices, doc});
}

const ConfigField* ConfigSchema::find_field(const std::string& key) const {
  auto it = field_index_.find(key);
  return it == field_index_.end() ? nullptr : &fields_[it->second];
}

const ConfigSection* ConfigSchema::find_section(const std::string& key) const {
  auto it = sections_.find(key);
  return it == sections_.end() ? nullptr : &it->second;
}

std::vector<std::string> ConfigSchema::all_keys() const {
  std::vector<std::string> keys;
  for (const ConfigField& f : fields_) keys.push_back(f.key);
  for (const auto& [key, section] : sections_)
    if (!key.empty()) keys.push_back(key);
  return keys;
}

// --- Config ---------------------------------------------------------------------------

YAML::Node Config::lookup(const std::string& key) const { return lookup_key(root_, key); }

bool Config::has(const std::string& key) const { return lookup(key).IsDefined(); }

std::string Config::origin(const std::string& key) const {
  auto it = origins_.find(key);
  return it == origins_.end() ? source_ : it->second;
}

template <typename T>
T Config::get(const std::string& key) const {
  YAML::Node node = lookup(key);
  REHYAT_CHECK(node.IsDefined(), "{}: config has no key '{}'", source_, key);
  T value;
  REHYAT_CHECK(decode_value(node, value), "{}: key '{}' must be {}, got {}", origin(key), key,
               with_article(type_name_of<T>()), show_value(node));
  return value;
}

template int64_t Config::get<int64_t>(const std::string&) const;
template int Config::get<int>(const std::string&) const;
template double Config::get<double>(const std::string&) const;
template bool Config::get<bool>(const std::string&) const;
template std::string Config::get<std::string>(const std::string&) const;
template std::vector<int64_t> Config::get<std::vector<int64_t>>(const std::string&) const;
template std::vector<double> Config::get<std::vector<double>>(const std::string&) const;
template std::vector<std::string> Config::get<std::vector<std::string>>(const std::string&) const;

std::vector<std::string> Config::keys(const std::string& section) const {
  YAML::Node node = section.empty() ? root_ : lookup(section);
  REHYAT_CHECK(node.IsDefined() && node.IsMap(), "{}: '{}' is not a section", source_, section);
  std::vector<std::string> keys;
  for (auto it = node.begin(); it != node.end(); ++it) keys.push_back(it->first.Scalar());
  return keys;
}

std::string Config::to_yaml() const {
  YAML::Emitter out;
  out << root_;
  return std::string(out.c_str()) + "\n";
}

std::string Config::save_resolved(const std::string& dir) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  REHYAT_CHECK(!ec, "cannot create directory '{}' for the resolved config: {}", dir, ec.message());
  const std::string path = (fs::path(dir) / kResolvedFileName).string();
  std::string text = fmt::format("# Resolved rehyat config (includes merged, overrides and defaults applied).\n"
                                 "# source: {}\n",
                                 source_);
  if (!includes_.empty()) text += fmt::format("# includes: {}\n", fmt::join(includes_, ", "));
  if (!overrides_.empty()) text += fmt::format("# overrides: {}\n", fmt::join(overrides_, " "));
  AtomicFileWriter writer(path);
  writer.write(text + to_yaml());
  writer.commit();
  return path;
}

// --- loading --------------------------------------------------------------------------

std::vector<ConfigOverride> parse_config_overrides(const std::vector<std::string>& args) {
  std::vector<ConfigOverride> overrides;
  for (const std::string& arg : args) {
    size_t eq = arg.find('=');
    REHYAT_CHECK(eq != std::string::npos, "config override '{}' is not of the form key=value (e.g. train.lr=1e-4)",
                 arg);
    std::string key = arg.substr(0, eq);
    std::vector<std::string> parts = split_key(key);
    bool well_formed = std::none_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); });
    REHYAT_CHECK(well_formed, "config override '{}': malformed key '{}' (expected section.key=value)", arg, key);
    overrides.push_back(ConfigOverride{key, arg.substr(eq + 1), arg});
  }
  return overrides;
}

Config load_config(const std::string& path, const ConfigSchema& schema, const std::vector<std::string>& overrides) {
  Errors errors;
  Config config;
  config.source_ = path;
  config.overrides_ = overrides;

  std::vector<fs::path> include_chain;
  std::vector<std::string> files;  // `path` first, then every included file
  ConfigLayer layer = load_file_layer(path, include_chain, files, errors);
  config.includes_.assign(files.begin() + 1, files.end());
  for (const ConfigOverride& override_spec : parse_config_overrides(overrides))
    merge_over(layer, override_layer(override_spec, errors));

  Validator validator{schema, layer, path, errors};
  validator.check_map(layer.tree, "", false);
  validator.check_required();
  if (errors.size() == 1) throw Error(errors.front());
  if (!errors.empty())
    throw Error(fmt::format("{} errors in config '{}':\n  {}", errors.size(), path, fmt::join(errors, "\n  ")));

  fill_defaults(layer, schema);
  config.root_ = layer.tree;
  for (const auto& [key, origin] : layer.origins) config.origins_[key] = origin.where();
  return config;
}

}  // namespace rehyat
