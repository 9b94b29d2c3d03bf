// The ONNX step-function export (export/onnx_export.h): the written ModelProto's inputs,
// outputs and state shapes, its initializers (exactly the checkpoint's keys and values, in
// f32), standard-domain ops only, onnx::checker and shape inference, external weights, and
// the errors (non-ReHyAt blocks named, bad options). Running the model is
// tests/tools/test_onnx_export.py's job (onnxruntime).
#include <gtest/gtest.h>

#ifndef REHYAT_ONNX

TEST(OnnxExport, SkippedWithoutOnnx) {
  GTEST_SKIP() << "rehyat was built without ONNX export (REHYAT_ONNX off: the ONNX / protobuf C++ libraries "
                  "libonnx-dev, libprotobuf-dev were not found; tools/install_deps.sh installs them)";
}

#else

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include "export/onnx_export.h"
#include "export/onnx_test_model.h"
#include "temp_dir.h"

namespace rehyat {
namespace {

using exporting::OnnxExportOptions;
using exporting::OnnxWeightStorage;
using testing::TempDir;

onnx::ModelProto read_model(const std::string& path) {
  onnx::ModelProto model;
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(model.ParseFromIstream(&in)) << path;
  return model;
}

// dims of a graph input/output as text ("batch", "2").
std::vector<std::string> dims_of(const onnx::ValueInfoProto& v) {
  std::vector<std::string> dims;
  for (const auto& d : v.type().tensor_type().shape().dim())
    dims.push_back(d.has_dim_param() ? d.dim_param() : std::to_string(d.dim_value()));
  return dims;
}

std::map<std::string, std::vector<std::string>> value_dims(
    const google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>& values) {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& v : values) out[v.name()] = dims_of(v);
  return out;
}

using Dims = std::vector<std::string>;

OnnxExportOptions options_for(const std::string& path) {
  OnnxExportOptions o;
  o.path = path;
  o.batch = 2;
  o.height = 4;
  o.width = 6;  // 2 x 3 tokens per frame
  o.text_len = 5;
  return o;
}

TEST(OnnxExport, InputsOutputsAndStateShapes) {
  TempDir dir;
  const layers::WanModel model =
      testing::tiny_onnx_model(testing::tiny_onnx_config(), testing::causal_rehyat_attention(2, 1, 3));
  const OnnxExportOptions options = options_for(dir.file("step.onnx"));
  const exporting::OnnxExportSummary summary = exporting::export_onnx(model, options);
  EXPECT_EQ(summary.chunk_frames, 2);
  EXPECT_EQ(summary.chunk_latent_frames, 2);
  EXPECT_EQ(summary.overlap_frames, (std::vector<int64_t>{1, 1}));
  EXPECT_TRUE(summary.data_path.empty());

  const onnx::ModelProto proto = read_model(options.path);
  EXPECT_EQ(proto.ir_version(), onnx::IR_VERSION);
  ASSERT_EQ(proto.opset_import_size(), 1);
  EXPECT_EQ(proto.opset_import(0).domain(), "");
  EXPECT_EQ(proto.opset_import(0).version(), 17);

  // Head dim 24, Dp = 2·24 = 48, To·h·w = 1·2·3 = 6 kept tokens.
  const std::map<std::string, Dims> inputs = value_dims(proto.graph().input());
  const std::map<std::string, Dims> expected_inputs = {
      {"latents", {"2", "4", "frames", "4", "6"}}, {"timestep", {"2"}}, {"context", {"2", "5", "16"}},
      {"frame_offset", {}},
      {"blocks.0.S", {"2", "2", "48", "24"}},      {"blocks.0.z", {"2", "2", "48"}},
      {"blocks.0.kept_k", {"2", "6", "2", "24"}},  {"blocks.0.kept_v", {"2", "6", "2", "24"}},
      {"blocks.1.S", {"2", "2", "48", "24"}},      {"blocks.1.z", {"2", "2", "48"}},
      {"blocks.1.kept_k", {"2", "6", "2", "24"}},  {"blocks.1.kept_v", {"2", "6", "2", "24"}}};
  EXPECT_EQ(inputs, expected_inputs);
  std::map<std::string, Dims> expected_outputs = {{"velocity", {"2", "4", "frames", "4", "6"}}};
  for (const auto& [name, dims] : expected_inputs)
    if (name.rfind("blocks.", 0) == 0) expected_outputs["new_" + name] = dims;
  EXPECT_EQ(value_dims(proto.graph().output()), expected_outputs);
  for (const auto& v : proto.graph().input())
    EXPECT_EQ(v.type().tensor_type().elem_type(),
              v.name() == "frame_offset" ? onnx::TensorProto_DataType_INT64 : onnx::TensorProto_DataType_FLOAT)
        << v.name();
  EXPECT_EQ(exporting::onnx_state_input(1, "kept_v"), "blocks.1.kept_v");
  EXPECT_EQ(exporting::onnx_state_output(1, "S"), "new_blocks.1.S");

  // The summary lists the same inputs and outputs.
  std::map<std::string, Dims> summary_inputs;
  for (const auto& spec : summary.inputs) summary_inputs[spec.name] = spec.dims;
  EXPECT_EQ(summary_inputs, expected_inputs);
  EXPECT_EQ(summary.outputs.size(), expected_outputs.size());
  EXPECT_EQ(summary.nodes, proto.graph().node_size());
}

TEST(OnnxExport, InitializersAreTheCheckpointAndOpsAreStandard) {
  TempDir dir;
  const layers::WanModel model =
      testing::tiny_onnx_model(testing::tiny_onnx_config(), testing::causal_rehyat_attention(2, 1));
  OnnxExportOptions options = options_for(dir.file("step.onnx"));
  options.opset = 13;
  exporting::export_onnx(model, options);
  const onnx::ModelProto proto = read_model(options.path);
  EXPECT_EQ(proto.opset_import(0).version(), 13);

  std::map<std::string, const onnx::TensorProto*> initializers;
  for (const auto& t : proto.graph().initializer()) initializers[t.name()] = &t;
  const layers::NamedTensors params = model.named_parameters();
  for (const auto& [name, tensor] : params) {
    ASSERT_TRUE(initializers.count(name)) << name << " is not an initializer";
    const onnx::TensorProto& t = *initializers.at(name);
    EXPECT_EQ(t.data_type(), onnx::TensorProto_DataType_FLOAT) << name;
    EXPECT_EQ(Shape(t.dims().begin(), t.dims().end()), tensor.shape()) << name;
    const std::vector<double> want = tensor.to_vector();
    ASSERT_EQ(t.raw_data().size(), want.size() * sizeof(float)) << name;
    std::vector<float> got(want.size());
    std::memcpy(got.data(), t.raw_data().data(), t.raw_data().size());
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], float(want[i])) << name << "[" << i << "]";
  }
  EXPECT_TRUE(initializers.count("blocks.1.self_attn.phi_k.2.weight"));

  const std::set<std::string> allowed = {
      "Add", "Sub", "Mul", "Div", "MatMul", "Reshape", "Transpose", "Unsqueeze", "Cast", "ReduceMean", "ReduceMax",
      "ReduceSum", "Slice", "Split", "Concat", "Sqrt", "Tanh", "Sigmoid", "Softplus", "Relu", "Exp", "Softmax",
      "Cos", "Sin", "Where", "Shape", "Gather", "Range", "Equal", "GreaterOrEqual", "Expand", "ConstantOfShape", "Pad"};
  std::set<std::string> used;
  for (const auto& node : proto.graph().node()) {
    EXPECT_EQ(node.domain(), "") << node.name();
    EXPECT_TRUE(allowed.count(node.op_type())) << node.op_type() << " in " << node.name();
    used.insert(node.op_type());
  }
  for (const char* op : {"Softplus", "ReduceMax", "Exp", "Softmax", "Cos", "Where", "Pad"})
    EXPECT_TRUE(used.count(op)) << op;
  EXPECT_NO_THROW(onnx::checker::check_model(proto));
}

// With static frames the output shapes follow from shape inference alone.
TEST(OnnxExport, ShapeInferenceReachesTheOutputs) {
  TempDir dir;
  const layers::WanModel model =
      testing::tiny_onnx_model(testing::tiny_onnx_config(), testing::causal_rehyat_attention(2, 2));
  OnnxExportOptions options = options_for(dir.file("step.onnx"));
  options.frames = 2;
  exporting::export_onnx(model, options);
  onnx::ModelProto proto = read_model(options.path);
  proto.mutable_graph()->clear_output();  // inference must find these shapes by itself
  onnx::ShapeInferenceOptions inference{/*check_type=*/true, /*error_mode=*/1, /*enable_data_propagation=*/true};
  ASSERT_NO_THROW(onnx::shape_inference::InferShapes(proto, onnx::OpSchemaRegistry::Instance(), inference));
  const std::map<std::string, Dims> inferred = value_dims(proto.graph().value_info());
  ASSERT_TRUE(inferred.count("new_blocks.1.kept_k"));
  EXPECT_EQ(inferred.at("new_blocks.1.kept_k"), (Dims{"2", "12", "2", "24"}));
  EXPECT_EQ(inferred.at("new_blocks.0.S"), (Dims{"2", "2", "48", "24"}));
  ASSERT_TRUE(inferred.count("velocity"));
  EXPECT_EQ(inferred.at("velocity"), (Dims{"2", "4", "2", "4", "6"}));
}

TEST(OnnxExport, ExternalWeightsArePageAlignedBesideTheModel) {
  TempDir dir;
  const layers::WanModel model =
      testing::tiny_onnx_model(testing::tiny_onnx_config(), testing::causal_rehyat_attention(2, 1));
  OnnxExportOptions options = options_for(dir.file("step.onnx"));
  options.weights = OnnxWeightStorage::External;
  const exporting::OnnxExportSummary summary = exporting::export_onnx(model, options);
  EXPECT_EQ(summary.data_path, options.path + ".data");
  const std::string data = testing::read_file(summary.data_path);
  const onnx::ModelProto proto = read_model(options.path);
  EXPECT_LT(std::filesystem::file_size(options.path), size_t(summary.weight_bytes) / 4);
  std::set<std::string> parameters;
  for (const auto& [name, tensor] : model.named_parameters()) parameters.insert(name);
  int64_t total = 0, inline_bytes = 0;
  for (const auto& t : proto.graph().initializer()) {
    if (!parameters.count(t.name())) {  // the graph's constants stay inline
      EXPECT_NE(t.data_location(), onnx::TensorProto_DataLocation_EXTERNAL) << t.name();
      inline_bytes += int64_t(t.raw_data().size());
      continue;
    }
    ASSERT_EQ(t.data_location(), onnx::TensorProto_DataLocation_EXTERNAL) << t.name();
    EXPECT_FALSE(t.has_raw_data()) << t.name();
    std::map<std::string, std::string> entries;
    for (const auto& e : t.external_data()) entries[e.key()] = e.value();
    EXPECT_EQ(entries["location"], "step.onnx.data") << t.name();
    const int64_t offset = std::stoll(entries["offset"]), length = std::stoll(entries["length"]);
    EXPECT_EQ(offset % 4096, 0) << t.name();
    ASSERT_LE(size_t(offset + length), data.size()) << t.name();
    total += length;
    if (t.name() == "head.head.weight") {  // the bytes at the offset are the parameter's
      const Tensor want = model.head().head.weight;
      std::vector<float> got(size_t(want.numel()));
      ASSERT_EQ(size_t(length), got.size() * sizeof(float));
      std::memcpy(got.data(), data.data() + offset, size_t(length));
      EXPECT_EQ(got[7], float(want.to_vector()[7]));
    }
  }
  EXPECT_EQ(total + inline_bytes, summary.weight_bytes);
  EXPECT_LT(inline_bytes, total / 10);
}

TEST(OnnxExport, RejectsModelsThatAreNotFullyCausalRehyat) {
  TempDir dir;
  const OnnxExportOptions options = options_for(dir.file("step.onnx"));
  attention::AttentionConfig partial = testing::causal_rehyat_attention(2, 1);
  partial.hybrid_blocks = {0};  // block 1 keeps softmax attention
  const layers::WanModel softmax_block = testing::tiny_onnx_model(testing::tiny_onnx_config(), partial);
  testing::expect_contains(testing::error_message([&] { exporting::export_onnx(softmax_block, options); }),
                           {"block 1 has softmax attention"});
  attention::AttentionConfig bidirectional = testing::causal_rehyat_attention(2, 1);
  bidirectional.causal = false;
  const layers::WanModel non_causal = testing::tiny_onnx_model(testing::tiny_onnx_config(), bidirectional);
  testing::expect_contains(testing::error_message([&] { exporting::export_onnx(non_causal, options); }),
                           {"block 0 has rehyat attention with causal = false", "block 1"});
  EXPECT_FALSE(std::filesystem::exists(options.path));
}

TEST(OnnxExport, RejectsBadOptionsNamingTheFile) {
  TempDir dir;
  const layers::WanModel model =
      testing::tiny_onnx_model(testing::tiny_onnx_config(), testing::causal_rehyat_attention(2, 1));
  const std::string path = dir.file("step.onnx");
  auto message = [&](auto change) {
    OnnxExportOptions o = options_for(path);
    change(o);
    return testing::error_message([&] { exporting::export_onnx(model, o); });
  };
  testing::expect_contains(message([](OnnxExportOptions& o) { o.width = 5; }), {path, "width 5", "patch"});
  testing::expect_contains(message([](OnnxExportOptions& o) { o.frames = 3; }), {path, "frames 3", "2 latent frames"});
  testing::expect_contains(message([](OnnxExportOptions& o) { o.text_len = 9; }), {path, "text_len 9", "1..8"});
  testing::expect_contains(message([](OnnxExportOptions& o) { o.opset = 12; }), {path, "opset 12", "13 to"});
  testing::expect_contains(message([](OnnxExportOptions& o) { o.path.clear(); }), {"no output path"});
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace rehyat

#endif  // REHYAT_ONNX
