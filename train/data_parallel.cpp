// Data-parallel training: gradient buckets reduced during backward, the optional sharded
// optimizer (see data_parallel.h).
#include "train/data_parallel.h"

#include <algorithm>
#include <numeric>

#include "autograd/graph.h"
#include "core/check.h"

namespace rehyat::train {

namespace {

struct Bucket {
  Tensor flat;                   // [elements] f32 on the parameters' device
  std::vector<size_t> params;    // indices into Impl::params
  int64_t ready = 0;             // parameters whose gradient is in `flat` this backward
  bool launched = false;
  dist::CommWork work;
};

struct Placement {
  size_t bucket = 0;
  int64_t offset = 0;  // elements into the bucket
  bool ready = false;
};

}  // namespace

struct DataParallelTrainer::Impl {
  dist::Communicator* comm = nullptr;
  layers::NamedTensors params;
  DataParallelOptions options;
  std::vector<int> owners;  // per parameter
  std::unique_ptr<AdamW> adam;
  std::vector<Bucket> buckets;
  std::vector<Placement> placement;  // per parameter
  size_t next_launch = 0;

  bool distributed() const { return comm && comm->world_size() > 1; }
  int rank() const { return comm ? comm->rank() : 0; }

  void launch_ready_buckets() {
    while (next_launch < buckets.size()) {
      Bucket& b = buckets[next_launch];
      if (b.ready < int64_t(b.params.size())) return;
      b.work = comm->all_reduce_async(b.flat, dist::ReduceOp::Avg);
      b.launched = true;
      ++next_launch;
    }
  }

  // The hook of parameter i: its gradient is final for this backward.
  void gradient_ready(size_t i) {
    Placement& p = placement[i];
    if (p.ready) return;
    Tensor param = params[i].second;
    const std::shared_ptr<AutogradMeta>& meta = param.autograd_meta();
    Bucket& b = buckets[p.bucket];
    Tensor slot = b.flat.slice(0, p.offset, p.offset + param.numel()).view(param.shape());
    slot.copy_(meta->grad);
    meta->grad = slot;  // the reduced values land here; the clone is freed
    p.ready = true;
    ++b.ready;
    launch_ready_buckets();
  }
};

DataParallelTrainer::DataParallelTrainer(dist::Communicator* comm, layers::NamedTensors params, AdamWOptions adam,
                                         DataParallelOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.comm = comm;
  m.params = std::move(params);
  m.options = options;
  REHYAT_CHECK(options.bucket_mb > 0, "data parallel: dist.bucket_mb must be positive, got {}", options.bucket_mb);
  const int world = comm ? comm->world_size() : 1;
  m.owners.assign(m.params.size(), 0);
  if (m.distributed() && options.shard_optimizer) {
    // Largest first, each to the least-loaded rank (ties: the lowest rank): deterministic.
    std::vector<size_t> order(m.params.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return m.params[a].second.numel() > m.params[b].second.numel();
    });
    std::vector<int64_t> load(size_t(world), 0);
    for (size_t i : order) {
      const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
      m.owners[i] = r;
      load[size_t(r)] += m.params[i].second.numel();
    }
  }
  const bool sharded = m.distributed() && options.shard_optimizer;
  layers::NamedTensors mine;  // what this rank's AdamW updates: everything unless sharded
  for (size_t i = 0; i < m.params.size(); ++i)
    if (!sharded || m.owners[i] == m.rank()) mine.push_back(m.params[i]);
  m.adam = std::make_unique<AdamW>(mine, adam);
  if (!m.distributed()) return;

  {  // Every rank starts from rank 0's weights.
    autograd::NoGradGuard no_grad;
    dist::CommGroup group(*comm);
    for (auto& [name, t] : m.params) {
      Tensor p = t;
      comm->broadcast_async(p, 0);
    }
  }

  // Buckets in reverse parameter order (about the order backward finishes gradients in).
  const int64_t cap = std::max<int64_t>(1, int64_t(options.bucket_mb * 1024 * 1024 / sizeof(float)));
  m.placement.resize(m.params.size());
  std::vector<int64_t> sizes;
  for (size_t k = m.params.size(); k-- > 0;) {
    const Tensor& p = m.params[k].second;
    REHYAT_CHECK(p.dtype() == DType::F32 && p.device() == comm->device(),
                 "data parallel: parameter '{}' is {}, expected f32 on {}", m.params[k].first, p.str(),
                 comm->device().str());
    if (m.buckets.empty() || sizes.back() >= cap) {
      m.buckets.emplace_back();
      sizes.push_back(0);
    }
    m.buckets.back().params.push_back(k);
    m.placement[k] = {m.buckets.size() - 1, sizes.back(), false};
    sizes.back() += p.numel();
  }
  for (size_t b = 0; b < m.buckets.size(); ++b)
    m.buckets[b].flat = Tensor::zeros({sizes[b]}, DType::F32, comm->device());
  Impl* self = &m;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const std::shared_ptr<AutogradMeta>& meta = m.params[i].second.autograd_meta();
    REHYAT_CHECK(meta && meta->requires_grad && !meta->grad_fn, "data parallel: parameter '{}' is not a leaf that "
                 "requires grad", m.params[i].first);
    meta->post_accumulate_hook = [self, i] { self->gradient_ready(i); };
  }
}

DataParallelTrainer::~DataParallelTrainer() {
  Impl& m = *impl_;
  if (!m.distributed()) return;
  for (auto& [name, t] : m.params)
    if (t.autograd_meta()) t.autograd_meta()->post_accumulate_hook = nullptr;
  for (Bucket& b : m.buckets) b.work = dist::CommWork();
}

int DataParallelTrainer::rank() const { return impl_->rank(); }
int DataParallelTrainer::world_size() const { return impl_->comm ? impl_->comm->world_size() : 1; }
int64_t DataParallelTrainer::bucket_count() const { return int64_t(impl_->buckets.size()); }

int DataParallelTrainer::owner(const std::string& name) const {
  const Impl& m = *impl_;
  for (size_t i = 0; i < m.params.size(); ++i)
    if (m.params[i].first == name) return m.owners[i];
  REHYAT_FAIL("data parallel: no parameter '{}'", name);
}

void DataParallelTrainer::zero_grad() {
  Impl& m = *impl_;
  for (auto& [name, t] : m.params) Tensor(t).zero_grad();
  for (Bucket& b : m.buckets) {
    b.work.wait();
    b.ready = 0;
    b.launched = false;
  }
  for (Placement& p : m.placement) p.ready = false;
  m.next_launch = 0;
}

void DataParallelTrainer::finish_gradients() {
  Impl& m = *impl_;
  if (!m.distributed()) return;
  autograd::NoGradGuard no_grad;
  // Parameters no gradient reached on this rank add zeros (in index order, so the buckets
  // still launch in order).
  for (size_t i = 0; i < m.params.size(); ++i) {
    if (m.placement[i].ready) continue;
    Tensor param = m.params[i].second;
    const std::shared_ptr<AutogradMeta>& meta = param.autograd_meta();
    if (!meta->grad.defined()) meta->grad = Tensor::zeros(param.shape(), DType::F32, param.device());
    m.gradient_ready(i);
  }
  REHYAT_CHECK(m.next_launch == m.buckets.size(), "data parallel: {} of {} gradient buckets were not launched",
               m.buckets.size() - m.next_launch, m.buckets.size());
  for (Bucket& b : m.buckets) b.work.wait();
}

void DataParallelTrainer::step(double lr) {
  Impl& m = *impl_;
  m.adam->step(lr);
  if (!m.distributed() || !m.options.shard_optimizer) return;
  autograd::NoGradGuard no_grad;
  dist::CommGroup group(*m.comm);
  for (size_t i = 0; i < m.params.size(); ++i) {
    Tensor p = m.params[i].second;
    m.comm->broadcast_async(p, m.owners[i]);
  }
}

std::map<std::string, Tensor> DataParallelTrainer::optimizer_state() {
  Impl& m = *impl_;
  std::map<std::string, Tensor> state;
  for (const auto& [name, t] : m.adam->state()) state[name] = t;
  if (!m.distributed() || !m.options.shard_optimizer) return state;
  autograd::NoGradGuard no_grad;
  dist::CommGroup group(*m.comm);
  for (size_t i = 0; i < m.params.size(); ++i) {
    for (const char* moment : {"adam.m.", "adam.v."}) {
      const std::string key = moment + m.params[i].first;
      Tensor t = m.owners[i] == m.rank() ? state.at(key).clone()
                                         : Tensor::zeros(m.params[i].second.shape(), DType::F32, m.comm->device());
      m.comm->broadcast_async(t, m.owners[i]);
      state[key] = t;
    }
  }
  return state;
}

void DataParallelTrainer::load_optimizer_state(const std::map<std::string, Tensor>& state) {
  Impl& m = *impl_;
  std::map<std::string, Tensor> mine;
  for (size_t i = 0; i < m.params.size(); ++i) {
    for (const char* moment : {"adam.m.", "adam.v."}) {
      const std::string key = moment + m.params[i].first;
      auto it = state.find(key);
      REHYAT_CHECK(it != state.end(), "optimizer state: missing '{}'", key);
      if (!m.options.shard_optimizer || !m.distributed() || m.owners[i] == m.rank()) mine[key] = it->second;
    }
  }
  auto step = state.find("adam.step");
  REHYAT_CHECK(step != state.end(), "optimizer state: missing 'adam.step'");
  mine["adam.step"] = step->second;
  REHYAT_CHECK(state.size() == 2 * m.params.size() + 1, "optimizer state: {} entries, expected {} (2 per parameter "
               "and the step)", state.size(), 2 * m.params.size() + 1);
  m.adam->load_state(mine);
}

double DataParallelTrainer::average(double value) {
  Impl& m = *impl_;
  if (!m.distributed()) return value;
  Tensor t = Tensor::full({1}, value, DType::F64, m.comm->device());
  m.comm->all_reduce(t, dist::ReduceOp::Avg);
  return t.item();
}

}  // namespace rehyat::train
