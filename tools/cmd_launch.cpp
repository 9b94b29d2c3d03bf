// `rehyat launch --gpus N [--master-port P] [--grace S] -- <rehyat args...>`: runs N copies
// of this rehyat binary on one node, one per GPU, as ranks 0..N-1 of one run (issue 7).
//
// Each child gets RANK, WORLD_SIZE=N, LOCAL_RANK, LOCAL_WORLD_SIZE=N, MASTER_ADDR=127.0.0.1,
// MASTER_PORT (--master-port, else a port that was free a moment ago) and
// CUDA_VISIBLE_DEVICES=<local rank> -- or the local-rank-th entry of the launcher's own
// CUDA_VISIBLE_DEVICES when that is set (it must list at least N devices). The rest of the
// environment is inherited; stdin is /dev/null.
//
// Output: every line a child writes is written by the launcher with a "[rank R] " prefix,
// stdout to stdout and stderr to stderr (no log files: redirect the launcher's output, or
// use the command's own logs). The launcher's own lines start with "rehyat launch:"; the
// first one lists the children's pids.
//
// Ends: exit status 0 when every rank exited 0. When a rank exits non-zero or dies by a
// signal, the launcher says which, sends SIGTERM to the others, SIGKILL after --grace
// seconds (default 10), and fails with "rank R failed first (exit status S | killed by
// SIGx); ..." and the fate of the others (exit status 1). SIGINT / SIGTERM / SIGHUP to the
// launcher are forwarded to every child (a second one sends SIGKILL at once); it then exits
// with status 1. The children run in a process group of their own (so a terminal's ^C
// reaches them only through the launcher) and get SIGTERM when the launcher dies
// (PR_SET_PDEATHSIG), so no rank outlives it.
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "core/check.h"
#include "tools/commands.h"
#include "tools/dist_commands.h"
#include "train/dist_rendezvous.h"

extern char** environ;

namespace rehyat::tools {

namespace {

using Clock = std::chrono::steady_clock;

struct LaunchOptions {
  int gpus = 0;
  int master_port = 0;  // 0: a free port
  double grace_seconds = 10;
  std::vector<std::string> command;
};

// SIGINT / SIGTERM / SIGHUP become records on a pipe the main loop polls, and so does
// SIGCHLD with the pid that sent it. That pid tells which rank ended first when several
// have ended by the time the launcher looks (a dead rank takes the others down within
// milliseconds): a SIGCHLD that arrives while one is pending is merged into it, and the
// kernel keeps the first one's sender.
struct SignalRecord {
  int32_t signal;
  int32_t pid;  // SIGCHLD: the child that ended
};
int g_signal_pipe[2] = {-1, -1};
void on_signal(int signal, siginfo_t* info, void*) {
  const int saved_errno = errno;
  const SignalRecord record{signal, signal == SIGCHLD && info ? int32_t(info->si_pid) : 0};
  (void)!::write(g_signal_pipe[1], &record, sizeof record);  // atomic: smaller than PIPE_BUF
  errno = saved_errno;
}

class SignalPipe {
 public:
  SignalPipe() {
    REHYAT_CHECK(::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) == 0, "launch: pipe: {}", std::strerror(errno));
    struct sigaction action {};
    action.sa_sigaction = on_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART | SA_SIGINFO;
    for (size_t i = 0; i < kSignals.size(); ++i) sigaction(kSignals[i], &action, &old_[i]);
  }
  ~SignalPipe() {
    for (size_t i = 0; i < kSignals.size(); ++i) sigaction(kSignals[i], &old_[i], nullptr);
    for (int& fd : g_signal_pipe) ::close(std::exchange(fd, -1));
  }
  SignalPipe(const SignalPipe&) = delete;
  SignalPipe& operator=(const SignalPipe&) = delete;
  int fd() const { return g_signal_pipe[0]; }

 private:
  static constexpr std::array<int, 4> kSignals = {SIGINT, SIGTERM, SIGHUP, SIGCHLD};
  std::array<struct sigaction, 4> old_{};
};

std::string signal_text(int signal) {
  const char* abbrev = sigabbrev_np(signal);
  return abbrev ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", signal);
}

// One child's output stream, cut into prefixed lines.
struct Stream {
  int fd = -1;
  int out = 1;  // where its lines go: 1 or 2
  std::string partial;
};

struct Child {
  int rank = 0;
  pid_t pid = -1;
  Stream streams[2];
  bool running = true;
  std::optional<int> exit_code, signal;
  bool stopped_by_launcher = false;  // we signalled it before it ended
  std::string fate() const {
    if (signal) return fmt::format("killed by {}", signal_text(*signal));
    return fmt::format("exit status {}", exit_code.value_or(-1));
  }
  bool failed() const { return signal.has_value() || exit_code.value_or(0) != 0; }
};

void write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += size_t(n);
  }
}

void emit_lines(Stream& s, int rank, bool flush) {
  const std::string prefix = fmt::format("[rank {}] ", rank);
  std::string out;
  size_t start = 0;
  for (size_t nl; (nl = s.partial.find('\n', start)) != std::string::npos; start = nl + 1)
    out += prefix + s.partial.substr(start, nl - start + 1);
  s.partial.erase(0, start);
  if (flush && !s.partial.empty()) {
    out += prefix + s.partial + "\n";
    s.partial.clear();
  }
  if (!out.empty()) write_all(s.out, out);
}

void say(const std::string& text) { write_all(2, "rehyat launch: " + text + "\n"); }

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const size_t comma = text.find(',', start);
    std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!part.empty()) parts.push_back(part);
    if (comma == std::string::npos) return parts;
    start = comma + 1;
  }
}

// Starts one rank: fork, own process group, death signal, pipes, exec.
Child start_child(const std::string& executable, const std::vector<std::string>& args, std::vector<std::string> env,
                  int rank, pid_t& group, int devnull) {
  int out[2], err[2];
  REHYAT_CHECK(::pipe2(out, O_CLOEXEC) == 0 && ::pipe2(err, O_CLOEXEC) == 0, "launch: pipe: {}", std::strerror(errno));
  std::vector<std::string> argv_strings = {executable};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv, envp;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  for (std::string& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  REHYAT_CHECK(pid >= 0, "launch: cannot start rank {}: fork: {}", rank, std::strerror(errno));
  if (pid == 0) {  // the child: async-signal-safe calls only until exec
    ::setpgid(0, group);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);  // the launcher died before prctl took effect
    ::dup2(devnull, 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    ::execve(executable.c_str(), argv.data(), envp.data());
    const char message[] = "rehyat launch: exec of the rehyat binary failed\n";
    (void)!::write(2, message, sizeof message - 1);
    ::_exit(127);
  }
  ::setpgid(pid, group);  // also here: whichever runs first (an error after the child's exec is fine)
  if (group == 0) group = pid;
  ::close(out[1]);
  ::close(err[1]);
  Child child;
  child.rank = rank;
  child.pid = pid;
  child.streams[0] = {out[0], 1, {}};
  child.streams[1] = {err[0], 2, {}};
  return child;
}

void run_launch(const LaunchOptions& o) {
  REHYAT_CHECK(o.gpus >= 1, "launch: --gpus must be at least 1, got {}", o.gpus);
  REHYAT_CHECK(!o.command.empty(), "launch: no command: write the rehyat command after --, e.g. rehyat launch "
                                   "--gpus 2 -- run configs/x.yaml");
  REHYAT_CHECK(o.grace_seconds >= 0, "launch: --grace must not be negative");
  REHYAT_CHECK(o.master_port >= 0 && o.master_port <= 65535, "launch: --master-port {} is outside 1..65535",
               o.master_port);
  std::error_code ec;
  const std::string executable = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  REHYAT_CHECK(!ec, "launch: cannot find this rehyat binary (/proc/self/exe): {}", ec.message());
  const int port = o.master_port > 0 ? o.master_port : dist::free_tcp_port();

  std::vector<std::string> gpus;
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible && *visible) {
    gpus = split_commas(visible);
    REHYAT_CHECK(int(gpus.size()) >= o.gpus, "launch: CUDA_VISIBLE_DEVICES={} lists {} devices, fewer than --gpus {}",
                 visible, gpus.size(), o.gpus);
  } else {
    for (int i = 0; i < o.gpus; ++i) gpus.push_back(std::to_string(i));
  }
  static const std::vector<std::string> kOurs = {"RANK",        "WORLD_SIZE",  "LOCAL_RANK",          "LOCAL_WORLD_SIZE",
                                                 "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES"};
  std::vector<std::string> base_env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    if (std::find(kOurs.begin(), kOurs.end(), name) == kOurs.end()) base_env.push_back(entry);
  }

  SignalPipe signals;
  const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REHYAT_CHECK(devnull >= 0, "launch: cannot open /dev/null: {}", std::strerror(errno));
  std::vector<Child> children;
  pid_t group = 0;
  for (int rank = 0; rank < o.gpus; ++rank) {
    std::vector<std::string> env = base_env;
    env.push_back(fmt::format("RANK={}", rank));
    env.push_back(fmt::format("WORLD_SIZE={}", o.gpus));
    env.push_back(fmt::format("LOCAL_RANK={}", rank));
    env.push_back(fmt::format("LOCAL_WORLD_SIZE={}", o.gpus));
    env.push_back("MASTER_ADDR=127.0.0.1");
    env.push_back(fmt::format("MASTER_PORT={}", port));
    env.push_back("CUDA_VISIBLE_DEVICES=" + gpus[size_t(rank)]);
    children.push_back(start_child(executable, o.command, std::move(env), rank, group, devnull));
  }
  ::close(devnull);
  {
    std::vector<std::string> pids;
    for (const Child& c : children)
      pids.push_back(fmt::format("rank {} pid {} (GPU {})", c.rank, c.pid, gpus[size_t(c.rank)]));
    say(fmt::format("{} ranks, master 127.0.0.1:{}: {}", o.gpus, port, fmt::join(pids, ", ")));
  }

  std::optional<int> first_failure;  // index of the first rank that failed
  std::optional<int> interrupted;    // the signal the launcher got
  const auto grace = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.grace_seconds));
  constexpr Clock::time_point kNever = Clock::time_point::max();
  Clock::time_point kill_at = kNever;        // SIGKILL the ranks still running then
  Clock::time_point all_exited_at = kNever;  // when the last rank ended
  auto running = [&] { return std::count_if(children.begin(), children.end(), [](const Child& c) { return c.running; }); };
  auto signal_all = [&](int sig) {
    for (Child& c : children)
      if (c.running) {
        ::kill(c.pid, sig);
        c.stopped_by_launcher = true;
      }
  };
  std::vector<pid_t> exit_notices;  // pids from SIGCHLD, in arrival order
  auto read_signals = [&] {
    SignalRecord records[64];
    for (;;) {
      const ssize_t n = ::read(signals.fd(), records, sizeof records);
      if (n <= 0) return;
      for (size_t i = 0; i < size_t(n) / sizeof(SignalRecord); ++i) {
        const int sig = records[i].signal;
        if (sig == SIGCHLD) {
          exit_notices.push_back(records[i].pid);
        } else if (!interrupted) {
          interrupted = sig;
          say(fmt::format("got {}: passing it to the ranks (again to kill them at once)", signal_text(sig)));
          signal_all(sig);
          kill_at = Clock::now() + grace;
        } else {
          say(fmt::format("got {} again: killing the ranks", signal_text(sig)));
          signal_all(SIGKILL);
        }
      }
    }
  };
  for (;;) {
    std::vector<pollfd> polled = {{signals.fd(), POLLIN, 0}};
    std::vector<Stream*> streams = {nullptr};
    for (Child& c : children)
      for (Stream& s : c.streams)
        if (s.fd >= 0) {
          polled.push_back({s.fd, POLLIN, 0});
          streams.push_back(&s);
        }
    if (polled.size() == 1 && running() == 0) break;
    ::poll(polled.data(), polled.size(), 100);

    if (polled[0].revents & POLLIN) read_signals();
    for (size_t i = 1; i < polled.size(); ++i) {
      if (!polled[i].revents) continue;
      Stream& s = *streams[i];
      const int rank = [&] {
        for (const Child& c : children)
          if (&c.streams[0] == &s || &c.streams[1] == &s) return c.rank;
        return -1;
      }();
      char chunk[65536];
      const ssize_t n = ::read(s.fd, chunk, sizeof chunk);
      if (n > 0) {
        s.partial.append(chunk, size_t(n));
        emit_lines(s, rank, false);
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        emit_lines(s, rank, true);
        ::close(std::exchange(s.fd, -1));
      }
    }

    std::vector<Child*> ended;
    for (Child& c : children) {
      if (!c.running) continue;
      int status = 0;
      const pid_t pid = ::waitpid(c.pid, &status, WNOHANG);
      if (pid == 0 || (pid < 0 && errno == EINTR)) continue;
      c.running = false;
      if (pid > 0 && WIFEXITED(status)) c.exit_code = WEXITSTATUS(status);
      if (pid > 0 && WIFSIGNALED(status)) c.signal = WTERMSIG(status);
      if (pid < 0) c.exit_code = -1;
      ended.push_back(&c);
    }
    if (!ended.empty()) read_signals();  // the SIGCHLD of what was just reaped
    auto exit_order = [&](const Child* c) {
      const auto it = std::find(exit_notices.begin(), exit_notices.end(), c->pid);
      return std::make_pair(it - exit_notices.begin(), c->rank);  // not notified (merged): after, by rank
    };
    std::sort(ended.begin(), ended.end(), [&](const Child* a, const Child* b) { return exit_order(a) < exit_order(b); });
    for (Child* ended_child : ended) {
      Child& c = *ended_child;
      if (c.failed() && !first_failure && !interrupted && !c.stopped_by_launcher) {
        first_failure = c.rank;
        say(fmt::format("rank {} failed ({}); stopping the other ranks", c.rank, c.fate()));
        signal_all(SIGTERM);
        kill_at = Clock::now() + grace;
      }
    }
    if (kill_at != kNever && Clock::now() >= kill_at && running() > 0) {
      say(fmt::format("{} rank(s) still running {} after SIGTERM: killing them", running(),
                      dist::seconds_text(o.grace_seconds)));
      signal_all(SIGKILL);
      kill_at = kNever;
    }
    // A grandchild may hold a pipe open after its rank ended: stop reading after 2 s.
    if (running() == 0 && all_exited_at == kNever) all_exited_at = Clock::now();
    if (all_exited_at != kNever && Clock::now() - all_exited_at > std::chrono::seconds(2)) {
      for (Child& c : children)
        for (Stream& s : c.streams)
          if (s.fd >= 0) {
            emit_lines(s, c.rank, true);
            ::close(std::exchange(s.fd, -1));
          }
    }
  }

  std::vector<std::string> fates;
  for (const Child& c : children)
    if (!first_failure || c.rank != *first_failure)
      fates.push_back(fmt::format("rank {}: {}{}", c.rank, c.fate(), c.stopped_by_launcher ? " (stopped)" : ""));
  if (first_failure) {
    const Child& f = children[size_t(*first_failure)];
    REHYAT_FAIL("launch: rank {} failed first ({}); the other ranks were stopped ({})", f.rank, f.fate(),
                fmt::join(fates, ", "));
  }
  if (interrupted)
    REHYAT_FAIL("launch: interrupted by {}; ranks: {}", signal_text(*interrupted), fmt::join(fates, ", "));
  for (const Child& c : children)  // a rank that failed after we had started stopping (should not happen)
    REHYAT_CHECK(!c.failed(), "launch: rank {} failed ({})", c.rank, c.fate());
  say(fmt::format("all {} ranks finished", o.gpus));
}

}  // namespace

void add_launch_command(CLI::App& app) {
  auto o = std::make_shared<LaunchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "launch", "Run a rehyat command as N ranks on this node, one per GPU: rehyat launch --gpus N -- <command...>");
  cmd->add_option("--gpus", o->gpus, "Number of ranks (one per GPU)")->required();
  cmd->add_option("--master-port", o->master_port, "Rendezvous port of rank 0 (default: a free port)");
  cmd->add_option("--grace", o->grace_seconds, "Seconds between SIGTERM and SIGKILL when stopping ranks")
      ->capture_default_str();
  cmd->add_option("command", o->command, "The rehyat command each rank runs (after --)")->required();
  cmd->callback([o] { run_launch(*o); });
}

void add_dist_commands(CLI::App& app, CLI::App& bench) {
  add_launch_command(app);
  add_dist_check_command(app);
  add_bench_nccl_command(bench);
}

}  // namespace rehyat::tools
