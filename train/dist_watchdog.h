// The watchdog of a communicator (SPEC §6: "never hang forever"). Collectives run
// asynchronously on the communication stream; a rank that died or hung leaves the others'
// collectives waiting for ever, and the host with them at its next synchronisation. The
// watchdog keeps the list of collectives in flight (each with a cheap "finished?" probe,
// a CUDA event query for NCCL) and fails the communicator when
//   - the oldest one has not finished `timeout_seconds` after it was enqueued,
//   - the backend reports an asynchronous error (ncclCommGetAsyncError), or
//   - the control channel learns that a rank went away (train/dist_rendezvous.h) -- at
//     once, without waiting for the timeout.
// Failing means: call the backend's abort (ncclCommAbort, which ends the NCCL kernels so
// every stream drains), remember the message, and throw it as rehyat::Error from this and
// every later call. For a timeout the message also says which ranks did not report the
// same timeout (the `stragglers` hook asks the others over the control channel), e.g.
//   "rank 1: all_reduce of bf16[4096] (#17) did not finish within 60 s: another rank died
//    or hung (rank 2 did not report; ranks 0, 1 timed out here); aborted the NCCL communicator"
//
// Checks run on the caller's thread inside check_start()/check()/wait_all()/wait_until(), and on
// a watchdog thread every `poll_seconds` so that a failure is found while the caller is
// busy elsewhere. A failure found by the thread that no caller has picked up within
// `exit_grace_seconds` (the caller is stuck, or never calls the communicator again)
// ends the process: the message on stderr and exit status 1 -- the last resort that keeps
// a job from hanging until its wall-clock limit. Nothing here knows NCCL: the hooks do,
// so the logic is tested on the CPU with fakes.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "train/dist_env.h"
#include "train/dist_rendezvous.h"

namespace rehyat::dist {

class CollectiveWatchdog {
 public:
  struct Hooks {
    std::function<std::string()> async_error;            // "" while healthy (any thread)
    std::function<std::optional<PeerLoss>()> peer_loss;  // a rank known gone (any thread)
    std::function<void()> abort;                         // stops the backend; called once
    std::function<std::string()> stragglers;             // after a timeout: who is missing; may block seconds
  };
  struct Options {
    double timeout_seconds = kDefaultTimeoutSeconds;
    double poll_seconds = 0.05;
    double exit_grace_seconds = 30;  // < 0: never end the process
    bool thread = true;              // false: checks run only in the calls (tests)
    std::string backend = "NCCL communicator";
    double abort_wait_seconds = 30;  // abort runs on its own thread; give up waiting after this
  };

  CollectiveWatchdog(int rank, Options options, Hooks hooks);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // Before enqueueing `what`: throws when the communicator has failed, and fails it when a
  // rank is already gone (or finished: `what` could never complete).
  void check_start(const std::string& what);
  // `what` was enqueued; `finished` says whether it is done (cheap, any thread).
  void track(const std::string& what, std::function<bool()> finished);
  // Forgets finished collectives and runs the checks; throws the failure. Never blocks
  // (beyond a stragglers query when it finds a timeout).
  void check();
  // Blocks until every collective in flight has finished, or fails.
  void wait_all();
  // Polls `ready` until it holds, under the same checks and timeout (enqueueing a
  // nonblocking NCCL call, communicator init and finalize).
  void wait_until(const std::string& what, const std::function<bool()>& ready);
  // Fails now: abort (once) and throw rehyat::Error(message).
  [[noreturn]] void fail(const std::string& message);

  bool failed() const;
  std::string failure() const;  // "" while healthy
  size_t in_flight() const;
  // False after a failure whose abort hook has not returned (still running on its own
  // thread): the owner must then keep what the hook uses alive (leak it).
  bool abort_returned() const { return abort_returned_.load(); }
  double timeout_seconds() const { return options_.timeout_seconds; }

 private:
  struct Entry {
    std::string what;
    std::function<bool()> finished;
    std::chrono::steady_clock::time_point start;
  };
  enum class Problem { None, Error, PeerLost, Timeout };

  // What is wrong now with the oldest unfinished collective, or with the wait `what`
  // begun at `start` when it is older (wait_until), as the message to fail with.
  // Drops finished entries.
  struct Diagnosis {
    Problem problem = Problem::None;
    std::string message;
  };
  Diagnosis diagnose(const std::string* what, std::chrono::steady_clock::time_point start);
  // Records the failure once (abort, stragglers) and returns the message to throw.
  std::string set_failure(const Diagnosis& diagnosis, bool from_thread);
  [[noreturn]] void throw_failure();
  void thread_loop();

  int rank_;
  Options options_;
  Hooks hooks_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Entry> entries_;
  std::string failure_;  // set once
  bool failing_ = false; // a thread is recording the failure (stragglers query under way)
  bool observed_ = false;
  std::chrono::steady_clock::time_point failed_at_;
  bool stop_ = false;
  std::atomic<bool> abort_returned_{true};
  std::thread thread_;
};

}  // namespace rehyat::dist
