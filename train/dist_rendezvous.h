// The control channel of a multi-process run: how the ranks find each other, agree on the
// NCCL unique id, wait for each other, and learn that one of them died -- all over plain
// TCP on the CPU, so it needs no MPI and no GPU and is tested with threads and forks.
//
// Rendezvous. Rank 0 listens, every other rank connects to it and stays connected (a star):
//   TCP:  rank 0 listens on MASTER_PORT (all interfaces); the others connect to
//         MASTER_ADDR:MASTER_PORT, retrying until the timeout, then fail naming the address.
//   file: REHYAT_RENDEZVOUS_FILE=/shared/path. Rank 0 listens on an ephemeral port and
//         writes "<address> <port> <world>" there atomically (write, fsync, rename); the
//         others poll the file (re-reading it on every try, so a stale file from an earlier
//         run is replaced rather than trusted) and connect to what it names. The address is
//         MASTER_ADDR when set, else this host's name. Use a fresh path per job (e.g. with
//         $SLURM_JOB_ID in it); rank 0 removes the file when the channel closes.
// Every rank sends a hello (magic, version, rank, world size, pid, host); rank 0 rejects a
// wrong world size or a duplicate rank, and answers with a welcome once all have arrived.
//
// Operations (every rank calls them in the same order with the same tags):
//   all_gather(tag, bytes): every rank's bytes, in rank order. Rank 0 collects; a tag that
//     is not complete `timeout` seconds after its first contribution is failed by rank 0's
//     channel thread with the list of ranks that never arrived, which every waiting rank
//     reports ("rank 2 did not arrive"). broadcast() and barrier() are all_gathers.
//   The NCCL unique id is just a broadcast of 128 opaque bytes (train/dist_comm.h).
//
// Heartbeat and dead peers. Each process runs one channel thread that reads its sockets.
// A process that dies (exit, crash, SIGKILL) has its socket closed by the kernel; rank 0
// sees the end of stream without a goodbye and tells every other rank "rank R went away"
// (with the reason when the rank sent one through report_failure()); a rank that loses
// its connection to rank 0 concludes rank 0 went away. TCP keepalive (10 s idle, 5 s
// interval, 3 probes) covers a machine that vanishes without closing its sockets. So
// waiting ranks fail at once, naming the dead rank, instead of waiting for the timeout;
// peer_loss() exposes the same to the NCCL watchdog (train/dist_watchdog.h).
// finish() says goodbye: a rank that finished is not reported as lost, but an operation
// that needs it fails ("rank R has already finished"). Destroying a channel without
// finish() -- an exception on its way out -- looks like a dead process to the others.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "train/dist_env.h"

namespace rehyat::dist {

// A rank that is gone: its process ended or its connection broke (or it said goodbye).
struct PeerLoss {
  int rank = -1;
  std::string reason;    // "its connection closed without a goodbye (the process exited or was killed)"
  bool finished = false; // it said goodbye (finished normally): fatal only for new operations
};

class ControlChannel {
 public:
  // Rendezvous of env.world_size ranks (see above); world 1 returns at once. Throws
  // rehyat::Error when the others do not show up within timeout_seconds, naming the
  // address (or file) and the ranks missing.
  static std::unique_ptr<ControlChannel> connect(const DistEnv& env, double timeout_seconds);
  ~ControlChannel();
  ControlChannel(const ControlChannel&) = delete;
  ControlChannel& operator=(const ControlChannel&) = delete;

  int rank() const;
  int world_size() const;

  // Every rank's payload in rank order. Throws naming the tag, the timeout and the ranks
  // missing, or the rank that went away.
  std::vector<std::string> all_gather(const std::string& tag, const std::string& payload, double timeout_seconds);
  // Rank `root`'s payload on every rank (the others' payload is ignored).
  std::string broadcast(const std::string& tag, const std::string& payload, double timeout_seconds, int root = 0);
  void barrier(const std::string& tag, double timeout_seconds);
  // For reports after a failure: a barrier that returns the ranks that did not take part
  // within the timeout instead of throwing (a rank that went away counts as absent, and
  // rank 0 when it never answered); empty when every rank took part.
  std::vector<int> absent_ranks(const std::string& tag, double timeout_seconds);

  // The first rank known gone, if any (thread-safe, cheap: no I/O).
  std::optional<PeerLoss> peer_loss() const;
  // Tells the others why this rank is about to stop; they report it as the reason.
  void report_failure(const std::string& reason);
  // Goodbye: the others will not report this rank as lost. Idempotent.
  void finish();

  struct State;  // sockets, the channel thread and what it learned (dist_rendezvous.cpp)

 private:
  explicit ControlChannel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// File rendezvous primitives (also used by connect()): write `text` to `path` atomically,
// and wait until `path` exists and `accept(text)` holds, re-reading it every ~50 ms. The
// timeout error names the path, the timeout and `what` rank 0 was to write.
void publish_rendezvous_file(const std::string& path, const std::string& text);
std::string wait_for_rendezvous_file(const std::string& path, double timeout_seconds, int rank,
                                     const std::function<bool(const std::string&)>& accept = {});

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close):
// for `rehyat launch` and the tests.
int free_tcp_port();

// "1 s", "0.5 s", "300 s": durations in messages.
std::string seconds_text(double seconds);

}  // namespace rehyat::dist
