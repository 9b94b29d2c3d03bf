// The communicator (see dist_comm.h): the local backend of one rank, the host backend of
// CPU ranks (collectives over the control channel), and the NCCL backend with its
// communication stream, events and watchdog.
#include "train/dist_comm.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <type_traits>
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
  enum class Kind : uint8_t { Local, Host, Nccl };
  Kind kind = Kind::Local;
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
  // The host backend's failure (a control channel error, ranks that disagree): every later
  // call throws it (the ranks' collective sequences can no longer be trusted to match).
  std::string failure;
  bool nccl() const { return kind == Kind::Nccl; }
  bool host() const { return kind == Kind::Host; }

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
  // `op`: the reduction of reduce_scatter (checked too), null for all_gather. With one rank
  // the collective is a copy, done here; returns whether a backend (host, NCCL) runs it.
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
    if (world > 1) return true;
    if (output.data_ptr() != input.data_ptr()) output.copy_(input.reshape(output.shape()));
    return false;
  }
  void check_reduction(const Tensor& t, ReduceOp op, const char* name) const {
    REHYAT_CHECK(op == ReduceOp::Sum || is_floating(t.dtype()), "{}: {} of a {} tensor: only sum works on integers",
                 name, reduce_op_name(op), dtype_name(t.dtype()));
  }
  void check_failed() const {
    if (!failure.empty()) throw Error(failure);
  }
  // Records the host backend's failure (the first one wins) and throws it.
  [[noreturn]] void fail(const std::string& message) {
    if (failure.empty()) failure = message;
    throw Error(failure);
  }
};

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// --- the host backend --------------------------------------------------------------------

namespace {

using Impl = Communicator::Impl;

// What one all_gather of the control channel may carry: rank 0 sends every rank all the
// world's parts in one frame (the channel takes frames up to 64 MiB), so a collective of
// more bytes goes in parts of at most this many bytes all ranks together.
constexpr size_t kHostGatherBytes = size_t(16) << 20;

// The arithmetic of host reductions: f32 and f64 in their own type, bf16 and f16 in float
// (rounded once at the end), integers in unsigned arithmetic (wrapping like NCCL, no UB).
template <typename T> struct HostAccumulator { using type = T; };
template <> struct HostAccumulator<bf16_t> { using type = float; };
template <> struct HostAccumulator<f16_t> { using type = float; };
template <> struct HostAccumulator<int32_t> { using type = uint32_t; };
template <> struct HostAccumulator<int64_t> { using type = uint64_t; };

template <typename T>
typename HostAccumulator<T>::type host_load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // the parts of a gather need not be aligned
  if constexpr (std::is_same_v<T, bf16_t>) return bf16_to_float(v);
  else if constexpr (std::is_same_v<T, f16_t>) return f16_to_float(v);
  else return typename HostAccumulator<T>::type(v);
}

template <typename T>
void host_store(char* p, typename HostAccumulator<T>::type a) {
  T v;
  if constexpr (std::is_same_v<T, bf16_t>) v = float_to_bf16(a);
  else if constexpr (std::is_same_v<T, f16_t>) v = float_to_f16(a);
  else v = T(a);
  std::memcpy(p, &v, sizeof v);
}

// out[i] = parts[0][i] + parts[1][i] + ... in rank order (then / world for Avg), for
// `count` elements: the same bits on every rank, whatever the order the parts arrived in.
void host_reduce(DType dtype, ReduceOp op, const std::vector<const char*>& parts, size_t count, char* out) {
  REHYAT_DISPATCH_ALL(dtype, "host reduction", {
    using A = typename HostAccumulator<scalar_t>::type;
    constexpr size_t size = sizeof(scalar_t);
    const A world = A(parts.size());
    for (size_t i = 0; i < count; ++i) {
      A sum = host_load<scalar_t>(parts[0] + i * size);
      for (size_t r = 1; r < parts.size(); ++r) sum += host_load<scalar_t>(parts[r] + i * size);
      if (op == ReduceOp::Avg) sum = sum / world;
      host_store<scalar_t>(out + i * size, sum);
    }
  });
}

// "rank 1: host #3 cannot finish: ..." -> "host #3 cannot finish: ..." (our message names the rank).
std::string without_rank_prefix(const std::string& message, int rank) {
  const std::string prefix = fmt::format("rank {}: ", rank);
  return message.starts_with(prefix) ? message.substr(prefix.size()) : message;
}

// One collective of the host backend. Every rank (or only rank `source`, when it is not
// -1: the root of a broadcast) contributes `elements` elements of `dtype` from `data`, in
// parts of at most kHostGatherBytes over all ranks; `consume(begin, end, parts)` gets the
// elements [begin, end) of every rank that contributes (null for the others), part by
// part. The first part also carries `signature` (the collective, its arguments and sizes):
// ranks that disagree fail on every rank with a message naming what each one called.
using HostConsumer = std::function<void(size_t begin, size_t end, const std::vector<const char*>& parts)>;

void host_collective(Impl& m, const std::string& what, const std::string& signature, DType dtype, size_t elements,
                     int source, const void* data, const HostConsumer& consume) {
  m.check_failed();
  const size_t size = dtype_size(dtype);
  const size_t per_part = std::max<size_t>(1, kHostGatherBytes / size_t(m.world) / size);
  const size_t part_count = std::max<size_t>(1, (elements + per_part - 1) / per_part);
  const uint64_t sequence = m.sequence;
  const auto contributes = [source](int r) { return source < 0 || source == r; };
  for (size_t part = 0; part < part_count; ++part) {
    const size_t begin = part * per_part, end = std::min(elements, begin + per_part);
    std::string payload;
    if (part == 0) payload = signature + '\n';
    if (contributes(m.rank) && end > begin)
      payload.append(static_cast<const char*>(data) + begin * size, (end - begin) * size);
    // Unique per call and the same on every rank that makes the same calls.
    const std::string tag =
        part == 0 ? fmt::format("host #{}", sequence) : fmt::format("host #{} part {}/{}", sequence, part + 1, part_count);
    std::vector<std::string> gathered;
    try {
      gathered = m.control->all_gather(tag, payload, m.timeout_seconds);
    } catch (const Error& e) {
      m.fail(fmt::format("rank {}: {} failed: {}", m.rank, what, without_rank_prefix(e.what(), m.rank)));
    }
    if (gathered.size() != size_t(m.world))
      m.fail(fmt::format("rank {}: {} failed: the control channel returned {} parts for {} ranks", m.rank, what,
                         gathered.size(), m.world));
    if (part == 0) {
      std::vector<std::string> signatures(gathered.size());
      for (size_t r = 0; r < gathered.size(); ++r) {
        const size_t newline = gathered[r].find('\n');
        signatures[r] = newline == std::string::npos ? "nothing readable" : gathered[r].substr(0, newline);
        gathered[r].erase(0, newline == std::string::npos ? gathered[r].size() : newline + 1);
      }
      if (std::any_of(signatures.begin(), signatures.end(), [&](const std::string& s) { return s != signature; })) {
        std::vector<std::string> calls;  // "rank 0: all_reduce (sum) of 4 f32 elements", equal ones together
        std::vector<bool> listed(signatures.size(), false);
        for (size_t r = 0; r < signatures.size(); ++r) {
          if (listed[r]) continue;
          std::vector<size_t> same;
          for (size_t q = r; q < signatures.size(); ++q)
            if (!listed[q] && signatures[q] == signatures[r]) {
              same.push_back(q);
              listed[q] = true;
            }
          calls.push_back(
              fmt::format("{} {}: {}", same.size() == 1 ? "rank" : "ranks", fmt::join(same, ", "), signatures[r]));
        }
        m.fail(fmt::format("rank {}: {} failed: the ranks disagree on the collective or its sizes ({})", m.rank, what,
                           fmt::join(calls, "; ")));
      }
    }
    std::vector<const char*> parts(gathered.size(), nullptr);
    const size_t expected = (end - begin) * size;
    for (size_t r = 0; r < gathered.size(); ++r) {
      if (!contributes(int(r))) continue;
      if (gathered[r].size() != expected)
        m.fail(fmt::format("rank {}: {} failed: rank {} sent {} bytes for elements [{}, {}), expected {}", m.rank, what,
                           r, gathered[r].size(), begin, end, expected));
      parts[r] = gathered[r].data();
    }
    consume(begin, end, parts);
  }
}

}  // namespace

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

// After NCCL enqueued `what` on the communication stream: the CommWork that waits for it
// (an event after it, watched by the watchdog) and keeps its tensors alive until then.
CommWork enqueued(Impl& m, const std::string& what, std::vector<Tensor> tensors) {
  wait_for_nccl(m, what);
  auto state = std::make_unique<CommWork::State>();
  state->keep_alive = std::move(tensors);
  state->done = std::make_shared<Event>();
  state->compute = m.compute;
  CUDA_CHECK(cudaEventRecord(state->done->event, m.comm_stream));
  m.watchdog->track(what, finished_probe(m, state->done));
  return CommWork(std::move(state));
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
  return enqueued(m, what, std::move(tensors));
}

}  // namespace
#endif

std::unique_ptr<Communicator> Communicator::create(const DistEnv& env, Device device, double timeout_seconds) {
  if (timeout_seconds <= 0) timeout_seconds = env.timeout_seconds;
  if (env.world_size > 1 && device.is_cuda() && !built_with_nccl())
    REHYAT_FAIL("rank {} of {}: this rehyat was built without NCCL, so its ranks cannot communicate on {} (rebuild "
                "with CUDA and NCCL, run on the CPU, or run without RANK / WORLD_SIZE / mpirun / srun)",
                env.rank, env.world_size, device.str());
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
  if (m->world == 1) return std::unique_ptr<Communicator>(new Communicator(std::move(m)));  // local
  if (!device.is_cuda()) {  // host: the collectives go over the control channel
    m->kind = Impl::Kind::Host;
    return std::unique_ptr<Communicator>(new Communicator(std::move(m)));
  }
#ifndef REHYAT_NCCL
  REHYAT_FAIL("rank {} of {}: this rehyat was built without NCCL, so its ranks cannot communicate on {} (rebuild "
              "with CUDA and NCCL, run on the CPU, or run without RANK / WORLD_SIZE / mpirun / srun)",
              m->rank, m->world, device.str());
#else
  m->kind = Impl::Kind::Nccl;
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
  if (m.host()) {
    // Like NCCL's: goodbye when healthy and the channel is ours alone; else tell the others.
    const bool healthy = m.failure.empty() && std::uncaught_exceptions() <= m.uncaught_at_creation;
    try {
      if (!healthy)
        m.control->report_failure(m.failure.empty() ? "it stopped with an error (see its log)" : m.failure);
      else if (m.control.use_count() == 1)
        m.control->finish();
    } catch (const std::exception& e) {
      log::error("rank {}: closing the communicator: {}", m.rank, e.what());
    }
    return;
  }
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
const char* Communicator::backend() const {
  switch (impl_->kind) {
    case Impl::Kind::Host: return "host";
    case Impl::Kind::Nccl: return "nccl";
    case Impl::Kind::Local: break;
  }
  return "local";
}
ControlChannel& Communicator::control() { return *impl_->control; }

CommWork Communicator::all_reduce_async(Tensor& tensor, ReduceOp op) {
  Impl& m = *impl_;
  m.check_tensor(tensor, "all_reduce", "in/out");
  m.check_reduction(tensor, op, "all_reduce");
  if (m.host()) {
    const std::string what = m.label("all_reduce", tensor);
    const DType dtype = tensor.dtype();
    const size_t size = dtype_size(dtype);
    char* data = static_cast<char*>(tensor.data_ptr());
    host_collective(m, what,
                    fmt::format("all_reduce ({}) of {} {} elements", reduce_op_name(op), tensor.numel(),
                                dtype_name(dtype)),
                    dtype, size_t(tensor.numel()), -1, data,
                    [&](size_t begin, size_t end, const std::vector<const char*>& parts) {
                      host_reduce(dtype, op, parts, end - begin, data + begin * size);
                    });
    return CommWork();
  }
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
  if (m.host()) {  // every rank gets all inputs and reduces its own block [rank * n, (rank + 1) * n)
    const std::string what = m.label("reduce_scatter", input);
    const DType dtype = input.dtype();
    const size_t size = dtype_size(dtype);
    const size_t n = size_t(output.numel()), first = size_t(m.rank) * n;
    char* out = static_cast<char*>(output.data_ptr());
    host_collective(m, what,
                    fmt::format("reduce_scatter ({}) of {} {} elements", reduce_op_name(op), input.numel(),
                                dtype_name(dtype)),
                    dtype, size_t(input.numel()), -1, input.data_ptr(),
                    [&](size_t begin, size_t end, const std::vector<const char*>& parts) {
                      const size_t lo = std::max(begin, first), hi = std::min(end, first + n);
                      if (lo >= hi) return;
                      std::vector<const char*> mine(parts.size());
                      for (size_t r = 0; r < parts.size(); ++r) mine[r] = parts[r] + (lo - begin) * size;
                      host_reduce(dtype, op, mine, hi - lo, out + (lo - first) * size);
                    });
    return CommWork();
  }
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
  if (m.host()) {
    const std::string what = m.label("all_gather", input);
    const DType dtype = input.dtype();
    const size_t size = dtype_size(dtype);
    const size_t n = size_t(input.numel());
    char* out = static_cast<char*>(output.data_ptr());
    host_collective(m, what, fmt::format("all_gather of {} {} elements per rank", n, dtype_name(dtype)), dtype, n, -1,
                    input.data_ptr(), [&](size_t begin, size_t end, const std::vector<const char*>& parts) {
                      for (size_t r = 0; r < parts.size(); ++r)
                        std::memcpy(out + (r * n + begin) * size, parts[r], (end - begin) * size);
                    });
    return CommWork();
  }
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
  if (m.host()) {
    const std::string what = m.label("broadcast", tensor);
    const DType dtype = tensor.dtype();
    const size_t size = dtype_size(dtype);
    char* data = static_cast<char*>(tensor.data_ptr());
    host_collective(m, what,
                    fmt::format("broadcast from rank {} of {} {} elements", root, tensor.numel(), dtype_name(dtype)),
                    dtype, size_t(tensor.numel()), root, data,
                    [&](size_t begin, size_t end, const std::vector<const char*>& parts) {
                      if (m.rank != root) std::memcpy(data + begin * size, parts[size_t(root)], (end - begin) * size);
                    });
    return CommWork();
  }
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
  if (m.host()) {
    host_collective(m, fmt::format("barrier (#{})", ++m.sequence), "barrier", DType::F32, 0, -1, nullptr,
                    [](size_t, size_t, const std::vector<const char*>&) {});
    return;
  }
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
  m.check_failed();
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
  return enqueued(m, what, std::move(tensors));
#else
  return CommWork();
#endif
}

void Communicator::synchronize() {
  impl_->check_failed();  // the host backend has nothing in flight: its calls return when done
#ifdef REHYAT_NCCL
  if (impl_->nccl()) impl_->watchdog->wait_all();
#endif
}

void Communicator::check() {
  impl_->check_failed();
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
