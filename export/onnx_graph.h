// A small builder for ONNX graphs (onnx::GraphProto through the protobuf C++ API), used by
// export/onnx_export.cpp to write the recurrent step function.
//
// Why a builder: the step graph has thousands of nodes; each call here adds one node with
// a unique, readable output name ("blocks.3/self_attn/MatMul_17") under the current
// scope, and hides the differences between opsets (ReduceMean / ReduceMax take their axes
// as an attribute before opset 18 and as an input from 18 on; ReduceSum from 13 on).
// Constants and weights become initializers; a weight keeps its checkpoint key as its
// name. Supported opsets: 13 up to the newest the linked ONNX library knows.
//
// Internal to export/: it includes the ONNX headers, which the public export/onnx_export.h
// does not.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include <onnx/onnx_pb.h>

#include "core/tensor.h"

namespace rehyat::exporting {

// The newest default-domain opset the linked ONNX library knows (17 for ONNX 1.12).
int64_t newest_known_opset();
inline constexpr int64_t kOldestSupportedOpset = 13;

struct OnnxAttribute {
  std::string name;
  std::variant<int64_t, float, std::vector<int64_t>, onnx::TensorProto> value;
};

class OnnxGraphBuilder {
 public:
  // opset: kOldestSupportedOpset .. newest_known_opset() (the caller checks).
  OnnxGraphBuilder(onnx::GraphProto& graph, int64_t opset);

  int64_t opset() const { return opset_; }

  // Names nodes and values "<scope>/<Op>_<n>" while alive (nested scopes join with '/').
  class Scope {
   public:
    Scope(OnnxGraphBuilder& builder, const std::string& name);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    OnnxGraphBuilder& builder_;
    size_t previous_length_;
  };

  // One node; returns its outputs' names (`outputs` of them).
  std::vector<std::string> node(const std::string& op, const std::vector<std::string>& inputs, int outputs,
                                const std::vector<OnnxAttribute>& attributes = {});
  // One node with one output.
  std::string op(const std::string& op, const std::vector<std::string>& inputs,
                 const std::vector<OnnxAttribute>& attributes = {});
  // A node whose output gets a fixed name (graph outputs).
  void op_named(const std::string& output, const std::string& op, const std::vector<std::string>& inputs,
                const std::vector<OnnxAttribute>& attributes = {});

  // Initializers. weight(): a tensor of the model under its checkpoint key, as f32 in its
  // own shape (any device or float dtype; converted). The constants get generated names.
  std::string weight(const std::string& key, const Tensor& tensor);
  std::string constant_f32(const std::vector<float>& values, const Shape& shape);
  std::string constant_f64(const std::vector<double>& values, const Shape& shape);
  std::string constant_i64(const std::vector<int64_t>& values, const Shape& shape);
  std::string scalar_f32(float value) { return constant_f32({value}, {}); }
  std::string ints(const std::vector<int64_t>& values) { return constant_i64(values, {int64_t(values.size())}); }

  // Common nodes.
  std::string add(const std::string& a, const std::string& b) { return op("Add", {a, b}); }
  std::string sub(const std::string& a, const std::string& b) { return op("Sub", {a, b}); }
  std::string mul(const std::string& a, const std::string& b) { return op("Mul", {a, b}); }
  std::string div(const std::string& a, const std::string& b) { return op("Div", {a, b}); }
  std::string matmul(const std::string& a, const std::string& b) { return op("MatMul", {a, b}); }
  std::string reshape(const std::string& x, const std::vector<int64_t>& shape);  // 0 copies, -1 infers
  std::string transpose(const std::string& x, const std::vector<int64_t>& perm);
  std::string unsqueeze(const std::string& x, const std::vector<int64_t>& axes);
  std::string cast(const std::string& x, onnx::TensorProto_DataType to);
  // ReduceMean / ReduceMax / ReduceSum over `axes`, in the form the opset wants.
  std::string reduce(const std::string& op, const std::string& x, const std::vector<int64_t>& axes, bool keepdims);
  // x[start:end] along one axis (negative indices count from the end, as in ONNX Slice).
  std::string slice(const std::string& x, int64_t axis, int64_t start, int64_t end);
  // Equal-or-given parts along an axis (Split with explicit sizes, valid in every opset here).
  std::vector<std::string> split(const std::string& x, int64_t axis, const std::vector<int64_t>& sizes);

  // Declares a graph input / output. Dimensions: a number, or a symbolic name.
  using Dim = std::variant<int64_t, std::string>;
  void input(const std::string& name, onnx::TensorProto_DataType type, const std::vector<Dim>& dims);
  void output(const std::string& name, onnx::TensorProto_DataType type, const std::vector<Dim>& dims);

 private:
  std::string fresh(const std::string& op);
  std::string add_initializer(onnx::TensorProto tensor);
  void fill_attribute(onnx::AttributeProto& out, const OnnxAttribute& attribute);

  onnx::GraphProto& graph_;
  int64_t opset_;
  std::string scope_;
  int64_t counter_ = 0;
};

}  // namespace rehyat::exporting
