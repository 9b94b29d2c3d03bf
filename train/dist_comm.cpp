// The communicator (see dist_comm.h): the local backend of one rank, and the NCCL backend
// with its communication stream, events and watchdog.
#include "train/dist_comm.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <utility>

#include <fmt/format.h>

#include "core/check.h"
#include "core/log.h"
#include "train/dist_watchdog.h"

#ifdef REHYAT_NCCL
#include <nccl.h>

#include "core/cuda_context.h"
#endif

namespace rehyat::dist {

const char* reduce_op_name(ReduceOp op) { return op == ReduceOp::Sum ? "sum" : "avg"; }

bool built_with_nccl() {
#ifdef REHYAT_NCCL
  return true;
#else
  return false;
#endif
}

Device local_device(const DistEnv& env) {
  const int count = cuda_device_count();
  REHYAT_CHECK(count > 0, "rank {}: no CUDA device found{}", env.rank,
               built_with_cuda() ? "" : " (this rehyat was built without CUDA)");
  if (count == 1) return Device::cuda(0);
  REHYAT_CHECK(env.local_rank < count,
               "rank {}: local rank {} needs cuda:{}, but only {} CUDA devices are visible (CUDA_VISIBLE_DEVICES?)",
               env.rank, env.local_rank, env.local_rank, count);
  return Device::cuda(env.local_rank);
}

namespace {

std::string tensor_text(const Tensor& t) { return fmt::format("{}{}", dtype_name(t.dtype()), shape_str(t.shape())); }

#ifdef REHYAT_NCCL
// A CUDA event without timing, destroyed with its last owner.
struct Event {
  cudaEvent_t event = nullptr;
  Event() { CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
  ~Event() {
    if (event) cudaEventDestroy(event);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

ncclDataType_t nccl_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
  }
  REHYAT_FAIL("dtype {} has no NCCL type", dtype_name(dtype));
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Sum ? ncclSum : ncclAvg; }
#endif

}  // namespace

// --- CommWork ---------------------------------------------------------------------------

struct CommWork::State {
  std::vector<Tensor> keep_alive;  // the collective's buffers, until the compute stream is ordered after it
#ifdef REHYAT_NCCL
  std::shared_ptr<Event> done;     // recorded on the communication stream after the collective
  cudaStream_t compute = nullptr;
#endif
};

CommWork::CommWork() = default;
CommWork::CommWork(std::unique_ptr<State> state) : state_(std::move(state)) {}
CommWork::CommWork(CommWork&&) noexcept = default;

CommWork& CommWork::operator=(CommWork&& other) noexcept {
  if (this != &other) {
    try {
      wait();
    } catch (const std::exception& e) {
      log::error("waiting for a collective failed: {}", e.what());
    }
    state_ = std::move(other.state_);
  }
  return *this;
}

CommWork::~CommWork() {
  try {
    wait();
  } catch (const std::exception& e) {
    log::error("waiting for a collective failed: {}", e.what());
  }
}

void CommWork::wait() {
  if (!state_) return;
  std::unique_ptr<State> state = std::move(state_);
#ifdef REHYAT_NCCL
  if (state->done) CUDA_CHECK(cudaStreamWaitEvent(state->compute, state->done->event, 0));
#endif
}

// --- Communicator -----------------------------------------------------------------------

struct Communicator::Impl {
  int rank = 0, world = 1;
  Device device;
  double timeout_seconds = kDefaultTimeoutSeconds;
  std::shared_ptr<ControlChannel> control;
  int uncaught_at_creation = 0;  // std::uncaught_exceptions() then: more at destruction = unwinding
  uint64_t sequence = 0;         // collectives so far: "#n" in messages
  bool in_group = false;
  std::vector<Tensor> group_tensors;
  std::vector<std::string> group_names;
#ifdef REHYAT_NCCL
  std::recursive_mutex nccl_mutex;  // comm: the caller's calls, the watchdog's queries and abort
  ncclComm_t comm = nullptr;
  cudaStream_t compute = nullptr;      // the device's compute stream (not owned)
  cudaStream_t comm_stream = nullptr;  // owned
  std::unique_ptr<Event> ready;        // re-recorded on the compute stream before every collective
  std::unique_ptr<CollectiveWatchdog> watchdog;
#endif
  bool nccl() const { return world > 1; }

  std::string label(const char* name, const Tensor& t) {
    return fmt::format("{} of {} (#{})", name, tensor_text(t), ++sequence);
  }
  void check_tensor(const Tensor& t, const char* name, const char* role) const {
    REHYAT_CHECK(t.defined(), "{}: the {} tensor is undefined", name, role);
    REHYAT_CHECK(t.is_contiguous(), "{}: the {} tensor {} must be contiguous", name, role, t.str());
    REHYAT_CHECK(t.device() == device, "{}: the {} tensor {} is not on the communicator's device {}", name, role,
                 t.str(), device.str());
  }
  // reduce_scatter and all_gather: output and input on this device, one dtype, and `big`
  // (the input of reduce_scatter, the output of all_gather) world x `small`'s elements.
  // `op`: the reduction of reduce_scatter (checked too), null for all_gather. Without NCCL
  // (one rank) the collective is a copy, done here; returns whether NCCL runs it.
  bool check_world_sized(const char* name, Tensor& output, const Tensor& input, const Tensor& big,
                         const Tensor& small, const ReduceOp* op = nullptr) const {
    check_tensor(output, name, "output");
    check_tensor(input, name, "input");
    if (op) check_reduction(input, *op, name);
    REHYAT_CHECK(input.dtype() == output.dtype(), "{}: input {} and output {} differ in dtype", name, input.str(),
                 output.str());
    REHYAT_CHECK(big.numel() == small.numel() * world, "{}: {} {} must have world size ({}) x {} {} elements", name,
                 &big == &input ? "input" : "output", big.str(), world, &big == &input ? "output" : "input",
                 small.str());
    if (nccl()) return true;
    if (output.data_ptr() != input.data_ptr()) output.copy_(input.reshape(output.shape()));
    return false;
  }
  void check_reduction(const Tensor& t, ReduceOp op, const char* name) const {
    REHYAT_CHECK(op == ReduceOp::Sum || is_floating(t.dtype()), "{}: {} of a {} tensor: only sum works on integers",
                 name, reduce_op_name(op), dtype_name(t.dtype()));
  }
};

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

#ifdef REHYAT_NCCL
namespace {

using Impl = Communicator::Impl;

// Waits until NCCL has enqueued (or initialised, finalized) what it was asked to: a
// nonblocking communicator may answer ncclInProgress first.
void wait_for_nccl(Impl& m, const std::string& what) {
  m.watchdog->wait_until(what, [&m] {
    std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
    if (!m.comm) return true;  // aborted: the watchdog throws its failure next
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(m.comm, &state) != ncclSuccess) return false;
    return state == ncclSuccess;  // errors: the watchdog's async_error hook reports them
  });
  m.watchdog->check();
}

// "Has the collective before this event finished?" -- from any thread (the watchdog's).
std::function<bool()> finished_probe(const Impl& m, std::shared_ptr<Event> done) {
  return [done = std::move(done), device = m.device.index] {
    cudaSetDevice(device);  // the calling thread's current device: cheap when already set
    return cudaEventQuery(done->event) != cudaErrorNotReady;
  };
}

// Runs one NCCL call on the communication stream, ordered after the compute stream.
template <typename Call>
CommWork launch(Impl& m, const std::string& what, std::vector<Tensor> tensors, Call&& call) {
  m.watchdog->check_start(what);
  cuda::set_device(m.device.index);
  CUDA_CHECK(cudaEventRecord(m.ready->event, m.compute));
  CUDA_CHECK(cudaStreamWaitEvent(m.comm_stream, m.ready->event, 0));
  std::string error;
  {
    std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
    if (!m.comm) m.watchdog->check();  // aborted meanwhile: throws its failure
    REHYAT_CHECK(m.comm != nullptr, "rank {}: {}: the NCCL communicator is closed", m.rank, what);
    const ncclResult_t r = call(m.comm, m.comm_stream);
    if (r != ncclSuccess && r != ncclInProgress)
      error = fmt::format("rank {}: {} failed: {} ({})", m.rank, what, ncclGetErrorString(r), ncclGetLastError(m.comm));
  }
  if (!error.empty()) m.watchdog->fail(error);
  if (m.in_group) {
    m.group_names.push_back(what);
    for (Tensor& t : tensors) m.group_tensors.push_back(std::move(t));
    return CommWork();
  }
  wait_for_nccl(m, what);
  auto state = std::make_unique<CommWork::State>();
  state->keep_alive = std::move(tensors);
  state->done = std::make_shared<Event>();
  state->compute = m.compute;
  CUDA_CHECK(cudaEventRecord(state->done->event, m.comm_stream));
  m.watchdog->track(what, finished_probe(m, state->done));
  return CommWork(std::move(state));
}

}  // namespace
#endif

std::unique_ptr<Communicator> Communicator::create(const DistEnv& env, Device device, double timeout_seconds) {
  if (timeout_seconds <= 0) timeout_seconds = env.timeout_seconds;
  if (env.world_size > 1 && !built_with_nccl())
    REHYAT_FAIL("rank {} of {}: this rehyat was built without NCCL, so it runs one rank only (rebuild with CUDA and "
                "NCCL, or run without RANK / WORLD_SIZE / mpirun / srun)",
                env.rank, env.world_size);
  std::shared_ptr<ControlChannel> control = ControlChannel::connect(env, timeout_seconds);
  return create(std::move(control), device, timeout_seconds);
}

std::unique_ptr<Communicator> Communicator::create(std::shared_ptr<ControlChannel> control, Device device,
                                                   double timeout_seconds) {
  REHYAT_CHECK(control != nullptr, "Communicator::create: no control channel");
  auto m = std::make_unique<Impl>();
  m->rank = control->rank();
  m->world = control->world_size();
  m->device = device;
  m->timeout_seconds = timeout_seconds > 0 ? timeout_seconds : kDefaultTimeoutSeconds;
  m->control = std::move(control);
  m->uncaught_at_creation = std::uncaught_exceptions();
  if (!m->nccl()) return std::unique_ptr<Communicator>(new Communicator(std::move(m)));
#ifndef REHYAT_NCCL
  REHYAT_FAIL("rank {} of {}: this rehyat was built without NCCL, so it runs one rank only (rebuild with CUDA and "
              "NCCL, or run without RANK / WORLD_SIZE / mpirun / srun)",
              m->rank, m->world);
#else
  REHYAT_CHECK(device.is_cuda(), "rank {}: NCCL communicates between GPUs: the communicator's device must be cuda, got {}",
               m->rank, device.str());
  Impl& s = *m;
  s.compute = cuda::context(device).stream;  // makes the device current
  int least = 0, greatest = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  CUDA_CHECK(cudaStreamCreateWithPriority(&s.comm_stream, cudaStreamNonBlocking, greatest));
  s.ready = std::make_unique<Event>();

  CollectiveWatchdog::Options options;
  options.timeout_seconds = s.timeout_seconds;
  CollectiveWatchdog::Hooks hooks;
  Impl* self = &s;
  hooks.async_error = [self]() -> std::string {
    std::unique_lock<std::recursive_mutex> lock(self->nccl_mutex, std::try_to_lock);
    if (!lock.owns_lock() || !self->comm) return "";
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(self->comm, &state);
    if (r != ncclSuccess) return ncclGetErrorString(r);
    if (state == ncclSuccess || state == ncclInProgress) return "";
    return fmt::format("{} ({})", ncclGetErrorString(state), ncclGetLastError(self->comm));
  };
  hooks.peer_loss = [self] { return self->control->peer_loss(); };
  hooks.abort = [self] {
    std::lock_guard<std::recursive_mutex> lock(self->nccl_mutex);
    if (self->comm) ncclCommAbort(std::exchange(self->comm, nullptr));
  };
  hooks.stragglers = [self]() -> std::string {
    const std::vector<int> absent =
        self->control->absent_ranks("watchdog timeout report", std::min(self->timeout_seconds, 10.0));
    if (absent.empty()) return "every rank reported the same timeout: a network or NCCL problem rather than one rank";
    return fmt::format("{} {} did not report this timeout: {} the one{} that hung or died",
                       absent.size() == 1 ? "rank" : "ranks", fmt::join(absent, ", "),
                       absent.size() == 1 ? "it is" : "they are", absent.size() == 1 ? "" : "s");
  };
  s.watchdog = std::make_unique<CollectiveWatchdog>(s.rank, options, std::move(hooks));

  // The unique id: 128 opaque bytes from rank 0, over the control channel.
  ncclUniqueId id{};
  std::string id_bytes;
  if (s.rank == 0) {
    NCCL_CHECK(ncclGetUniqueId(&id));
    id_bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
  }
  try {
    id_bytes = s.control->broadcast("NCCL unique id", id_bytes, s.timeout_seconds);
  } catch (const Error& e) {
    s.watchdog->fail(e.what());
  }
  REHYAT_CHECK(id_bytes.size() == sizeof id, "rank {}: the NCCL unique id from rank 0 has {} bytes, expected {}", s.rank,
               id_bytes.size(), sizeof id);
  std::memcpy(&id, id_bytes.data(), sizeof id);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  std::string error;
  {
    std::lock_guard<std::recursive_mutex> lock(s.nccl_mutex);
    const ncclResult_t r = ncclCommInitRankConfig(&s.comm, s.world, id, s.rank, &config);
    if (r != ncclSuccess && r != ncclInProgress)
      error = fmt::format("rank {}: ncclCommInitRankConfig failed: {} ({})", s.rank, ncclGetErrorString(r),
                          ncclGetLastError(s.comm));
  }
  if (!error.empty()) s.watchdog->fail(error);
  wait_for_nccl(s, "NCCL communicator init");
  return std::unique_ptr<Communicator>(new Communicator(std::move(m)));
#endif
}

Communicator::~Communicator() {
  Impl& m = *impl_;
  if (!m.nccl()) return;
#ifdef REHYAT_NCCL
  bool healthy = !m.watchdog->failed() && std::uncaught_exceptions() <= m.uncaught_at_creation;
  if (healthy) {
    try {
      m.watchdog->wait_all();
      std::string error;
      {
        std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
        const ncclResult_t r = ncclCommFinalize(m.comm);
        if (r != ncclSuccess && r != ncclInProgress) error = ncclGetErrorString(r);
      }
      if (!error.empty()) m.watchdog->fail(fmt::format("rank {}: ncclCommFinalize failed: {}", m.rank, error));
      wait_for_nccl(m, "NCCL communicator finalize");
      {
        std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
        if (m.comm) ncclCommDestroy(std::exchange(m.comm, nullptr));
      }
      if (m.control.use_count() == 1) m.control->finish();  // a shared channel is its owner's to finish
    } catch (const std::exception& e) {
      log::error("rank {}: closing the communicator: {}", m.rank, e.what());
      healthy = false;
    }
  }
  if (!healthy) {
    {
      std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
      if (m.comm) ncclCommAbort(std::exchange(m.comm, nullptr));
    }
    const std::string failure = m.watchdog->failure();
    m.control->report_failure(failure.empty() ? "it stopped with an error (see its log)" : failure);
  }
  const bool abort_returned = m.watchdog->abort_returned();
  m.watchdog.reset();
  if (!abort_returned) {  // ncclCommAbort still runs on the watchdog's helper thread and uses impl_
    (void)impl_.release();
    return;
  }
  if (m.comm_stream) cudaStreamDestroy(m.comm_stream);
#endif
}

int Communicator::rank() const { return impl_->rank; }
int Communicator::world_size() const { return impl_->world; }
Device Communicator::device() const { return impl_->device; }
double Communicator::timeout_seconds() const { return impl_->timeout_seconds; }
const char* Communicator::backend() const { return impl_->nccl() ? "nccl" : "local"; }
ControlChannel& Communicator::control() { return *impl_->control; }

CommWork Communicator::all_reduce_async(Tensor& tensor, ReduceOp op) {
  Impl& m = *impl_;
  m.check_tensor(tensor, "all_reduce", "in/out");
  m.check_reduction(tensor, op, "all_reduce");
  if (!m.nccl()) return CommWork();  // one rank: the sum (and the average) is the tensor itself
#ifdef REHYAT_NCCL
  void* data = tensor.data_ptr();
  const size_t count = size_t(tensor.numel());
  const ncclDataType_t type = nccl_dtype(tensor.dtype());
  return launch(m, m.label("all_reduce", tensor), {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
    return ncclAllReduce(data, data, count, type, nccl_op(op), comm, stream);
  });
#else
  return CommWork();
#endif
}

CommWork Communicator::reduce_scatter_async(Tensor& output, const Tensor& input, ReduceOp op) {
  Impl& m = *impl_;
  if (!m.check_world_sized("reduce_scatter", output, input, /*big=*/input, /*small=*/output, &op)) return CommWork();
#ifdef REHYAT_NCCL
  const void* in = input.data_ptr();
  void* out = output.data_ptr();
  const size_t count = size_t(output.numel());
  const ncclDataType_t type = nccl_dtype(input.dtype());
  return launch(m, m.label("reduce_scatter", input), {output, input}, [&](ncclComm_t comm, cudaStream_t stream) {
    return ncclReduceScatter(in, out, count, type, nccl_op(op), comm, stream);
  });
#else
  return CommWork();
#endif
}

CommWork Communicator::all_gather_async(Tensor& output, const Tensor& input) {
  Impl& m = *impl_;
  if (!m.check_world_sized("all_gather", output, input, /*big=*/output, /*small=*/input)) return CommWork();
#ifdef REHYAT_NCCL
  const void* in = input.data_ptr();
  void* out = output.data_ptr();
  const size_t count = size_t(input.numel());
  const ncclDataType_t type = nccl_dtype(input.dtype());
  return launch(m, m.label("all_gather", input), {output, input}, [&](ncclComm_t comm, cudaStream_t stream) {
    return ncclAllGather(in, out, count, type, comm, stream);
  });
#else
  return CommWork();
#endif
}

CommWork Communicator::broadcast_async(Tensor& tensor, int root) {
  Impl& m = *impl_;
  m.check_tensor(tensor, "broadcast", "in/out");
  REHYAT_CHECK(root >= 0 && root < m.world, "broadcast: root {} is outside [0, {})", root, m.world);
  if (!m.nccl()) return CommWork();
#ifdef REHYAT_NCCL
  void* data = tensor.data_ptr();
  const size_t count = size_t(tensor.numel());
  const ncclDataType_t type = nccl_dtype(tensor.dtype());
  return launch(m, m.label("broadcast", tensor), {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
    return ncclBroadcast(data, data, count, type, root, comm, stream);
  });
#else
  return CommWork();
#endif
}

void Communicator::all_reduce(Tensor& tensor, ReduceOp op) { all_reduce_async(tensor, op).wait(); }
void Communicator::reduce_scatter(Tensor& output, const Tensor& input, ReduceOp op) {
  reduce_scatter_async(output, input, op).wait();
}
void Communicator::all_gather(Tensor& output, const Tensor& input) { all_gather_async(output, input).wait(); }
void Communicator::broadcast(Tensor& tensor, int root) { broadcast_async(tensor, root).wait(); }

void Communicator::barrier() {
  Impl& m = *impl_;
  REHYAT_CHECK(!m.in_group, "rank {}: barrier inside a collective group", m.rank);
  if (!m.nccl()) return;
#ifdef REHYAT_NCCL
  m.watchdog->wait_all();
  try {
    m.control->barrier("barrier", m.timeout_seconds);
  } catch (const Error& e) {
    m.watchdog->fail(e.what());  // the others cannot be reached: the NCCL communicator is of no use either
  }
#endif
}

void Communicator::group_start() {
  Impl& m = *impl_;
  REHYAT_CHECK(!m.in_group, "rank {}: collective groups do not nest", m.rank);
#ifdef REHYAT_NCCL
  if (m.nccl()) {
    m.watchdog->check();
    std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
    NCCL_CHECK(ncclGroupStart());
  }
#endif
  m.in_group = true;
}

CommWork Communicator::group_end() {
  Impl& m = *impl_;
  REHYAT_CHECK(m.in_group, "rank {}: group_end without group_start", m.rank);
  m.in_group = false;
  std::vector<Tensor> tensors = std::move(m.group_tensors);
  std::vector<std::string> names = std::move(m.group_names);
  m.group_tensors.clear();
  m.group_names.clear();
  if (!m.nccl() || names.empty()) {
#ifdef REHYAT_NCCL
    if (m.nccl()) {
      std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
      ncclGroupEnd();
    }
#endif
    return CommWork();
  }
#ifdef REHYAT_NCCL
  const std::string what =
      names.size() == 1 ? names[0]
                        : fmt::format("group of {} collectives ({}{})", names.size(),
                                      fmt::join(names.begin(), names.begin() + std::min<size_t>(names.size(), 3), ", "),
                                      names.size() > 3 ? ", ..." : "");
  std::string error;
  {
    std::lock_guard<std::recursive_mutex> lock(m.nccl_mutex);
    const ncclResult_t r = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress)
      error = fmt::format("rank {}: {} failed: {} ({})", m.rank, what, ncclGetErrorString(r),
                          m.comm ? ncclGetLastError(m.comm) : "");
  }
  if (!error.empty()) m.watchdog->fail(error);
  wait_for_nccl(m, what);
  auto state = std::make_unique<CommWork::State>();
  state->keep_alive = std::move(tensors);
  state->done = std::make_shared<Event>();
  state->compute = m.compute;
  CUDA_CHECK(cudaEventRecord(state->done->event, m.comm_stream));
  m.watchdog->track(what, finished_probe(m, state->done));
  return CommWork(std::move(state));
#else
  return CommWork();
#endif
}

void Communicator::synchronize() {
#ifdef REHYAT_NCCL
  if (impl_->nccl()) impl_->watchdog->wait_all();
#endif
}

void Communicator::check() {
#ifdef REHYAT_NCCL
  if (impl_->nccl()) impl_->watchdog->check();
#endif
}

CommGroup::~CommGroup() {
  if (ended_) return;
  try {
    comm_.group_end().wait();
  } catch (const std::exception& e) {
    log::error("ending a collective group failed: {}", e.what());
  }
}

CommWork CommGroup::end() {
  ended_ = true;
  return comm_.group_end();
}

}  // namespace rehyat::dist
