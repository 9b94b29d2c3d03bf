// ONNX graph builder: nodes with scoped unique names, initializers, opset-dependent forms.
#include "export/onnx_graph.h"

#include <cstring>

#include <onnx/defs/schema.h>

#include "autograd/graph.h"
#include "core/check.h"

namespace rehyat::exporting {

int64_t newest_known_opset() {
  return onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map().at(onnx::ONNX_DOMAIN).second;
}

namespace {

template <typename T>
onnx::TensorProto tensor_proto(onnx::TensorProto_DataType type, const std::vector<T>& values, const Shape& shape) {
  REHYAT_CHECK(int64_t(values.size()) == shape_numel(shape), "ONNX constant: {} values for shape {}", values.size(),
               shape_str(shape));
  onnx::TensorProto t;
  t.set_data_type(type);
  for (int64_t d : shape) t.add_dims(d);
  t.set_raw_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T)));
  return t;
}

void set_dims(onnx::TypeProto& type, onnx::TensorProto_DataType element,
              const std::vector<OnnxGraphBuilder::Dim>& dims) {
  onnx::TypeProto_Tensor* tensor = type.mutable_tensor_type();
  tensor->set_elem_type(element);
  onnx::TensorShapeProto* shape = tensor->mutable_shape();
  for (const OnnxGraphBuilder::Dim& d : dims) {
    onnx::TensorShapeProto_Dimension* dim = shape->add_dim();
    if (std::holds_alternative<int64_t>(d))
      dim->set_dim_value(std::get<int64_t>(d));
    else
      dim->set_dim_param(std::get<std::string>(d));
  }
}

}  // namespace

OnnxGraphBuilder::OnnxGraphBuilder(onnx::GraphProto& graph, int64_t opset) : graph_(graph), opset_(opset) {}

OnnxGraphBuilder::Scope::Scope(OnnxGraphBuilder& builder, const std::string& name)
    : builder_(builder), previous_length_(builder.scope_.size()) {
  builder_.scope_ += (builder_.scope_.empty() ? "" : "/") + name;
}

OnnxGraphBuilder::Scope::~Scope() { builder_.scope_.resize(previous_length_); }

std::string OnnxGraphBuilder::fresh(const std::string& op) {
  return fmt::format("{}{}{}_{}", scope_, scope_.empty() ? "" : "/", op, counter_++);
}

void OnnxGraphBuilder::fill_attribute(onnx::AttributeProto& out, const OnnxAttribute& attribute) {
  out.set_name(attribute.name);
  if (const auto* i = std::get_if<int64_t>(&attribute.value)) {
    out.set_type(onnx::AttributeProto_AttributeType_INT);
    out.set_i(*i);
  } else if (const auto* f = std::get_if<float>(&attribute.value)) {
    out.set_type(onnx::AttributeProto_AttributeType_FLOAT);
    out.set_f(*f);
  } else if (const auto* list = std::get_if<std::vector<int64_t>>(&attribute.value)) {
    out.set_type(onnx::AttributeProto_AttributeType_INTS);
    for (int64_t v : *list) out.add_ints(v);
  } else {
    out.set_type(onnx::AttributeProto_AttributeType_TENSOR);
    *out.mutable_t() = std::get<onnx::TensorProto>(attribute.value);
  }
}

std::vector<std::string> OnnxGraphBuilder::node(const std::string& op, const std::vector<std::string>& inputs,
                                                int outputs, const std::vector<OnnxAttribute>& attributes) {
  const std::string name = fresh(op);
  onnx::NodeProto* n = graph_.add_node();
  n->set_name(name);
  n->set_op_type(op);
  for (const std::string& in : inputs) n->add_input(in);
  std::vector<std::string> names;
  for (int i = 0; i < outputs; ++i) {
    names.push_back(outputs == 1 ? name : fmt::format("{}:{}", name, i));
    n->add_output(names.back());
  }
  for (const OnnxAttribute& a : attributes) fill_attribute(*n->add_attribute(), a);
  return names;
}

std::string OnnxGraphBuilder::op(const std::string& op, const std::vector<std::string>& inputs,
                                 const std::vector<OnnxAttribute>& attributes) {
  return node(op, inputs, 1, attributes)[0];
}

void OnnxGraphBuilder::op_named(const std::string& output, const std::string& op,
                                const std::vector<std::string>& inputs, const std::vector<OnnxAttribute>& attributes) {
  onnx::NodeProto* n = graph_.add_node();
  n->set_name(fresh(op));
  n->set_op_type(op);
  for (const std::string& in : inputs) n->add_input(in);
  n->add_output(output);
  for (const OnnxAttribute& a : attributes) fill_attribute(*n->add_attribute(), a);
}

std::string OnnxGraphBuilder::add_initializer(onnx::TensorProto tensor) {
  const std::string name = tensor.name();
  *graph_.add_initializer() = std::move(tensor);
  return name;
}

std::string OnnxGraphBuilder::weight(const std::string& key, const Tensor& tensor) {
  REHYAT_CHECK(tensor.defined() && is_floating(tensor.dtype()), "ONNX export: parameter '{}' is {}", key,
               tensor.defined() ? tensor.str() : "undefined");
  autograd::NoGradGuard no_grad;
  const Tensor host = tensor.to(Device::cpu()).to(DType::F32).contiguous();  // [shape] f32
  onnx::TensorProto t;
  t.set_name(key);
  t.set_data_type(onnx::TensorProto_DataType_FLOAT);
  for (int64_t d : host.shape()) t.add_dims(d);
  t.set_raw_data(std::string(reinterpret_cast<const char*>(host.data<float>()), size_t(host.numel()) * sizeof(float)));
  return add_initializer(std::move(t));
}

std::string OnnxGraphBuilder::constant_f32(const std::vector<float>& values, const Shape& shape) {
  onnx::TensorProto t = tensor_proto(onnx::TensorProto_DataType_FLOAT, values, shape);
  t.set_name(fresh("Const"));
  return add_initializer(std::move(t));
}

std::string OnnxGraphBuilder::constant_f64(const std::vector<double>& values, const Shape& shape) {
  onnx::TensorProto t = tensor_proto(onnx::TensorProto_DataType_DOUBLE, values, shape);
  t.set_name(fresh("Const"));
  return add_initializer(std::move(t));
}

std::string OnnxGraphBuilder::constant_i64(const std::vector<int64_t>& values, const Shape& shape) {
  onnx::TensorProto t = tensor_proto(onnx::TensorProto_DataType_INT64, values, shape);
  t.set_name(fresh("Const"));
  return add_initializer(std::move(t));
}

std::string OnnxGraphBuilder::reshape(const std::string& x, const std::vector<int64_t>& shape) {
  return op("Reshape", {x, ints(shape)});
}

std::string OnnxGraphBuilder::transpose(const std::string& x, const std::vector<int64_t>& perm) {
  return op("Transpose", {x}, {{"perm", perm}});
}

std::string OnnxGraphBuilder::unsqueeze(const std::string& x, const std::vector<int64_t>& axes) {
  return op("Unsqueeze", {x, ints(axes)});
}

std::string OnnxGraphBuilder::cast(const std::string& x, onnx::TensorProto_DataType to) {
  return op("Cast", {x}, {{"to", int64_t(to)}});
}

std::string OnnxGraphBuilder::reduce(const std::string& op_type, const std::string& x, const std::vector<int64_t>& axes,
                                     bool keepdims) {
  const bool axes_as_input = op_type == "ReduceSum" || opset_ >= 18;
  if (axes_as_input) return op(op_type, {x, ints(axes)}, {{"keepdims", int64_t(keepdims)}});
  return op(op_type, {x}, {{"axes", axes}, {"keepdims", int64_t(keepdims)}});
}

std::string OnnxGraphBuilder::slice(const std::string& x, int64_t axis, int64_t start, int64_t end) {
  return op("Slice", {x, ints({start}), ints({end}), ints({axis})});
}

std::vector<std::string> OnnxGraphBuilder::split(const std::string& x, int64_t axis,
                                                 const std::vector<int64_t>& sizes) {
  return node("Split", {x, ints(sizes)}, int(sizes.size()), {{"axis", axis}});
}

void OnnxGraphBuilder::input(const std::string& name, onnx::TensorProto_DataType type, const std::vector<Dim>& dims) {
  onnx::ValueInfoProto* v = graph_.add_input();
  v->set_name(name);
  set_dims(*v->mutable_type(), type, dims);
}

void OnnxGraphBuilder::output(const std::string& name, onnx::TensorProto_DataType type, const std::vector<Dim>& dims) {
  onnx::ValueInfoProto* v = graph_.add_output();
  v->set_name(name);
  set_dims(*v->mutable_type(), type, dims);
}

}  // namespace rehyat::exporting
