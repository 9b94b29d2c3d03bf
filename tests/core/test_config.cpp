// Configs: defaults and typed getters; every kind of bad config fails before any work
// with the file, the dotted key and the line in the message (all errors together);
// command-line overrides; includes; the resolved config written to a run directory
// loads back to the same values.
#include "core/config.h"

#include <gtest/gtest.h>

#include "temp_dir.h"

namespace rehyat {
namespace {

using testing::error_message;
using testing::expect_contains;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

ConfigSchema test_schema() {
  ConfigSchema schema;
  schema.section("model", "DiT architecture")
      .required<int64_t>("model.dim", "hidden size D")
      .optional<int64_t>("model.heads", 12, "attention heads")
      .optional<double>("model.eps", 1e-6, "norm epsilon")
      .optional<bool>("model.qk_norm", true, "RMSNorm on q and k")
      .optional<std::vector<int64_t>>("model.patch", {1, 2, 2}, "patch size (t, h, w)")
      .choice("attention.kind", {"softmax", "rehyat", "linear"}, "rehyat", "attention variant")
      .optional<std::vector<double>>("attention.scales", {0.5, 0.25}, "feature map scales")
      .required<std::string>("train.name", "run name")
      .optional<std::vector<std::string>>("train.stages", {"distill", "finetune"}, "stages to run")
      .optional<double>("train.optimizer.lr", 1e-3, "learning rate")
      .section("notes", "free-form notes", SectionKeys::Open);
  return schema;
}

const char* kValidConfig = R"(# a toy run
model:
  dim: 64
  patch: [1, 4, 4]
attention:
  kind: linear
train:
  name: toy
notes:
  author: me
  tags: [a, b]
)";

TEST(Config, ValidFileGetsDefaultsAndTypedValues) {
  TempDir dir;
  const std::string path = dir.file("run.yaml");
  write_file(path, kValidConfig);
  Config config = load_config(path, test_schema());

  EXPECT_EQ(config.source(), path);
  EXPECT_EQ(config.get<int64_t>("model.dim"), 64);
  EXPECT_EQ(config.get<int>("model.dim"), 64);
  EXPECT_EQ(config.get<double>("model.dim"), 64.0);  // an int is a valid float
  EXPECT_EQ(config.get<int64_t>("model.heads"), 12);
  EXPECT_EQ(config.get<double>("model.eps"), 1e-6);
  EXPECT_TRUE(config.get<bool>("model.qk_norm"));
  EXPECT_EQ(config.get<std::vector<int64_t>>("model.patch"), (std::vector<int64_t>{1, 4, 4}));
  EXPECT_EQ(config.get<std::string>("attention.kind"), "linear");
  EXPECT_EQ(config.get<std::vector<double>>("attention.scales"), (std::vector<double>{0.5, 0.25}));
  EXPECT_EQ(config.get<std::vector<std::string>>("train.stages"), (std::vector<std::string>{"distill", "finetune"}));
  EXPECT_EQ(config.get<double>("train.optimizer.lr"), 1e-3);
  EXPECT_EQ(config.get<std::string>("notes.author"), "me");
  EXPECT_EQ(config.keys("notes"), (std::vector<std::string>{"author", "tags"}));

  EXPECT_TRUE(config.has("train.optimizer.lr"));
  EXPECT_FALSE(config.has("model.nothing"));
  EXPECT_FALSE(config.has("model.dim.deeper"));
  EXPECT_EQ(config.origin("model.dim"), path + ":3");
  EXPECT_EQ(config.origin("model.heads"), "default");
}

TEST(Config, GetterErrorsNameFileKeyAndLine) {
  TempDir dir;
  const std::string path = dir.file("run.yaml");
  write_file(path, kValidConfig);
  Config config = load_config(path, test_schema());
  expect_contains(error_message([&] { config.get<int64_t>("notes.author"); }),
                  {path + ":10", "'notes.author'", "an int", "'me'"});
  expect_contains(error_message([&] { config.get<int64_t>("model.missing"); }), {path, "'model.missing'"});
  expect_contains(error_message([&] { config.keys("model.dim"); }), {path, "'model.dim'"});
}

TEST(Config, UnknownKeyNamesFileKeyAndLine) {
  TempDir dir;
  const std::string path = dir.file("typo.yaml");
  write_file(path, "model:\n  dim: 4\n  haeds: 3\ntrain:\n  name: x\n");
  expect_contains(error_message([&] { load_config(path, test_schema()); }),
                  {path + ":3", "unknown key 'model.haeds'", "did you mean 'model.heads'"});

  write_file(path, "model:\n  dim: 4\ntrain:\n  name: x\ntrian:\n  name: y\n");
  expect_contains(error_message([&] { load_config(path, test_schema()); }), {path + ":5", "unknown key 'trian'"});
}

TEST(Config, WrongTypeNamesFileKeyLineExpectedTypeAndValue) {
  TempDir dir;
  const std::string path = dir.file("types.yaml");
  struct Case {
    std::string model_lines;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"  dim: four\n", {":2", "'model.dim'", "an int", "'four'"}},
      {"  dim: 1.5\n", {":2", "'model.dim'", "an int", "'1.5'"}},
      {"  dim: 4\n  eps: tiny\n", {":3", "'model.eps'", "a float", "'tiny'"}},
      {"  dim: 4\n  qk_norm: maybe\n", {":3", "'model.qk_norm'", "a bool", "'maybe'"}},
      {"  dim: 4\n  patch: [1, 2.5, 2]\n", {":3", "'model.patch'", "a list of ints", "'[1, 2.5, 2]'"}},
      {"  dim: 4\n  patch: 2\n", {":3", "'model.patch'", "a list of ints", "'2'"}},
      {"  dim:\n", {":2", "'model.dim'", "an int", "an empty value"}},
      {"  dim: {a: 1}\n", {":2", "'model.dim'", "an int", "{a: 1}"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.model_lines);
    write_file(path, "model:\n" + c.model_lines + "train:\n  name: x\n");
    std::string message = error_message([&] { load_config(path, test_schema()); });
    expect_contains(message, {path});
    expect_contains(message, c.expected);
  }

  write_file(path, "model:\n  dim: 4\nattention:\n  kind: flash\ntrain:\n  name: x\n");
  expect_contains(error_message([&] { load_config(path, test_schema()); }),
                  {path + ":4", "'attention.kind'", "one of softmax, rehyat, linear", "'flash'"});
  write_file(path, "model: 3\ntrain:\n  name: x\n");
  expect_contains(error_message([&] { load_config(path, test_schema()); }),
                  {path + ":1", "'model' is a section", "'3'"});
}

TEST(Config, MissingRequiredKeyNamesFileKeyAndSectionLine) {
  TempDir dir;
  const std::string path = dir.file("missing.yaml");
  write_file(path, "train:\n  name: x\nmodel:\n  heads: 4\n");
  expect_contains(error_message([&] { load_config(path, test_schema()); }),
                  {path + ":3", "section 'model'", "required key 'model.dim'", "hidden size D"});

  write_file(path, "model:\n  dim: 4\n");  // no train section at all
  expect_contains(error_message([&] { load_config(path, test_schema()); }),
                  {path, "missing required key 'train.name'", "string"});

  write_file(path, "model:\ntrain:\n  name: x\n");  // an empty section
  expect_contains(error_message([&] { load_config(path, test_schema()); }),
                  {path + ":1", "required key 'model.dim'"});
}

TEST(Config, AllErrorsAreReportedTogether) {
  TempDir dir;
  const std::string path = dir.file("many.yaml");
  write_file(path, "model:\n  heads: x\n  extra: 1\n  heads: 3\nattention:\n  kind: nope\n");
  std::string message = error_message([&] { load_config(path, test_schema()); });
  expect_contains(message, {"errors in config '" + path + "'", path + ":2: key 'model.heads'",
                            path + ":3: unknown key 'model.extra'", path + ":4: duplicate key 'model.heads'",
                            "first given at line 2", path + ":6: key 'attention.kind'", "'model.dim'",
                            "'train.name'"});
}

TEST(Config, SyntaxErrorNamesFileAndLine) {
  TempDir dir;
  const std::string path = dir.file("broken.yaml");
  write_file(path, "model:\n  dim: 4\n  patch: [1, 2\ntrain:\n  name: x\n");
  expect_contains(error_message([&] { load_config(path, test_schema()); }), {path + ":", "YAML syntax error"});
  write_file(path, "- just\n- a list\n");
  expect_contains(error_message([&] { load_config(path, test_schema()); }), {path, "mapping of keys"});
  expect_contains(error_message([&] { load_config(dir.file("absent.yaml"), test_schema()); }),
                  {dir.file("absent.yaml"), "cannot open"});
}

TEST(Config, OverridesApplyNestedAndFailNamingTheOverride) {
  TempDir dir;
  const std::string path = dir.file("run.yaml");
  write_file(path, kValidConfig);
  Config config = load_config(path, test_schema(),
                              {"model.heads=16", "train.optimizer.lr=1e-4", "model.patch=[1, 8, 8]",
                               "attention.kind=softmax", "notes.extra.depth=3", "model.dim=128"});
  EXPECT_EQ(config.get<int64_t>("model.heads"), 16);
  EXPECT_EQ(config.get<double>("train.optimizer.lr"), 1e-4);
  EXPECT_EQ(config.get<std::vector<int64_t>>("model.patch"), (std::vector<int64_t>{1, 8, 8}));
  EXPECT_EQ(config.get<std::string>("attention.kind"), "softmax");
  EXPECT_EQ(config.get<int64_t>("notes.extra.depth"), 3);
  EXPECT_EQ(config.get<int64_t>("model.dim"), 128);
  EXPECT_EQ(config.get<std::string>("notes.author"), "me");  // siblings survive a nested override
  EXPECT_EQ(config.origin("model.heads"), "override 'model.heads=16'");

  expect_contains(error_message([&] { load_config(path, test_schema(), {"model.hedas=3"}); }),
                  {"override 'model.hedas=3'", "unknown key 'model.hedas'", "did you mean 'model.heads'"});
  expect_contains(error_message([&] { load_config(path, test_schema(), {"model.dim=big"}); }),
                  {"override 'model.dim=big'", "'model.dim'", "an int"});
  expect_contains(error_message([&] { load_config(path, test_schema(), {"model.patch=[1, 2"}); }),
                  {"override 'model.patch=[1, 2'", "not valid YAML"});
  expect_contains(error_message([&] { load_config(path, test_schema(), {"model.heads"}); }),
                  {"'model.heads'", "key=value"});
}

TEST(Config, ParseOverrides) {
  auto overrides = parse_config_overrides({"a.b=1", "name=x=y", "list=[1, 2]", "empty="});
  ASSERT_EQ(overrides.size(), 4u);
  EXPECT_EQ(overrides[0].key, "a.b");
  EXPECT_EQ(overrides[0].value, "1");
  EXPECT_EQ(overrides[1].key, "name");
  EXPECT_EQ(overrides[1].value, "x=y");
  EXPECT_EQ(overrides[2].value, "[1, 2]");
  EXPECT_EQ(overrides[3].value, "");
  EXPECT_EQ(overrides[3].text, "empty=");
  expect_contains(error_message([] { parse_config_overrides({"a.b=1", "lonely"}); }),
                  {"'lonely'", "not of the form key=value"});
  expect_contains(error_message([] { parse_config_overrides({"=3"}); }), {"'=3'", "malformed key"});
  expect_contains(error_message([] { parse_config_overrides({"a..b=3"}); }), {"'a..b=3'", "malformed key"});
}

TEST(Config, IncludesMergeUnderneathTheIncludingFile) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() / "models");
  std::filesystem::create_directories(dir.path() / "runs");
  write_file(dir.file("models/toy.yaml"), "model:\n  dim: 32\n  heads: 8\nnotes:\n  from: toy\n");
  write_file(dir.file("models/attn.yaml"), "attention:\n  kind: softmax\nmodel:\n  heads: 2\n");
  const std::string run = dir.file("runs/train.yaml");
  write_file(run,
             "include: [../models/toy.yaml, ../models/attn.yaml]\n"
             "model:\n  eps: 1e-5\n"
             "train:\n  name: inc\n");
  Config config = load_config(run, test_schema());
  EXPECT_EQ(config.get<int64_t>("model.dim"), 32);   // from toy.yaml
  EXPECT_EQ(config.get<int64_t>("model.heads"), 2);  // attn.yaml wins over toy.yaml
  EXPECT_EQ(config.get<double>("model.eps"), 1e-5);  // the including file
  EXPECT_EQ(config.get<std::string>("attention.kind"), "softmax");
  EXPECT_EQ(config.get<std::string>("notes.from"), "toy");
  EXPECT_FALSE(config.has("include"));
  EXPECT_EQ(config.includes().size(), 2u);
  EXPECT_EQ(config.origin("model.dim"), dir.file("models/toy.yaml") + ":2");

  // The including file wins over its includes.
  write_file(run, "include: ../models/toy.yaml\nmodel:\n  dim: 48\ntrain:\n  name: inc\n");
  EXPECT_EQ(load_config(run, test_schema()).get<int64_t>("model.dim"), 48);

  // Errors inside an included file name that file and its line.
  write_file(dir.file("models/bad.yaml"), "model:\n  dim: 32\n  depth: 3\n");
  write_file(run, "include: ../models/bad.yaml\ntrain:\n  name: inc\n");
  expect_contains(error_message([&] { load_config(run, test_schema()); }),
                  {dir.file("models/bad.yaml") + ":3", "unknown key 'model.depth'"});

  write_file(run, "include: ../models/absent.yaml\ntrain:\n  name: inc\n");
  expect_contains(error_message([&] { load_config(run, test_schema()); }), {run + ":1", "absent.yaml", "not found"});

  write_file(run, "include: {a: 1}\n");
  expect_contains(error_message([&] { load_config(run, test_schema()); }), {run + ":1", "'include' must be"});

  write_file(dir.file("runs/loop.yaml"), "include: train.yaml\n");
  write_file(run, "include: loop.yaml\nmodel:\n  dim: 1\ntrain:\n  name: inc\n");
  expect_contains(error_message([&] { load_config(run, test_schema()); }), {"include cycle", "train.yaml"});
}

TEST(Config, SaveResolvedRoundTrips) {
  TempDir dir;
  write_file(dir.file("base.yaml"), "model:\n  dim: 32\n  eps: 0.1\n");
  const std::string path = dir.file("run.yaml");
  write_file(path, "include: base.yaml\ntrain:\n  name: \"quoted: name\"\nnotes:\n  list: [1, 2]\n");
  const ConfigSchema schema = test_schema();
  Config config = load_config(path, schema, {"model.heads=3", "attention.scales=[1e-3, 2.5]"});

  const std::string run_dir = dir.file("runs/a/b");  // does not exist yet
  const std::string written = config.save_resolved(run_dir);
  EXPECT_EQ(written, run_dir + "/config.resolved.yaml");
  const std::string text = read_file(written);
  expect_contains(text, {"# source: " + path, "base.yaml", "model.heads=3", "dim: 32"});
  EXPECT_EQ(dir.entry_count(), 3u);  // base.yaml, run.yaml, runs/ (no temp file)

  Config again = load_config(written, schema);
  for (const ConfigField& field : schema.fields()) {
    SCOPED_TRACE(field.key);
    const std::string& key = field.key;
    switch (field.type) {
      case ConfigType::Int: EXPECT_EQ(again.get<int64_t>(key), config.get<int64_t>(key)); break;
      case ConfigType::Float: EXPECT_EQ(again.get<double>(key), config.get<double>(key)); break;
      case ConfigType::Bool: EXPECT_EQ(again.get<bool>(key), config.get<bool>(key)); break;
      case ConfigType::String: EXPECT_EQ(again.get<std::string>(key), config.get<std::string>(key)); break;
      case ConfigType::IntList:
        EXPECT_EQ(again.get<std::vector<int64_t>>(key), config.get<std::vector<int64_t>>(key));
        break;
      case ConfigType::FloatList:
        EXPECT_EQ(again.get<std::vector<double>>(key), config.get<std::vector<double>>(key));
        break;
      case ConfigType::StringList:
        EXPECT_EQ(again.get<std::vector<std::string>>(key), config.get<std::vector<std::string>>(key));
        break;
    }
  }
  EXPECT_EQ(again.get<double>("model.eps"), 0.1);
  EXPECT_EQ(again.get<double>("train.optimizer.lr"), 1e-3);
  EXPECT_EQ(again.get<std::string>("train.name"), "quoted: name");
  EXPECT_EQ(again.get<std::vector<double>>("attention.scales"), (std::vector<double>{1e-3, 2.5}));
  EXPECT_EQ(again.get<std::vector<int64_t>>("model.patch"), (std::vector<int64_t>{1, 2, 2}));
  EXPECT_EQ(again.get<std::vector<int64_t>>("notes.list"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(again.to_yaml(), config.to_yaml());
}

TEST(Config, SchemaRejectsConflictingDeclarations) {
  ConfigSchema schema;
  schema.required<int64_t>("model.dim", "hidden size");
  EXPECT_THROW(schema.optional<int64_t>("model.dim", 3, "again"), Error);
  EXPECT_THROW(schema.optional<int64_t>("model.dim.inner", 3, "under a field"), Error);
  EXPECT_THROW(schema.section("model.dim", "a field is not a section"), Error);
  EXPECT_THROW(schema.optional<int64_t>("model..x", 3, "empty part"), Error);
  EXPECT_THROW(schema.optional<std::string>("include", "x", "reserved"), Error);
  EXPECT_THROW(schema.choice("attention.kind", {"a", "b"}, "c", "default not a choice"), Error);
}

}  // namespace
}  // namespace rehyat
