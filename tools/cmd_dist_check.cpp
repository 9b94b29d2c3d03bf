// `rehyat dist-check`: a diagnostic of a multi-process run (issue 7). Every rank detects
// its environment (train/dist_env.h), joins the rendezvous (train/dist_rendezvous.h), gets
// a 128-byte id from rank 0 -- random bytes standing in for the NCCL unique id -- and checks
// that every rank got the same one, then waits at a barrier and prints
//   rank R/W: ok (<source>, local rank L, host H, CUDA_VISIBLE_DEVICES=...; <what was checked>)
// When rehyat was built with NCCL and this rank sees a GPU, it also creates the NCCL
// communicator on it and checks every collective against the expected values: all_reduce
// (sum of f32 1M elements, sum of bf16 and average of f16), reduce_scatter, all_gather,
// broadcast, a group of two all_reduces and the barrier.
//
// Failure drills, for the launcher and the watchdog (tests/tools/test_dist.py):
//   --die-rank R    rank R exits with status 1 without a goodbye (--die-signal: it
//                   SIGKILLs itself instead);
//   --hang-rank R   rank R sleeps until it is killed instead of taking part;
//   --drill-at W    where: "rendezvous" (default: right after it, the control channel
//                   alone) or "nccl" (after the NCCL communicator is up, so the others are
//                   left inside NCCL collectives: the watchdog's abort path);
//   --timeout S     overrides REHYAT_DIST_TIMEOUT for this check.
// The other ranks then fail within about the timeout (hang) or at once (death) with a
// message naming that rank. --no-nccl skips the NCCL part.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <random>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "core/check.h"
#include "core/device.h"
#include "core/log.h"
#include "core/tensor.h"
#include "tools/dist_commands.h"
#include "train/dist_comm.h"
#include "train/dist_env.h"
#include "train/dist_rendezvous.h"

namespace rehyat::tools {

namespace {

struct DistCheckOptions {
  double timeout_seconds = 0;  // 0: REHYAT_DIST_TIMEOUT
  int die_rank = -1;
  bool die_signal = false;
  int hang_rank = -1;
  std::string drill_at = "rendezvous";  // or "nccl"
  bool no_nccl = false;
};

// The --die-rank / --hang-rank drill, if it is this rank's.
void run_drill(const DistCheckOptions& o, int rank) {
  if (rank == o.die_rank) {
    fmt::print(stderr, "rank {}: --die-rank: dying now at the {} ({}, without a goodbye)\n", rank, o.drill_at,
               o.die_signal ? "SIGKILL" : "exit status 1");
    std::fflush(stdout);
    std::fflush(stderr);
    if (o.die_signal) ::raise(SIGKILL);
    ::_exit(1);
  }
  if (rank == o.hang_rank) {
    fmt::print(stderr, "rank {}: --hang-rank: hanging at the {} (sleeping until killed)\n", rank, o.drill_at);
    std::fflush(stderr);
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

uint64_t fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Reads t back after the collectives in flight are done: the host waits under the
// watchdog (a dead or hung peer fails here with its message), not in a plain CUDA sync.
void expect_values(dist::Communicator& comm, const Tensor& t, const std::function<double(int64_t)>& expected,
                   const std::string& what, int rank) {
  comm.synchronize();
  const std::vector<double> got = t.to_vector();
  comm.check();  // a failure found meanwhile: the values are not to be trusted
  for (size_t i = 0; i < got.size(); ++i)
    REHYAT_CHECK(got[i] == expected(int64_t(i)), "rank {}: dist-check {}: element {} is {}, expected {}", rank, what,
                 i, got[i], expected(int64_t(i)));
}

// Every collective once, on this rank's GPU, against values computed here.
std::string check_collectives(dist::Communicator& comm) {
  const int rank = comm.rank(), world = comm.world_size();
  const Device gpu = comm.device();
  const double rank_sum = world * (world + 1) / 2.0;  // sum over ranks of (rank + 1)

  Tensor big = Tensor::full({1 << 20}, rank + 1, DType::F32, gpu);
  comm.all_reduce(big);
  expect_values(comm, big, [&](int64_t) { return rank_sum; }, "all_reduce (f32 sum)", rank);

  Tensor half = Tensor::full({4096}, rank + 1, DType::BF16, gpu);
  comm.all_reduce(half);
  expect_values(comm, half, [&](int64_t) { return rank_sum; }, "all_reduce (bf16 sum)", rank);

  Tensor avg = Tensor::full({1000}, 2 * (rank + 1), DType::F16, gpu);
  comm.all_reduce(avg, dist::ReduceOp::Avg);
  expect_values(comm, avg, [&](int64_t) { return world + 1.0; }, "all_reduce (f16 avg)", rank);

  // reduce_scatter: input element i of rank r is (r + 1) * (i + 1); rank r gets block r of the sum.
  const int64_t block = 5;
  std::vector<double> in_values(size_t(block * world));
  for (size_t i = 0; i < in_values.size(); ++i) in_values[i] = double(rank + 1) * double(i + 1);
  Tensor scatter_in = Tensor::from_vector(in_values, {block * world}, DType::F32, gpu);
  Tensor scatter_out = Tensor::zeros({block}, DType::F32, gpu);
  comm.reduce_scatter(scatter_out, scatter_in);
  expect_values(comm, scatter_out, [&](int64_t j) { return rank_sum * double(rank * block + j + 1); }, "reduce_scatter",
                rank);

  // all_gather: rank r contributes r * 10 + j.
  std::vector<double> mine(4);
  for (size_t j = 0; j < mine.size(); ++j) mine[j] = rank * 10.0 + double(j);
  Tensor gather_in = Tensor::from_vector(mine, {4}, DType::F32, gpu);
  Tensor gather_out = Tensor::zeros({world, 4}, DType::F32, gpu);
  comm.all_gather(gather_out, gather_in);
  expect_values(comm, gather_out, [](int64_t i) { return (i / 4) * 10.0 + double(i % 4); }, "all_gather", rank);

  const int root = world - 1;
  Tensor cast = Tensor::full({16}, rank == root ? 7 : -1, DType::I32, gpu);
  comm.broadcast(cast, root);
  expect_values(comm, cast, [](int64_t) { return 7.0; }, "broadcast", rank);

  Tensor first = Tensor::full({8}, 1, DType::F32, gpu), second = Tensor::full({8}, rank, DType::F32, gpu);
  {
    dist::CommGroup group(comm);
    comm.all_reduce(first);
    comm.all_reduce(second);
  }
  expect_values(comm, first, [&](int64_t) { return double(world); }, "grouped all_reduce", rank);
  expect_values(comm, second, [&](int64_t) { return rank_sum - world; }, "grouped all_reduce", rank);

  comm.barrier();
  comm.synchronize();
  return fmt::format("NCCL all_reduce (f32, bf16 sum; f16 avg), reduce_scatter, all_gather, broadcast, a group and "
                     "the barrier checked on {} ({})",
                     gpu.str(), device_name(gpu));
}

void run_dist_check(const DistCheckOptions& o) {
  dist::DistEnv env = dist::detect_dist_env();
  if (o.timeout_seconds > 0) env.timeout_seconds = o.timeout_seconds;
  log::set_rank(env.rank, env.world_size);
  const double timeout = env.timeout_seconds;
  std::shared_ptr<dist::ControlChannel> control = dist::ControlChannel::connect(env, timeout);

  REHYAT_CHECK(o.drill_at == "rendezvous" || o.drill_at == "nccl",
               "dist-check: --drill-at must be rendezvous or nccl, got '{}'", o.drill_at);
  if (o.drill_at == "rendezvous") run_drill(o, env.rank);

  try {
    std::string id(128, '\0');
    if (env.rank == 0) {
      std::random_device random;
      for (char& c : id) c = char(random());
    }
    id = control->broadcast("dist-check unique id", id, timeout);
    const std::vector<std::string> digests =
        control->all_gather("dist-check id digest", fmt::format("{:016x}", fnv1a(id)), timeout);
    for (size_t r = 0; r < digests.size(); ++r)
      REHYAT_CHECK(digests[r] == digests[0], "rank {}: dist-check: rank {} received a different id than rank 0",
                   env.rank, r);

    // NCCL only when every rank can (else the ranks would wait in different places).
    std::string no_nccl_reason;
    if (o.no_nccl) {
      no_nccl_reason = "--no-nccl";
    } else if (!dist::built_with_nccl()) {
      no_nccl_reason = "this rehyat was built without NCCL";
    } else if (cuda_device_count() == 0) {
      no_nccl_reason = "no GPU visible";
    }
    const std::vector<std::string> reasons = control->all_gather("dist-check nccl", no_nccl_reason, timeout);
    std::vector<int> with, without;
    for (size_t r = 0; r < reasons.size(); ++r) (reasons[r].empty() ? with : without).push_back(int(r));
    REHYAT_CHECK(with.empty() || without.empty(),
                 "rank {}: dist-check: ranks {} can use NCCL but ranks {} cannot (rank {}: {})", env.rank,
                 fmt::join(with, ", "), fmt::join(without, ", "), without.empty() ? 0 : without[0],
                 without.empty() ? "" : reasons[size_t(without[0])]);
    REHYAT_CHECK(o.drill_at != "nccl" || (o.die_rank < 0 && o.hang_rank < 0) || without.empty(),
                 "rank {}: dist-check: --drill-at nccl needs NCCL on every rank, but rank {} has none ({})", env.rank,
                 without.empty() ? 0 : without[0], without.empty() ? "" : reasons[size_t(without[0])]);
    std::string checked;
    if (!without.empty()) checked = fmt::format("rendezvous and barrier only ({})", reasons[size_t(without[0])]);
    if (with.size() == reasons.size()) {
      std::unique_ptr<dist::Communicator> comm =
          dist::Communicator::create(control, dist::local_device(env), timeout);
      if (o.drill_at == "nccl") run_drill(o, env.rank);
      checked = check_collectives(*comm);
    }
    control->barrier("dist-check done", timeout);
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    fmt::print("rank {}/{}: ok ({}, local rank {}, host {}, CUDA_VISIBLE_DEVICES={}; {})\n", env.rank, env.world_size,
               env.source, env.local_rank, host, visible ? visible : "(unset)", checked);
    std::fflush(stdout);
    control->finish();
  } catch (const std::exception& e) {
    control->report_failure(e.what());
    throw;
  }
}

}  // namespace

void add_dist_check_command(CLI::App& app) {
  auto o = std::make_shared<DistCheckOptions>();
  CLI::App* cmd = app.add_subcommand(
      "dist-check", "Diagnostic: rendezvous, barrier and (with NCCL and a GPU) every collective across the ranks");
  cmd->add_option("--timeout", o->timeout_seconds, "Seconds before giving up (default: REHYAT_DIST_TIMEOUT or 300)");
  cmd->add_option("--die-rank", o->die_rank, "Drill: this rank exits with status 1 after the rendezvous");
  cmd->add_flag("--die-signal", o->die_signal, "Drill: the --die-rank rank SIGKILLs itself instead");
  cmd->add_option("--hang-rank", o->hang_rank, "Drill: this rank sleeps until killed");
  cmd->add_option("--drill-at", o->drill_at, "Where the drill happens: rendezvous or nccl (inside the collectives)")
      ->capture_default_str();
  cmd->add_flag("--no-nccl", o->no_nccl, "Skip the NCCL communicator even with NCCL and a GPU");
  cmd->callback([o] { run_dist_check(*o); });
}

}  // namespace rehyat::tools
