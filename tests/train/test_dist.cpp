// Multi-process plumbing on the CPU (issue 7): environment detection (every source, every
// error), Slurm nodelists, the file and TCP rendezvous with ranks as threads or forked
// processes (timeouts, dead and hung peers named), the collective watchdog with fake
// collectives, and the one-rank communicator.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <thread>

#include "core/tensor.h"
#include "temp_dir.h"
#include "train/dist_comm.h"
#include "train/dist_env.h"
#include "train/dist_rendezvous.h"
#include "train/dist_watchdog.h"

namespace rehyat {
namespace {

using namespace std::chrono_literals;
using dist::CollectiveWatchdog;
using dist::ControlChannel;
using dist::DistEnv;
using testing::error_message;
using testing::expect_contains;
using Clock = std::chrono::steady_clock;

dist::EnvLookup lookup_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// --- environment -------------------------------------------------------------------------

TEST(DistEnv, NoVariablesIsOneProcess) {
  const DistEnv env = dist::detect_dist_env(lookup_of({}));
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.source, "none");
  EXPECT_EQ(env.master_port, dist::kDefaultMasterPort);
  EXPECT_EQ(env.timeout_seconds, dist::kDefaultTimeoutSeconds);
  EXPECT_FALSE(env.distributed());
}

TEST(DistEnv, TorchrunVariables) {
  const DistEnv env = dist::detect_dist_env(lookup_of({{"RANK", "2"},
                                                       {"WORLD_SIZE", "4"},
                                                       {"LOCAL_RANK", "0"},
                                                       {"MASTER_ADDR", "node7"},
                                                       {"MASTER_PORT", "1234"},
                                                       {"REHYAT_DIST_TIMEOUT", "12.5"}}));
  EXPECT_EQ(env.source, "env");
  EXPECT_EQ(env.rank, 2);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.master_addr, "node7");
  EXPECT_EQ(env.master_port, 1234);
  EXPECT_EQ(env.timeout_seconds, 12.5);
  EXPECT_TRUE(env.distributed());
  expect_contains(env.str(), {"rank 2/4", "local 0", "env", "tcp://node7:1234", "12.5 s"});
}

TEST(DistEnv, LocalRankDefaults) {
  DistEnv env = dist::detect_dist_env(
      lookup_of({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "a"}}));
  EXPECT_EQ(env.local_rank, 1);
  env = dist::detect_dist_env(lookup_of({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"MASTER_ADDR", "a"}}));
  EXPECT_EQ(env.local_rank, 5);  // one node assumed
}

TEST(DistEnv, OpenMpi) {
  const DistEnv env = dist::detect_dist_env(lookup_of({{"OMPI_COMM_WORLD_RANK", "3"},
                                                       {"OMPI_COMM_WORLD_SIZE", "4"},
                                                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                       {"MASTER_ADDR", "10.0.0.1"}}));
  EXPECT_EQ(env.source, "openmpi");
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "10.0.0.1");
}

TEST(DistEnv, PmiMpich) {
  const DistEnv env = dist::detect_dist_env(lookup_of(
      {{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"MPI_LOCALRANKID", "1"}, {"REHYAT_RENDEZVOUS_FILE", "/shared/x"}}));
  EXPECT_EQ(env.source, "pmi");
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "");
  EXPECT_EQ(env.rendezvous_file, "/shared/x");
  expect_contains(env.str(), {"file /shared/x"});
}

TEST(DistEnv, Slurm) {
  std::map<std::string, std::string> vars = {{"SLURM_PROCID", "5"},
                                             {"SLURM_NTASKS", "16"},
                                             {"SLURM_STEP_NUM_TASKS", "8"},
                                             {"SLURM_LOCALID", "1"},
                                             {"SLURM_STEP_NODELIST", "gpu[01-04,07],cpu5"},
                                             {"SLURM_NODELIST", "other[1-9]"},
                                             {"SLURM_LAUNCH_NODE_IPADDR", "10.1.2.3"}};
  DistEnv env = dist::detect_dist_env(lookup_of(vars));
  EXPECT_EQ(env.source, "slurm");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);  // the step's tasks win over the allocation's
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "gpu01");  // task 0's node
  vars.erase("SLURM_STEP_NODELIST");
  EXPECT_EQ(dist::detect_dist_env(lookup_of(vars)).master_addr, "other1");
  vars.erase("SLURM_NODELIST");
  EXPECT_EQ(dist::detect_dist_env(lookup_of(vars)).master_addr, "10.1.2.3");
  vars["MASTER_ADDR"] = "chosen";
  EXPECT_EQ(dist::detect_dist_env(lookup_of(vars)).master_addr, "chosen");
  vars.erase("SLURM_STEP_NUM_TASKS");
  EXPECT_EQ(dist::detect_dist_env(lookup_of(vars)).world_size, 16);
}

TEST(DistEnv, SourcePrecedence) {
  std::map<std::string, std::string> vars = {{"RANK", "1"},          {"WORLD_SIZE", "2"},
                                             {"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "3"},
                                             {"PMI_RANK", "3"},      {"PMI_SIZE", "4"},
                                             {"SLURM_PROCID", "4"},  {"SLURM_NTASKS", "5"},
                                             {"MASTER_ADDR", "m"}};
  const std::vector<std::pair<std::string, std::vector<std::string>>> order = {
      {"env", {"RANK", "WORLD_SIZE"}},
      {"openmpi", {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}},
      {"pmi", {"PMI_RANK", "PMI_SIZE"}},
      {"slurm", {"SLURM_PROCID", "SLURM_NTASKS"}}};
  for (const auto& [source, names] : order) {
    const DistEnv env = dist::detect_dist_env(lookup_of(vars));
    EXPECT_EQ(env.source, source);
    EXPECT_EQ(env.rank, std::stoi(vars[names[0]]));
    for (const std::string& n : names) vars.erase(n);
  }
  EXPECT_EQ(dist::detect_dist_env(lookup_of(vars)).source, "none");
}

TEST(DistEnv, EmptyValuesCountAsUnset) {
  const DistEnv env =
      dist::detect_dist_env(lookup_of({{"RANK", ""}, {"WORLD_SIZE", ""}, {"MASTER_PORT", ""}, {"MASTER_ADDR", ""}}));
  EXPECT_EQ(env.source, "none");
  EXPECT_EQ(env.master_port, dist::kDefaultMasterPort);
}

TEST(DistEnv, ErrorsNameTheVariable) {
  auto error = [](std::map<std::string, std::string> vars) {
    return error_message([&] { dist::detect_dist_env(lookup_of(vars)); });
  };
  expect_contains(error({{"RANK", "abc"}, {"WORLD_SIZE", "2"}}), {"RANK='abc'", "not an integer"});
  expect_contains(error({{"RANK", "1"}, {"WORLD_SIZE", "2x"}}), {"WORLD_SIZE='2x'"});
  expect_contains(error({{"RANK", "4"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "a"}}), {"RANK=4", "outside [0, 4)"});
  expect_contains(error({{"RANK", "-1"}, {"WORLD_SIZE", "4"}}), {"RANK=-1"});
  expect_contains(error({{"RANK", "1"}}), {"RANK", "WORLD_SIZE is not"});
  expect_contains(error({{"RANK", "0"}, {"WORLD_SIZE", "0"}}), {"WORLD_SIZE=0"});
  expect_contains(error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "-1"}, {"MASTER_ADDR", "a"}}),
                  {"LOCAL_RANK=-1"});
  expect_contains(error({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                         {"OMPI_COMM_WORLD_LOCAL_RANK", "x"}}),
                  {"OMPI_COMM_WORLD_LOCAL_RANK='x'"});
  expect_contains(error({{"PMI_RANK", "0"}}), {"PMI_RANK", "PMI_SIZE"});
  expect_contains(error({{"SLURM_PROCID", "0"}}), {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS / SLURM_NTASKS"});
  expect_contains(error({{"MASTER_PORT", "70000"}}), {"MASTER_PORT=70000", "1..65535"});
  expect_contains(error({{"MASTER_PORT", "http"}}), {"MASTER_PORT='http'"});
  expect_contains(error({{"REHYAT_DIST_TIMEOUT", "0"}}), {"REHYAT_DIST_TIMEOUT='0'"});
  expect_contains(error({{"REHYAT_DIST_TIMEOUT", "soon"}}), {"REHYAT_DIST_TIMEOUT='soon'"});
  expect_contains(error({{"RANK", "1"}, {"WORLD_SIZE", "2"}}), {"MASTER_ADDR", "REHYAT_RENDEZVOUS_FILE"});
  expect_contains(error({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_NODELIST", "gpu[01-"}}),
                  {"SLURM_STEP_NODELIST='gpu[01-'"});
  EXPECT_NO_THROW(dist::detect_dist_env(lookup_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"REHYAT_RENDEZVOUS_FILE", "/f"}})));
}

TEST(DistEnv, ReadsTheProcessEnvironment) {
  const std::vector<std::string> names = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"};
  std::map<std::string, std::optional<std::string>> saved;
  for (const std::string& n : names) {
    const char* v = std::getenv(n.c_str());
    saved[n] = v ? std::optional<std::string>(v) : std::nullopt;
  }
  ::setenv("RANK", "1", 1);
  ::setenv("WORLD_SIZE", "3", 1);
  ::setenv("LOCAL_RANK", "1", 1);
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  ::setenv("MASTER_PORT", "4321", 1);
  const DistEnv env = dist::detect_dist_env();
  ::setenv("RANK", "9", 1);
  const std::string bad = error_message([] { dist::detect_dist_env(); });
  for (const auto& [n, v] : saved) {
    if (v)
      ::setenv(n.c_str(), v->c_str(), 1);
    else
      ::unsetenv(n.c_str());
  }
  EXPECT_EQ(env.source, "env");
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 3);
  EXPECT_EQ(env.master_port, 4321);
  expect_contains(bad, {"RANK=9"});
}

TEST(SlurmNodelist, Forms) {
  using V = std::vector<std::string>;
  EXPECT_EQ(dist::expand_slurm_nodelist("node1"), V({"node1"}));
  EXPECT_EQ(dist::expand_slurm_nodelist("gpu[01-04,07],cpu5"), V({"gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu5"}));
  EXPECT_EQ(dist::expand_slurm_nodelist("a[8-10]"), V({"a8", "a9", "a10"}));
  EXPECT_EQ(dist::expand_slurm_nodelist("x[001-002]-ib,y"), V({"x001-ib", "x002-ib", "y"}));
  EXPECT_EQ(dist::expand_slurm_nodelist("r[1-2]n[1-2]"), V({"r1n1", "r1n2", "r2n1", "r2n2"}));
  EXPECT_EQ(dist::expand_slurm_nodelist("a,,b"), V({"a", "b"}));
  for (const std::string bad : {"gpu[01-", "gpu]", "gpu[3-1]", "gpu[a]", "gpu[]", "g[1-2"}) {
    expect_contains(error_message([&] { dist::expand_slurm_nodelist(bad, "SLURM_NODELIST"); }),
                    {"SLURM_NODELIST='" + bad + "'"});
  }
}

// --- rendezvous ----------------------------------------------------------------------------

DistEnv tcp_env(int rank, int world, int port) {
  DistEnv env;
  env.rank = rank;
  env.world_size = world;
  env.local_rank = rank;
  env.master_addr = "127.0.0.1";
  env.master_port = port;
  env.source = "env";
  return env;
}

// Runs body(rank) for every rank on its own thread; returns each one's error ("" = none).
std::vector<std::string> run_ranks(int world, const std::function<void(int)>& body) {
  std::vector<std::future<std::string>> futures;
  for (int r = 0; r < world; ++r)
    futures.push_back(std::async(std::launch::async, [&body, r]() -> std::string {
      try {
        body(r);
        return "";
      } catch (const std::exception& e) {
        return e.what();
      }
    }));
  std::vector<std::string> errors;
  for (auto& f : futures) errors.push_back(f.get());
  return errors;
}

TEST(Rendezvous, FilePublishAndWait) {
  testing::TempDir dir;
  const std::string path = dir.file("sub/rendezvous");
  std::thread writer([&] {
    std::this_thread::sleep_for(100ms);
    dist::publish_rendezvous_file(path, "not yet");
    std::this_thread::sleep_for(100ms);
    dist::publish_rendezvous_file(path, "ready 42");
  });
  const std::string text =
      dist::wait_for_rendezvous_file(path, 10, 1, [](const std::string& t) { return t.starts_with("ready"); });
  writer.join();
  EXPECT_EQ(text, "ready 42");
  EXPECT_EQ(dir.entry_count(), 1u);  // no temp files left
}

TEST(Rendezvous, FileTimeoutNamesPathAndTimeout) {
  testing::TempDir dir;
  const auto start = Clock::now();
  const std::string message = error_message([&] { dist::wait_for_rendezvous_file(dir.file("never"), 0.3, 2); });
  EXPECT_LT(seconds_since(start), 3);
  expect_contains(message, {"rank 2", dir.file("never"), "0.3 s", "rank 0 writes it"});
}

TEST(ControlChannel, WorldOneNeedsNobody) {
  std::unique_ptr<ControlChannel> c = ControlChannel::connect(DistEnv{}, 1);
  EXPECT_EQ(c->all_gather("x", "mine", 1), std::vector<std::string>({"mine"}));
  EXPECT_EQ(c->broadcast("y", "id", 1), "id");
  c->barrier("z", 1);
  EXPECT_TRUE(c->absent_ranks("w", 1).empty());
  EXPECT_FALSE(c->peer_loss());
  c->finish();
}

TEST(ControlChannel, TcpRendezvousBroadcastGatherBarrier) {
  const int port = dist::free_tcp_port();
  std::string id(128, '\0');
  for (size_t i = 0; i < id.size(); ++i) id[i] = char(i * 37 + 11);  // opaque bytes, zeros included
  id[5] = '\0';
  std::vector<std::string> got(3), gathered_ok(3);
  const std::vector<std::string> errors = run_ranks(3, [&](int rank) {
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(rank, 3, port), 10);
    EXPECT_EQ(c->rank(), rank);
    EXPECT_EQ(c->world_size(), 3);
    got[size_t(rank)] = c->broadcast("unique id", rank == 0 ? id : "ignored", 10);
    for (int round = 0; round < 3; ++round) {  // the same tag again: rounds must not mix
      const std::vector<std::string> all = c->all_gather("names", fmt::format("r{}-{}", rank, round), 10);
      EXPECT_EQ(all, std::vector<std::string>({fmt::format("r0-{}", round), fmt::format("r1-{}", round),
                                               fmt::format("r2-{}", round)}));
    }
    EXPECT_EQ(c->broadcast("from 2", rank == 2 ? "two" : "", 10, 2), "two");
    c->barrier("end", 10);
    EXPECT_TRUE(c->absent_ranks("report", 10).empty());
    c->finish();
  });
  EXPECT_EQ(errors, std::vector<std::string>(3, ""));
  for (const std::string& g : got) EXPECT_EQ(g, id);
}

TEST(ControlChannel, FileRendezvous) {
  testing::TempDir dir;
  const std::string path = dir.file("rendezvous");
  const std::vector<std::string> errors = run_ranks(3, [&](int rank) {
    DistEnv env = tcp_env(rank, 3, 0);
    env.master_addr = rank == 0 ? "127.0.0.1" : "";  // others learn it from the file
    env.rendezvous_file = path;
    if (rank == 0) std::this_thread::sleep_for(200ms);  // the others poll for the file first
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(env, 10);
    EXPECT_EQ(c->broadcast("id", rank == 0 ? "file id" : "", 10), "file id");
    c->finish();
  });
  EXPECT_EQ(errors, std::vector<std::string>(3, ""));
  EXPECT_FALSE(std::filesystem::exists(path));  // rank 0 removed its file
}

TEST(ControlChannel, RankZeroNeverComes) {
  const int port = dist::free_tcp_port();
  const auto start = Clock::now();
  const std::string message = error_message([&] { ControlChannel::connect(tcp_env(1, 2, port), 0.5); });
  EXPECT_LT(seconds_since(start), 3);
  expect_contains(message, {"rank 1", fmt::format("127.0.0.1:{}", port), "0.5 s", "MASTER_ADDR"});
}

TEST(ControlChannel, RendezvousFileNeverAppears) {
  testing::TempDir dir;
  DistEnv env = tcp_env(1, 2, 0);
  env.master_addr = "";
  env.rendezvous_file = dir.file("never");
  expect_contains(error_message([&] { ControlChannel::connect(env, 0.3); }), {"rank 1", dir.file("never"), "0.3 s"});
}

TEST(ControlChannel, RankZeroNamesTheRanksThatNeverConnected) {
  const int port = dist::free_tcp_port();
  const std::vector<std::string> errors = run_ranks(2, [&](int rank) {
    ControlChannel::connect(tcp_env(rank, 3, port), rank == 0 ? 0.8 : 5);  // rank 2 never starts
  });
  expect_contains(errors[0], {"rank 0", "rank 2 did not connect within 0.8 s"});
  expect_contains(errors[1], {"rank 1", "refused", "rank 2 did not connect"});
}

TEST(ControlChannel, WrongWorldSizeIsRefused) {
  const int port = dist::free_tcp_port();
  const std::vector<std::string> errors = run_ranks(2, [&](int rank) {
    ControlChannel::connect(tcp_env(rank, rank == 0 ? 2 : 3, port), rank == 0 ? 0.8 : 5);
  });
  expect_contains(errors[0], {"rank 1 did not connect"});
  expect_contains(errors[1], {"refused", "world of 2 ranks", "expects 3"});
}

TEST(ControlChannel, DeadPeerIsNamedAtOnce) {
  const int port = dist::free_tcp_port();
  const auto start = Clock::now();
  const std::vector<std::string> errors = run_ranks(3, [&](int rank) {
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(rank, 3, port), 10);
    if (rank == 2) return;  // destroyed without finish(): looks like a process that died
    c->barrier("step", 30);
  });
  EXPECT_LT(seconds_since(start), 5);  // not the 30 s timeout
  EXPECT_EQ(errors[2], "");
  for (int r : {0, 1}) expect_contains(errors[size_t(r)], {fmt::format("rank {}", r), "step", "rank 2 went away"});
}

TEST(ControlChannel, KilledProcessIsNamed) {
  const int port = dist::free_tcp_port();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // rank 1: joins, then dies without a word
    try {
      std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(1, 2, port), 10);
      ::raise(SIGKILL);
    } catch (...) {
    }
    ::_exit(3);
  }
  std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(0, 2, port), 10);
  const auto start = Clock::now();
  const std::string message = error_message([&] { c->barrier("after the kill", 30); });
  EXPECT_LT(seconds_since(start), 5);
  expect_contains(message, {"rank 0", "rank 1 went away", "exited or was killed"});
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  ASSERT_TRUE(c->peer_loss());
  EXPECT_EQ(c->peer_loss()->rank, 1);
}

TEST(ControlChannel, RankZeroDeathIsNamed) {
  const int port = dist::free_tcp_port();
  const std::vector<std::string> errors = run_ranks(2, [&](int rank) {
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(rank, 2, port), 10);
    if (rank == 0) return;
    c->barrier("wait for 0", 30);
  });
  expect_contains(errors[1], {"rank 1", "rank 0 went away"});
}

TEST(ControlChannel, HungPeerIsNamedAfterTheTimeout) {
  const int port = dist::free_tcp_port();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> waiting{0};
  const auto start = Clock::now();
  const std::vector<std::string> errors = run_ranks(3, [&](int rank) {
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(rank, 3, port), 10);
    if (rank == 2) {  // alive and connected, but never arrives
      released.wait();
      c->finish();
      return;
    }
    try {
      c->barrier("hung step", 0.5);
    } catch (...) {
      if (++waiting == 2) release.set_value();
      throw;
    }
  });
  EXPECT_LT(seconds_since(start), 5);
  for (int r : {0, 1})
    expect_contains(errors[size_t(r)], {fmt::format("rank {}", r), "hung step", "within 0.5 s", "rank 2 did not arrive"});
  EXPECT_EQ(errors[2], "");
}

TEST(ControlChannel, FailureReasonIsRelayed) {
  const int port = dist::free_tcp_port();
  const std::vector<std::string> errors = run_ranks(3, [&](int rank) {
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(rank, 3, port), 10);
    if (rank == 1) {
      c->report_failure("disk full");
      return;
    }
    c->barrier("save", 30);
  });
  for (int r : {0, 2}) expect_contains(errors[size_t(r)], {"rank 1 went away: it failed: disk full"});
  if (::testing::Test::HasFailure()) ADD_FAILURE() << errors[0] << "\n" << errors[1] << "\n" << errors[2];
}

TEST(ControlChannel, FinishedPeerIsNotLostButCannotTakePart) {
  const int port = dist::free_tcp_port();
  std::promise<void> finished;
  std::shared_future<void> done = finished.get_future().share();
  const std::vector<std::string> errors = run_ranks(2, [&](int rank) {
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(rank, 2, port), 10);
    c->barrier("last", 10);
    if (rank == 1) {
      c->finish();
      finished.set_value();
      return;
    }
    done.wait();
    const auto until = Clock::now() + 5s;
    while (!c->peer_loss() && Clock::now() < until) std::this_thread::sleep_for(10ms);
    ASSERT_TRUE(c->peer_loss());
    EXPECT_TRUE(c->peer_loss()->finished);
    c->barrier("one more", 10);
  });
  expect_contains(errors[0], {"one more", "rank 1 has already finished"});
  EXPECT_EQ(errors[1], "");
}

TEST(ControlChannel, AbsentRanksReportsInsteadOfThrowing) {
  const int port = dist::free_tcp_port();
  std::vector<std::vector<int>> absent(3);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> reported{0};
  run_ranks(3, [&](int rank) {
    std::unique_ptr<ControlChannel> c = ControlChannel::connect(tcp_env(rank, 3, port), 10);
    if (rank == 1) {
      released.wait();
      c->finish();
      return;
    }
    absent[size_t(rank)] = c->absent_ranks("timeout report", 0.4);
    if (++reported == 2) release.set_value();
  });
  EXPECT_EQ(absent[0], std::vector<int>({1}));
  EXPECT_EQ(absent[2], std::vector<int>({1}));
}

// --- watchdog -----------------------------------------------------------------------------

struct FakeBackend {
  std::atomic<int> aborts{0};
  std::string error;
  std::optional<dist::PeerLoss> loss;
  std::string stragglers = "rank 2 did not report this timeout";
  std::mutex mutex;

  CollectiveWatchdog::Hooks hooks() {
    CollectiveWatchdog::Hooks h;
    h.async_error = [this] {
      std::lock_guard<std::mutex> lock(mutex);
      return error;
    };
    h.peer_loss = [this] {
      std::lock_guard<std::mutex> lock(mutex);
      return loss;
    };
    h.abort = [this] { ++aborts; };
    h.stragglers = [this] { return stragglers; };
    return h;
  }
};

CollectiveWatchdog::Options watchdog_options(double timeout, bool thread = false) {
  CollectiveWatchdog::Options o;
  o.timeout_seconds = timeout;
  o.thread = thread;
  o.poll_seconds = 0.01;
  o.exit_grace_seconds = -1;
  o.backend = "fake communicator";
  return o;
}

TEST(Watchdog, WaitsForCollectivesToFinish) {
  FakeBackend backend;
  CollectiveWatchdog w(0, watchdog_options(10), backend.hooks());
  std::atomic<bool> done{false};
  w.check_start("all_reduce of f32[4] (#1)");
  w.track("all_reduce of f32[4] (#1)", [&] { return done.load(); });
  EXPECT_EQ(w.in_flight(), 1u);
  std::thread finisher([&] {
    std::this_thread::sleep_for(50ms);
    done = true;
  });
  w.wait_all();
  finisher.join();
  EXPECT_EQ(w.in_flight(), 0u);
  EXPECT_FALSE(w.failed());
  EXPECT_EQ(backend.aborts.load(), 0);
}

TEST(Watchdog, TimeoutAbortsAndNamesTheCollective) {
  FakeBackend backend;
  CollectiveWatchdog w(1, watchdog_options(0.2), backend.hooks());
  w.track("all_reduce of bf16[4096] (#17)", [] { return false; });
  const auto start = Clock::now();
  const std::string message = error_message([&] { w.wait_all(); });
  EXPECT_LT(seconds_since(start), 3);
  expect_contains(message, {"rank 1: all_reduce of bf16[4096] (#17) did not finish within 0.2 s",
                            "another rank died or hung", "rank 2 did not report this timeout",
                            "aborted the fake communicator"});
  EXPECT_EQ(backend.aborts.load(), 1);
  // The communicator stays failed: every later call throws the same message, no second abort.
  EXPECT_EQ(error_message([&] { w.check(); }), message);
  EXPECT_EQ(error_message([&] { w.check_start("broadcast (#18)"); }), message);
  EXPECT_EQ(error_message([&] { w.wait_until("x", [] { return true; }); }), message);
  EXPECT_EQ(backend.aborts.load(), 1);
}

TEST(Watchdog, LostPeerFailsAtOnce) {
  FakeBackend backend;
  CollectiveWatchdog w(0, watchdog_options(60), backend.hooks());
  w.track("reduce_scatter of f32[8] (#2)", [] { return false; });
  std::thread killer([&] {
    std::this_thread::sleep_for(50ms);
    std::lock_guard<std::mutex> lock(backend.mutex);
    backend.loss = dist::PeerLoss{2, "its connection closed without a goodbye", false};
  });
  const auto start = Clock::now();
  const std::string message = error_message([&] { w.wait_all(); });
  killer.join();
  EXPECT_LT(seconds_since(start), 5);
  expect_contains(message, {"rank 0: reduce_scatter of f32[8] (#2) cannot finish: rank 2 went away",
                            "aborted the fake communicator"});
  EXPECT_EQ(message.find("did not report"), std::string::npos);  // stragglers only for timeouts
  EXPECT_EQ(backend.aborts.load(), 1);
}

TEST(Watchdog, FinishedPeerOnlyStopsNewCollectives) {
  FakeBackend backend;
  backend.loss = dist::PeerLoss{1, "it finished", true};
  CollectiveWatchdog w(0, watchdog_options(60), backend.hooks());
  std::atomic<bool> done{false};
  w.track("all_gather (#3)", [&] { return done.load(); });
  w.check();  // in flight: not fatal (it may just not have been seen finishing yet)
  done = true;
  w.wait_all();
  expect_contains(error_message([&] { w.check_start("all_gather (#4)"); }),
                  {"all_gather (#4) cannot start", "rank 1 has already finished"});
}

TEST(Watchdog, AsyncErrorFails) {
  FakeBackend backend;
  backend.error = "remote process exited or there was a network error";
  CollectiveWatchdog w(3, watchdog_options(60), backend.hooks());
  w.track("broadcast of i32[16] (#5)", [] { return false; });
  expect_contains(error_message([&] { w.check(); }),
                  {"rank 3: broadcast of i32[16] (#5) failed", "remote process exited", "aborted"});
}

TEST(Watchdog, WaitUntilHasTheSameTimeout) {
  FakeBackend backend;
  CollectiveWatchdog w(0, watchdog_options(0.2), backend.hooks());
  int polls = 0;
  w.wait_until("NCCL communicator init", [&] { return ++polls >= 3; });
  EXPECT_EQ(polls, 3);
  expect_contains(error_message([&] { w.wait_until("NCCL communicator init", [] { return false; }); }),
                  {"rank 0: NCCL communicator init did not finish within 0.2 s"});
}

TEST(Watchdog, ThreadFindsTheFailureWhileTheCallerIsBusy) {
  FakeBackend backend;
  CollectiveWatchdog w(0, watchdog_options(0.1, true), backend.hooks());
  w.track("all_reduce (#9)", [] { return false; });
  const auto until = Clock::now() + 5s;
  while (!w.failed() && Clock::now() < until) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(w.failed());
  EXPECT_EQ(backend.aborts.load(), 1);  // aborted without any call: streams drain
  expect_contains(error_message([&] { w.check(); }), {"all_reduce (#9) did not finish within 0.1 s"});
}

TEST(Watchdog, FailureNobodyPicksUpEndsTheProcess) {
  int err[2];
  ASSERT_EQ(::pipe(err), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(err[1], 2);
    FakeBackend backend;
    CollectiveWatchdog::Options o = watchdog_options(0.1, true);
    o.exit_grace_seconds = 0.2;
    CollectiveWatchdog w(4, o, backend.hooks());
    w.track("all_reduce (#1)", [] { return false; });
    std::this_thread::sleep_for(10s);  // "stuck" elsewhere
    ::_exit(0);
  }
  ::close(err[1]);
  const auto start = Clock::now();
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_LT(seconds_since(start), 5);
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = ::read(err[0], buffer, sizeof buffer)) > 0;) text.append(buffer, size_t(n));
  ::close(err[0]);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  expect_contains(text, {"rank 4: all_reduce (#1) did not finish within 0.1 s", "watchdog ends the process"});
}

// --- the one-rank communicator ------------------------------------------------------------

TEST(Communicator, OneRankIsTheIdentity) {
  std::unique_ptr<dist::Communicator> comm = dist::Communicator::create(DistEnv{}, Device::cpu());
  EXPECT_STREQ(comm->backend(), "local");
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world_size(), 1);

  Tensor t = Tensor::from_vector({1, 2, 3}, {3}, DType::F32);
  comm->all_reduce(t);
  EXPECT_EQ(t.to_vector(), std::vector<double>({1, 2, 3}));
  comm->all_reduce(t, dist::ReduceOp::Avg);
  EXPECT_EQ(t.to_vector(), std::vector<double>({1, 2, 3}));
  Tensor b = Tensor::from_vector({1.5, -2}, {2}, DType::BF16);
  comm->all_reduce_async(b).wait();
  EXPECT_EQ(b.to_vector(), std::vector<double>({1.5, -2}));

  Tensor gathered = Tensor::zeros({1, 3}, DType::F32);
  comm->all_gather(gathered, t);
  EXPECT_EQ(gathered.to_vector(), std::vector<double>({1, 2, 3}));
  Tensor scattered = Tensor::zeros({3}, DType::F32);
  comm->reduce_scatter(scattered, gathered);
  EXPECT_EQ(scattered.to_vector(), std::vector<double>({1, 2, 3}));
  comm->all_gather(t, t);  // in place
  Tensor h = Tensor::from_vector({4, 5}, {2}, DType::F16);
  comm->broadcast(h, 0);
  EXPECT_EQ(h.to_vector(), std::vector<double>({4, 5}));
  {
    dist::CommGroup group(*comm);
    comm->all_reduce(t);
    comm->all_reduce(h);
  }
  comm->group_start();
  comm->all_reduce(t);
  comm->group_end().wait();
  comm->barrier();
  comm->synchronize();
  comm->check();
}

TEST(Communicator, ChecksItsArguments) {
  std::unique_ptr<dist::Communicator> comm = dist::Communicator::create(DistEnv{}, Device::cpu());
  Tensor t = Tensor::zeros({2, 3}, DType::F32);
  Tensor wrong_size = Tensor::zeros({4}, DType::F32);
  Tensor ints = Tensor::zeros({3}, DType::I32);
  expect_contains(error_message([&] { comm->all_gather(wrong_size, t); }), {"all_gather", "world size (1)"});
  expect_contains(error_message([&] { comm->reduce_scatter(wrong_size, t); }), {"reduce_scatter"});
  expect_contains(error_message([&] { comm->all_gather(ints, Tensor::zeros({3}, DType::F32)); }), {"dtype"});
  expect_contains(error_message([&] { comm->all_reduce(ints, dist::ReduceOp::Avg); }), {"avg", "i32"});
  Tensor strided = t.transpose(0, 1);
  expect_contains(error_message([&] { comm->all_reduce(strided); }), {"contiguous"});
  expect_contains(error_message([&] { comm->broadcast(t, 1); }), {"root 1"});
  comm->all_reduce(ints);  // sum of integers is fine
  comm->group_start();
  expect_contains(error_message([&] { comm->group_start(); }), {"do not nest"});
  comm->group_end();
  expect_contains(error_message([&] { comm->group_end(); }), {"without group_start"});
}

#ifndef REHYAT_NCCL
TEST(Communicator, MoreRanksNeedNccl) {
  DistEnv env = tcp_env(0, 2, dist::free_tcp_port());
  const auto start = Clock::now();
  expect_contains(error_message([&] { dist::Communicator::create(env, Device::cpu()); }),
                  {"rank 0 of 2", "built without NCCL"});
  EXPECT_LT(seconds_since(start), 1);  // before any rendezvous
  EXPECT_FALSE(dist::built_with_nccl());
}
#endif

}  // namespace
}  // namespace rehyat
