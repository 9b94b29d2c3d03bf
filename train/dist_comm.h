// The communicator of a multi-GPU run (SPEC §6, issue 7): the collectives data-parallel
// training and block-parallel distillation need, over NCCL, one process per GPU (and, for
// tests and CPU runs, over the control channel: the host backend, see Backends below).
//
// Streams. Collectives run on a communication stream of their own (high priority), never
// on the compute stream (core/cuda_context.h), so communication overlaps compute:
//   1. an event recorded on the compute stream, waited on by the communication stream:
//      the collective sees everything the compute stream did before the call;
//   2. the NCCL call on the communication stream;
//   3. an event recorded on the communication stream after it: the CommWork.
// CommWork::wait() makes the compute stream wait for that event (cudaStreamWaitEvent: no
// host synchronisation). The plain calls (all_reduce, ...) wait at once; the *_async ones
// return the CommWork so compute can go on until the result is needed (bucketed gradient
// reduction during backward). A CommWork keeps its tensors alive until it is waited, and
// waits in its destructor, so the caching allocator (which reuses blocks in compute-stream
// order) never hands a buffer NCCL still reads to a later kernel.
//
// Tensors: contiguous, on this communicator's device, f32, f64, bf16, f16, i32 or i64
// (reductions: the floating types); outputs first, inputs second, like the kernels.
//   all_reduce(t, op)               in place, on every rank
//   reduce_scatter(out, in, op)     in has world * out.numel() elements; rank r gets the
//                                   reduction of block r
//   all_gather(out, in)             out has world * in.numel() elements, rank order
//   broadcast(t, root)              root's t everywhere
//   barrier()                       host-level: returns when every rank called it and this
//                                   rank's collectives in flight are done (control channel)
// Grouped collectives: between group_start() and group_end() (or in a CommGroup's scope)
// calls are fused into one NCCL launch; group_end() returns the CommWork of all of them.
//
// Failure behaviour (issue item 5): the NCCL communicator is nonblocking (ncclConfig_t
// blocking = 0), so no NCCL call blocks the host; every enqueue, the init and finalize are
// polled by a CollectiveWatchdog (train/dist_watchdog.h) that also watches the collectives
// in flight. A timeout (REHYAT_DIST_TIMEOUT, default 300 s), an NCCL error, or a rank that
// went away (the control channel's dead-peer report, train/dist_rendezvous.h) aborts the
// NCCL communicator (ncclCommAbort) and throws rehyat::Error naming this rank, the
// collective and the cause; every later call throws the same. Call check() before anything
// irreversible (a checkpoint write): a failure found by the watchdog thread in between is
// thrown there. A failure nobody picks up within 30 s ends the process (exit status 1).
//
// Backends (backend() names it):
//   "local"  world_size 1, any device, no NCCL and no GPU: the collectives are the identity
//            (all_gather / reduce_scatter copy in to out, Avg of one rank is the value itself).
//   "nccl"   world_size > 1 on a CUDA device: everything above. Needs a build with NCCL
//            (REHYAT_NCCL); a build without it throws "this rehyat was built without NCCL".
//   "host"   world_size > 1 on the CPU (the communicator's device is not cuda), in every
//            build: for the tests, CI without GPUs and small CPU runs -- slow, not for GPUs.
//            Every collective is an all_gather of the raw bytes over the control channel
//            (train/dist_rendezvous.h: everything goes through rank 0's TCP star, in parts of
//            at most 16 MiB over all ranks) and every rank reduces on the host, in the
//            calling thread. So a call returns when it is done: the *_async calls and
//            group_end() return an empty CommWork, calls inside a group run at once,
//            synchronize() has nothing to wait for. Reductions are deterministic and the
//            same bits on every rank: the sum in rank order 0, 1, 2, ..., in the tensor's
//            own arithmetic for f32 (float) and f64 (double), in float for bf16 and f16
//            (rounded once at the end), in wrapping integer arithmetic for i32 and i64;
//            Avg is that sum divided by the world size in the same arithmetic (f32:
//            sum / float(world)). Each call also ships what it is (collective, op, root,
//            dtype, element count): ranks that disagree fail, every one of them, naming what
//            each rank called. Failures (a timeout, a rank that went away: the control
//            channel's errors, wrapped as "rank R: <collective> failed: <cause>"; ranks that
//            disagree) are sticky like NCCL's: every later call and check() throws the same,
//            and the destructor tells the other ranks (report_failure) instead of finishing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "train/dist_env.h"
#include "train/dist_rendezvous.h"

namespace rehyat::dist {

enum class ReduceOp : uint8_t { Sum, Avg };
const char* reduce_op_name(ReduceOp op);

// Whether this rehyat can run more than one rank (it was built with NCCL).
bool built_with_nccl();

// The CUDA device of this rank: cuda:0 when one GPU is visible (a launcher pinned it with
// CUDA_VISIBLE_DEVICES), else cuda:<local_rank>. Throws when there is no GPU or too few.
Device local_device(const DistEnv& env);

// A collective in flight (see the top of the file). Default-constructed: nothing to wait for.
class CommWork {
 public:
  CommWork();
  CommWork(CommWork&&) noexcept;
  CommWork& operator=(CommWork&&) noexcept;
  ~CommWork();  // waits (never throws: an error is logged, and the communicator's next call throws)

  // Orders the compute stream after the collective (no host sync) and releases its tensors.
  void wait();
  bool pending() const { return state_ != nullptr; }

  struct State;  // dist_comm.cpp
  explicit CommWork(std::unique_ptr<State> state);

 private:
  std::unique_ptr<State> state_;
};

class Communicator {
 public:
  // Rendezvous (train/dist_rendezvous.h), then the communicator on `device`: local for one
  // rank, host for several on the CPU, NCCL for several on a GPU (see Backends above). The
  // timeout defaults to env.timeout_seconds; it bounds the rendezvous, the init and every
  // collective.
  static std::unique_ptr<Communicator> create(const DistEnv& env, Device device, double timeout_seconds = 0);
  // Over an existing control channel (dist-check shares it).
  static std::unique_ptr<Communicator> create(std::shared_ptr<ControlChannel> control, Device device,
                                              double timeout_seconds);
  // Finalizes NCCL (bounded by the timeout) and says goodbye on the control channel when
  // it owns it alone (a shared one is its owner's to finish). While an exception unwinds,
  // or after a failure, the communicator is aborted and the other ranks are told this
  // rank failed (report_failure), so they stop at once instead of timing out.
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const;
  int world_size() const;
  Device device() const;
  double timeout_seconds() const;
  const char* backend() const;  // "local", "host" or "nccl"
  ControlChannel& control();

  void all_reduce(Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  void reduce_scatter(Tensor& output, const Tensor& input, ReduceOp op = ReduceOp::Sum);
  void all_gather(Tensor& output, const Tensor& input);
  void broadcast(Tensor& tensor, int root);
  CommWork all_reduce_async(Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  CommWork reduce_scatter_async(Tensor& output, const Tensor& input, ReduceOp op = ReduceOp::Sum);
  CommWork all_gather_async(Tensor& output, const Tensor& input);
  CommWork broadcast_async(Tensor& tensor, int root);
  void barrier();

  // Grouped collectives; inside a group the *_async calls return empty CommWorks and
  // group_end() returns the one for the whole group.
  void group_start();
  CommWork group_end();

  // Host wait until every collective in flight is done (bounded by the timeout).
  void synchronize();
  // Throws the communicator's failure, if any. Cheap, never blocks.
  void check();

  struct Impl;  // dist_comm.cpp

 private:
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// RAII group: { CommGroup group(comm); comm.all_reduce(a); comm.all_reduce(b); } fuses
// both; the destructor ends the group and orders the compute stream after it. end()
// ends it early and returns the CommWork instead.
class CommGroup {
 public:
  explicit CommGroup(Communicator& comm) : comm_(comm) { comm_.group_start(); }
  ~CommGroup();
  CommGroup(const CommGroup&) = delete;
  CommGroup& operator=(const CommGroup&) = delete;
  CommWork end();

 private:
  Communicator& comm_;
  bool ended_ = false;
};

}  // namespace rehyat::dist
