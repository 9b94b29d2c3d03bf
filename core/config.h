// YAML configs checked against a schema before any work starts (SPEC §7: bad configs
// fail naming the file, key and line).
//
// Each part of the framework declares its own section of the schema in code, next to
// the code that reads it, e.g.
//
//   void declare_model_config(ConfigSchema& schema) {
//     schema.section("model", "DiT architecture")
//         .required<int64_t>("model.dim", "hidden size D")
//         .optional<int64_t>("model.heads", 12, "attention heads")
//         .optional<std::vector<int64_t>>("model.patch", {1, 2, 2}, "patch size (t, h, w)")
//         .choice("model.norm", {"layer", "rms"}, "layer", "block normalization");
//   }
//
// and a tool composes the declarations it needs before calling load_config(). A config
// file may start with `include: base.yaml` (or a list): the included files (relative to
// the including one) are merged underneath, later ones winning, the including file
// winning over all; `key.sub=value` overrides from the command line win over files.
// Every problem found (syntax, unknown key, wrong type, bad choice, missing key) is
// reported together in one rehyat::Error, each naming its file and line.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace rehyat {

enum class ConfigType { Int, Float, Bool, String, IntList, FloatList, StringList };
const char* config_type_name(ConfigType type);  // "int", "list of floats", ...

// The C++ type each config type is read as.
template <typename T> struct ConfigTypeOf;
template <> struct ConfigTypeOf<int64_t> { static constexpr ConfigType value = ConfigType::Int; };
template <> struct ConfigTypeOf<double> { static constexpr ConfigType value = ConfigType::Float; };
template <> struct ConfigTypeOf<bool> { static constexpr ConfigType value = ConfigType::Bool; };
template <> struct ConfigTypeOf<std::string> { static constexpr ConfigType value = ConfigType::String; };
template <> struct ConfigTypeOf<std::vector<int64_t>> { static constexpr ConfigType value = ConfigType::IntList; };
template <> struct ConfigTypeOf<std::vector<double>> { static constexpr ConfigType value = ConfigType::FloatList; };
template <> struct ConfigTypeOf<std::vector<std::string>> { static constexpr ConfigType value = ConfigType::StringList; };

struct ConfigField {
  std::string key;  // dotted path, "model.dim"
  ConfigType type = ConfigType::Int;
  bool required = false;
  YAML::Node default_value;          // used when the key is absent and not required
  std::vector<std::string> choices;  // allowed values of a string; empty: any
  std::string doc;
};

enum class SectionKeys {
  Closed,  // only declared keys (the default: a typo is an error, not a silent no-op)
  Open,    // any keys below it, unchecked (free-form metadata, per-block tables)
};

struct ConfigSection {
  std::string key;  // dotted path; "" is the top level
  SectionKeys keys = SectionKeys::Closed;
  std::string doc;
};

class ConfigSchema {
 public:
  ConfigSchema();

  // Declares a section for its doc or to open it. Sections named on the way to a field
  // ("model" for "model.dim") exist without being declared, closed.
  ConfigSchema& section(const std::string& key, const std::string& doc, SectionKeys keys = SectionKeys::Closed);

  // T is one of int64_t, double, bool, std::string, std::vector<int64_t>,
  // std::vector<double>, std::vector<std::string>.
  template <typename T>
  ConfigSchema& required(const std::string& key, const std::string& doc);
  template <typename T>
  ConfigSchema& optional(const std::string& key, const T& default_value, const std::string& doc);

  // A string restricted to `choices`.
  ConfigSchema& choice(const std::string& key, const std::vector<std::string>& choices,
                       const std::string& default_value, const std::string& doc);
  ConfigSchema& required_choice(const std::string& key, const std::vector<std::string>& choices,
                                const std::string& doc);

  const ConfigField* find_field(const std::string& key) const;      // nullptr when undeclared
  const ConfigSection* find_section(const std::string& key) const;  // nullptr when undeclared
  const std::vector<ConfigField>& fields() const { return fields_; }
  // Every declared field and section key (for "did you mean" suggestions).
  std::vector<std::string> all_keys() const;

 private:
  ConfigSchema& add_field(ConfigField field);

  std::vector<ConfigField> fields_;  // declaration order
  std::map<std::string, size_t> field_index_;
  std::map<std::string, ConfigSection> sections_;
};

// A validated config: every schema field is present (from a file, an override or its
// default). Getters take dotted keys.
class Config {
 public:
  // T: int64_t, int, double, bool, std::string, std::vector<int64_t>,
  // std::vector<double>, std::vector<std::string>. Throws naming the file, key and line
  // when the key is missing or its value has another type (keys of open sections).
  template <typename T>
  T get(const std::string& key) const;
  bool has(const std::string& key) const;
  // Child keys of a section, in file order (for open sections).
  std::vector<std::string> keys(const std::string& section) const;

  const std::string& source() const { return source_; }              // the file given to load_config
  const std::vector<std::string>& includes() const { return includes_; }    // included files, load order
  const std::vector<std::string>& overrides() const { return overrides_; }  // as given
  // "file:line" (or "override 'k=v'", or "default") where a key's value came from.
  std::string origin(const std::string& key) const;

  // The resolved config (includes merged, overrides and defaults applied) as YAML.
  std::string to_yaml() const;
  // Writes dir/config.resolved.yaml atomically (creating dir); returns its path.
  std::string save_resolved(const std::string& dir) const;

 private:
  friend Config load_config(const std::string&, const ConfigSchema&, const std::vector<std::string>&);
  YAML::Node lookup(const std::string& key) const;  // undefined node when absent

  std::string source_;
  YAML::Node root_;
  std::map<std::string, std::string> origins_;  // dotted key -> where its value came from
  std::vector<std::string> includes_;
  std::vector<std::string> overrides_;
};

Config load_config(const std::string& path, const ConfigSchema& schema,
                   const std::vector<std::string>& overrides = {});

struct ConfigOverride {
  std::string key;    // "train.lr"
  std::string value;  // YAML text: "1e-4", "[1, 2]", "rehyat"
  std::string text;   // as given: "train.lr=1e-4"
};
// Splits "key=value" strings (the trailing arguments of a command line); throws naming
// any string that lacks '=' or has an empty key.
std::vector<ConfigOverride> parse_config_overrides(const std::vector<std::string>& args);

}  // namespace rehyat
