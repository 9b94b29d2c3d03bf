// The autograd engine: recording, tensor-level accessors and the backward walk.
#include "autograd/graph.h"

#include <algorithm>
#include <atomic>
#include <unordered_map>
#include <unordered_set>

#include "autograd/ops.h"
#include "core/nvtx.h"

namespace rehyat {

namespace autograd {

namespace {
thread_local bool t_grad_enabled = true;
std::atomic<uint64_t> g_sequence{0};

bool tensor_requires_grad(const Tensor& t) {
  return t.defined() && t.autograd_meta() && t.autograd_meta()->requires_grad;
}
}  // namespace

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }

bool should_record(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && tensor_requires_grad(*t)) return true;
  return false;
}

bool should_record(const std::vector<Tensor>& inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (tensor_requires_grad(t)) return true;
  return false;
}

void record(const char* name, Tensor& out, const std::vector<Tensor>& inputs, BackwardFn backward) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->backward = std::move(backward);
  node->sequence = g_sequence.fetch_add(1);
  for (const Tensor& t : inputs) {
    node->inputs.push_back(tensor_requires_grad(t) ? t.autograd_meta() : nullptr);
    node->input_shapes.push_back(t.defined() ? t.shape() : Shape{});
    node->input_dtypes.push_back(t.defined() ? t.dtype() : DType::F32);
  }
  auto meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = true;
  meta->grad_fn = std::move(node);
  out.mutable_autograd_meta() = std::move(meta);
}

namespace {

// Sums g into slot. A leaf's .grad owns its buffer (g may alias a saved tensor or
// another gradient, and optimizers update .grad in place); inner gradients are only read.
void accumulate(Tensor& slot, const Tensor& g, bool own) {
  if (slot.defined())
    slot = add(slot, g);
  else
    slot = own ? g.detach().clone() : g;
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_output, bool retain_graph) {
  REHYAT_CHECK(tensor_requires_grad(root), "backward() on {} which does not require grad", root.str());
  Tensor seed = grad_output;
  if (!seed.defined()) {
    REHYAT_CHECK(root.numel() == 1, "backward() on non-scalar {} needs a gradient argument", root.str());
    seed = Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
  }
  REHYAT_CHECK(seed.shape() == root.shape(), "backward(): gradient {} does not match {}", seed.str(), root.str());

  REHYAT_NVTX_RANGE("backward");
  NoGradGuard no_grad;
  const auto& root_meta = root.autograd_meta();
  if (!root_meta->grad_fn) {  // a leaf
    accumulate(root_meta->grad, seed, true);
    if (root_meta->post_accumulate_hook) root_meta->post_accumulate_hook();
    return;
  }

  // Collect the nodes reachable from the root.
  std::vector<Node*> nodes;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack{root_meta->grad_fn.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    nodes.push_back(n);
    for (auto& in : n->inputs)
      if (in && in->grad_fn) stack.push_back(in->grad_fn.get());
  }
  // A node is created after all of its inputs, so decreasing sequence is a valid
  // reverse topological order.
  std::sort(nodes.begin(), nodes.end(), [](Node* a, Node* b) { return a->sequence > b->sequence; });

  // Hooked leaves: how many edges of the reachable nodes still feed them. A hook runs when
  // its count reaches zero, or after the walk for a leaf some of whose edges got no
  // gradient (a branch nothing flowed into) but that did get one.
  std::unordered_map<AutogradMeta*, int64_t> pending;
  for (Node* n : nodes)
    for (auto& in : n->inputs)
      if (in && !in->grad_fn && in->post_accumulate_hook) ++pending[in.get()];

  std::unordered_map<Node*, Tensor> grads;
  grads[root_meta->grad_fn.get()] = seed;
  for (Node* n : nodes) {
    auto it = grads.find(n);
    if (it == grads.end()) continue;  // no gradient flows here
    Tensor g = std::move(it->second);
    grads.erase(it);
    REHYAT_CHECK(!n->released, "backward through op '{}' a second time: its saved tensors were freed (pass "
                 "retain_graph=true to the first backward)", n->name);
    REHYAT_CHECK(static_cast<bool>(n->backward), "op '{}' has no backward", n->name);
    std::vector<Tensor> input_grads = n->backward(g, *n);
    REHYAT_CHECK(input_grads.size() == n->inputs.size(), "op '{}' backward returned {} gradients for {} inputs",
                 n->name, input_grads.size(), n->inputs.size());
    if (!retain_graph) {
      n->backward = nullptr;
      n->released = true;
    }
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      auto& in = n->inputs[i];
      if (!in) continue;
      Tensor& gi = input_grads[i];
      REHYAT_CHECK(gi.defined(), "op '{}' backward gave no gradient for input {}", n->name, i);
      REHYAT_CHECK(gi.shape() == n->input_shapes[i], "op '{}' backward gave gradient {} for input {} of shape {}",
                   n->name, gi.str(), i, shape_str(n->input_shapes[i]));
      REHYAT_CHECK(gi.dtype() == n->input_dtypes[i], "op '{}' backward gave a {} gradient for a {} input", n->name,
                   dtype_name(gi.dtype()), dtype_name(n->input_dtypes[i]));
      if (in->grad_fn) {
        accumulate(grads[in->grad_fn.get()], gi, false);
      } else {
        accumulate(in->grad, gi, true);
        if (in->post_accumulate_hook) {
          auto p = pending.find(in.get());
          if (--p->second == 0) {
            pending.erase(p);
            in->post_accumulate_hook();
          }
        }
      }
    }
    // Edges of nodes no gradient reached never count down: settled when the walk ends.
  }
  for (auto& [meta, count] : pending)
    if (meta->grad.defined()) meta->post_accumulate_hook();
}

}  // namespace autograd

// --- Tensor's autograd accessors ----------------------------------------------------------

bool Tensor::requires_grad() const { return autograd_ && autograd_->requires_grad; }

Tensor& Tensor::set_requires_grad(bool enabled) {
  REHYAT_CHECK(!enabled || is_floating(dtype_), "set_requires_grad on {}: only floating tensors can", str());
  REHYAT_CHECK(!autograd_ || !autograd_->grad_fn, "set_requires_grad on {}: only leaves can change it", str());
  if (!autograd_) autograd_ = std::make_shared<AutogradMeta>();
  autograd_->requires_grad = enabled;
  return *this;
}

Tensor Tensor::grad() const { return autograd_ ? autograd_->grad : Tensor(); }

void Tensor::zero_grad() {
  if (autograd_) autograd_->grad = Tensor();
}

void Tensor::backward() const { autograd::run_backward(*this, Tensor(), false); }

void Tensor::backward(const Tensor& grad_output, bool retain_graph) const {
  autograd::run_backward(*this, grad_output, retain_graph);
}

}  // namespace rehyat
