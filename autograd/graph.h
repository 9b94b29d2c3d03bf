// Reverse-mode autograd. Every differentiable op computes its output with the kernels,
// then (only when recording and some input requires grad) calls record() with a backward
// closure that captures just what its gradient needs (detached tensors, so the graph
// holds no cycles). backward() walks the graph from a root in reverse topological
// order, sums gradients per node, accumulates (+=) into leaves' .grad, and frees each
// node's saved tensors after use unless retain_graph is set. An op recorded without a
// backward closure fails when the walk reaches it, naming the op.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace rehyat {

struct Node;

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;                    // leaves only
  std::shared_ptr<Node> grad_fn;  // null for leaves
  // Leaves only (PyTorch's register_post_accumulate_grad_hook): called by backward() once
  // the last contribution of that backward has been added to .grad, while the walk goes
  // on -- data-parallel training starts reducing a gradient here (train/data_parallel.h).
  std::function<void()> post_accumulate_hook;
};

// Returns one gradient per input (undefined where node.needs_grad(i) is false).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output, const Node& node)>;

struct Node {
  const char* name = "";
  std::vector<std::shared_ptr<AutogradMeta>> inputs;  // null: that input needs no gradient
  std::vector<Shape> input_shapes;
  std::vector<DType> input_dtypes;
  BackwardFn backward;  // null: the op has no backward
  uint64_t sequence = 0;
  bool released = false;
  bool needs_grad(size_t i) const { return i < inputs.size() && inputs[i] != nullptr; }
};

namespace autograd {

bool grad_enabled();
void set_grad_enabled(bool enabled);

// Disables recording in its scope (also used while running backward closures).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when recording is on and any input requires grad.
bool should_record(std::initializer_list<const Tensor*> inputs);
bool should_record(const std::vector<Tensor>& inputs);

// Attaches history to `out`. `backward` may be null (op without backward).
void record(const char* name, Tensor& out, const std::vector<Tensor>& inputs, BackwardFn backward);

void run_backward(const Tensor& root, const Tensor& grad_output, bool retain_graph);

}  // namespace autograd
}  // namespace rehyat
