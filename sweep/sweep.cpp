// The sweep runner (see sweep.h): the shared run, the variants' folders and child
// processes, and the results after each one.
#include "sweep/sweep.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/check.h"
#include "core/device.h"
#include "core/log.h"
#include "sweep/sweep_file.h"
#include "sweep/sweep_results.h"
#include "train/run_config.h"

extern char** environ;

namespace rehyat::sweep {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kLogTailLines = 20;

void write_text(const std::string& path, const std::string& text) {
  AtomicFileWriter writer(path);
  writer.write(text);
  writer.commit();
}

std::string duration_text(double seconds) {
  if (seconds < 60) return fmt::format("{:.1f} s", seconds);
  return fmt::format("{}m{:02d}s", int64_t(seconds) / 60, int64_t(seconds) % 60);
}

// The last `lines` non-empty lines of `path` from byte `offset` on.
std::vector<std::string> log_tail(const std::string& path, std::streamoff offset, size_t lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return {};
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = std::max(offset, size - std::streamoff(64 * 1024));
  in.seekg(start);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> all;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    const size_t cr = line.rfind('\r');  // a progress bar redrawn in place: its last state
    if (cr != std::string::npos) line = line.substr(cr + 1);
    if (!line.empty()) all.push_back(line);
    begin = end + 1;
  }
  if (start > offset && !all.empty()) all.erase(all.begin());  // a partial first line
  if (all.size() > lines) all.erase(all.begin(), all.end() - std::ptrdiff_t(lines));
  return all;
}

std::string device_description(bool cuda, const std::vector<std::string>& gpus, int slot) {
  if (!cuda) return "cpu";
  if (gpus.empty()) return "cuda (no GPU found)";
  const std::string& id = gpus[size_t(slot) % gpus.size()];
#ifdef REHYAT_CUDA
  cudaDeviceProp props;
  if (cudaGetDeviceProperties(&props, slot % int(gpus.size())) == cudaSuccess)
    return fmt::format("{} (GPU {})", props.name, id);
#endif
  return fmt::format("cuda (GPU {})", id);
}

volatile std::sig_atomic_t g_signal = 0;
void on_signal(int signal) { g_signal = signal; }

// SIGINT and SIGTERM set g_signal while it lives (the runner then stops its children).
class SignalGuard {
 public:
  SignalGuard() {
    g_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

// An flock(2) on `path` (created if missing), released when destroyed; children do not
// inherit it.
class FileLock {
 public:
  explicit FileLock(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    REHYAT_CHECK(fd_ >= 0, "sweep: cannot open the lock file '{}': {}", path, std::strerror(errno));
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock() { ::close(fd_); }
  bool try_lock() { return ::flock(fd_, LOCK_EX | LOCK_NB) == 0; }
  // Waits for the lock; false when a signal (SIGINT, SIGTERM) came first.
  bool lock() {
    while (::flock(fd_, LOCK_EX) != 0) {
      REHYAT_CHECK(errno == EINTR, "sweep: cannot lock '{}': {}", path_, std::strerror(errno));
      if (g_signal) return false;
    }
    return true;
  }
  void unlock() { ::flock(fd_, LOCK_UN); }

 private:
  std::string path_;
  int fd_ = -1;
};

struct Job {
  std::string name;               // the variant, or "shared"
  std::string label;              // "[2/5] name" for the console
  std::string dir;                // its run folder
  std::vector<std::string> args;  // after the executable
};

struct Child {
  Job job;
  pid_t pid = -1;
  int slot = 0;
  std::string device;
  std::streamoff log_offset = 0;
  Clock::time_point start;
  std::time_t started = 0;
};

struct Ended {
  Child child;
  double seconds = 0;
  std::optional<int> exit_code, signal;
};

// Starts children (one per slot) and reaps them.
class Runner {
 public:
  Runner(std::string executable, int slots, bool cuda, std::vector<std::string> gpus)
      : executable_(std::move(executable)), busy_(size_t(slots), false), cuda_(cuda), gpus_(std::move(gpus)) {}

  bool has_free_slot() const { return std::find(busy_.begin(), busy_.end(), false) != busy_.end(); }
  bool idle() const { return running_.empty(); }

  const Child& start(const Job& job) {
    const int slot = int(std::find(busy_.begin(), busy_.end(), false) - busy_.begin());
    REHYAT_CHECK(size_t(slot) < busy_.size(), "sweep: no free slot for {}", job.name);
    Child child;
    child.job = job;
    child.slot = slot;
    child.device = device_description(cuda_, gpus_, slot);
    fs::create_directories(job.dir);
    const std::string log_path = job.dir + "/sweep.log";
    {
      std::ofstream log(log_path, std::ios::app);
      REHYAT_CHECK(log.good(), "sweep: cannot write '{}'", log_path);
      log.seekp(0, std::ios::end);
      child.log_offset = log.tellp();
      const std::time_t now = std::time(nullptr);
      char when[32];
      std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
      log << fmt::format("==== rehyat sweep, {} on {}: {} {}\n", when, child.device, executable_,
                         fmt::join(job.args, " "));
    }

    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e)
      if (!std::string(*e).starts_with("CUDA_VISIBLE_DEVICES=")) env_strings.emplace_back(*e);
    if (cuda_ && !gpus_.empty()) env_strings.push_back("CUDA_VISIBLE_DEVICES=" + gpus_[size_t(slot) % gpus_.size()]);
    std::vector<char*> env;
    for (std::string& s : env_strings) env.push_back(s.data());
    env.push_back(nullptr);
    std::vector<std::string> arg_strings = {executable_};
    arg_strings.insert(arg_strings.end(), job.args.begin(), job.args.end());
    std::vector<char*> argv;
    for (std::string& s : arg_strings) argv.push_back(s.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int rc = posix_spawn(&child.pid, executable_.c_str(), &actions, nullptr, argv.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    REHYAT_CHECK(rc == 0, "sweep: cannot start '{}' for {}: {}", executable_, job.name, std::strerror(rc));
    child.start = Clock::now();
    child.started = std::time(nullptr);
    busy_[size_t(slot)] = true;
    running_.push_back(std::move(child));
    return running_.back();
  }

  // Children that ended since the last call (without blocking).
  std::vector<Ended> reap() {
    std::vector<Ended> ended;
    for (auto it = running_.begin(); it != running_.end();) {
      int status = 0;
      const pid_t pid = ::waitpid(it->pid, &status, WNOHANG);
      if (pid == 0 || (pid < 0 && errno == EINTR)) {
        ++it;
        continue;
      }
      Ended e;
      e.seconds = std::chrono::duration<double>(Clock::now() - it->start).count();
      if (pid > 0 && WIFEXITED(status)) e.exit_code = WEXITSTATUS(status);
      if (pid > 0 && WIFSIGNALED(status)) e.signal = WTERMSIG(status);
      if (pid < 0) e.exit_code = -1;  // lost track of it (should not happen)
      busy_[size_t(it->slot)] = false;
      e.child = std::move(*it);
      it = running_.erase(it);
      ended.push_back(std::move(e));
    }
    return ended;
  }

  // SIGTERM to every child, then waits for them.
  std::vector<Ended> stop_all() {
    for (const Child& c : running_) ::kill(c.pid, SIGTERM);
    std::vector<Ended> ended;
    while (!running_.empty()) {
      for (Ended& e : reap()) ended.push_back(std::move(e));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return ended;
  }

  const std::vector<Child>& running() const { return running_; }

 private:
  std::string executable_;
  std::vector<bool> busy_;
  bool cuda_;
  std::vector<std::string> gpus_;
  std::vector<Child> running_;
};

void write_record(const std::string& dir, const json& record) {
  fs::create_directories(dir);
  write_text(dir + "/sweep.json", record.dump(2) + "\n");
}

json ended_record(const Ended& e, const std::string& status, const std::vector<std::string>& tail) {
  json r = {{"status", status},
            {"device", e.child.device},
            {"started", e.child.started},
            {"seconds", e.seconds},
            {"exit_code", e.exit_code ? json(*e.exit_code) : json(nullptr)},
            {"signal", e.signal ? json(*e.signal) : json(nullptr)},
            {"error", nullptr},
            {"log_tail", tail}};
  return r;
}

std::string why_failed(const Ended& e) {
  if (e.signal) return fmt::format("killed by signal {} ({})", *e.signal, strsignal(*e.signal));
  if (e.exit_code && *e.exit_code != 0) return fmt::format("exit status {}", *e.exit_code);
  return "exited 0 without its last stage's output";
}

std::string indented(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += "\n    " + l;
  return out;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// One line on how the finished variant did, from its eval metrics.
std::string outcome_summary(const std::string& dir) {
  std::ifstream in(dir + "/eval/metrics.json");
  if (!in.good()) return "";
  try {
    const json m = json::parse(in);
    const char* model = m.contains("finetune") ? "finetune" : m.contains("distill") ? "distill" : nullptr;
    if (!model) return "";
    const json& s = m[model];
    std::vector<std::string> parts;
    if (s.contains("prompt_agreement") && s["prompt_agreement"].is_number())
      parts.push_back(fmt::format("prompt agreement {:.2f}", s["prompt_agreement"].get<double>()));
    if (s.contains("psnr_vs_teacher") && s["psnr_vs_teacher"].is_number())
      parts.push_back(fmt::format("PSNR vs teacher {:.2f} dB", s["psnr_vs_teacher"].get<double>()));
    if (s.contains("heldout_fm_loss") && s["heldout_fm_loss"].is_number())
      parts.push_back(fmt::format("held-out loss {:.4f}", s["heldout_fm_loss"].get<double>()));
    return parts.empty() ? "" : fmt::format(" ({}: {})", model, fmt::join(parts, ", "));
  } catch (const json::exception&) {
    return "";
  }
}

// Keys whose values differ between a run folder's recorded config and `now`.
std::vector<std::string> changed_keys(const std::string& recorded, const FlatConfig& now) {
  std::ifstream in(recorded);
  if (!in.good() || now.empty()) return {};
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  FlatConfig before;
  try {
    before = flatten_config_text(text, recorded);
  } catch (const Error&) {
    return {};
  }
  std::vector<std::string> changed;
  for (const auto& [key, value] : now) {
    const auto it = before.find(key);
    if (it == before.end() || it->second != value) changed.push_back(key);
  }
  return changed;
}

// The child run of a variant: `run BASE <overrides> --resume --stages <stages>`.
Job variant_job(const SweepSpec& spec, const Variant& v, const SweepLayout& layout,
                const std::vector<std::string>& stages, const std::string& label) {
  Job job{v.name, label, layout.variant_dir(v.name), {"run", fs::absolute(spec.base).string()}};
  for (const std::string& o : variant_overrides(spec, v, layout)) job.args.push_back(o);
  job.args.insert(job.args.end(), {"--resume", "--stages", fmt::format("{}", fmt::join(stages, ","))});
  return job;
}

}  // namespace

std::vector<std::string> visible_gpus(int count) {
  std::vector<std::string> gpus;
  if (const char* env = std::getenv("CUDA_VISIBLE_DEVICES"); env && *env) {
    std::string list = env;
    for (size_t begin = 0; begin <= list.size();) {
      const size_t end = std::min(list.find(',', begin), list.size());
      if (end > begin) gpus.push_back(list.substr(begin, end - begin));
      begin = end + 1;
    }
    if (int(gpus.size()) > count) gpus.resize(size_t(std::max(count, 0)));
    return gpus;
  }
  for (int i = 0; i < count; ++i) gpus.push_back(std::to_string(i));
  return gpus;
}

LinkCounts link_shared_files(const std::string& shared_dir, const std::string& variant_dir) {
  LinkCounts counts;
  for (const char* sub : {"data", "teacher", "cache"}) {
    const fs::path from_root = fs::path(shared_dir) / sub;
    REHYAT_CHECK(fs::is_directory(from_root), "sweep: '{}' is missing: the shared run has not made it",
                 from_root.string());
    for (const fs::directory_entry& entry : fs::recursive_directory_iterator(from_root)) {
      if (!entry.is_regular_file()) continue;
      const std::string file_name = entry.path().filename().string();
      if (file_name.find(".tmp.") != std::string::npos) continue;  // a writer's temp file
      const fs::path relative = fs::relative(entry.path(), shared_dir);
      const fs::path target = fs::path(variant_dir) / relative;
      if (fs::exists(target)) {
        std::error_code ec;
        const bool same = fs::equivalent(entry.path(), target, ec) ||
                          (fs::is_regular_file(target) && fs::file_size(target) == entry.file_size());
        REHYAT_CHECK(same,
                     "sweep: '{}' differs from the shared run's '{}' (it came from another teacher or cache): "
                     "rerun the sweep with --force --only {} to redo that variant",
                     target.string(), entry.path().string(), fs::path(variant_dir).filename().string());
        ++counts.present;
        continue;
      }
      fs::create_directories(target.parent_path());
      std::error_code ec;
      fs::create_hard_link(entry.path(), target, ec);
      if (!ec) {
        ++counts.linked;
        continue;
      }
      // Another filesystem (or one without hard links): a copy, renamed into place.
      const fs::path temp = target.string() + ".tmp." + std::to_string(::getpid());
      fs::copy_file(entry.path(), temp, fs::copy_options::overwrite_existing);
      fs::rename(temp, target);
      ++counts.copied;
    }
  }
  return counts;
}

SweepOutcome run_sweep(const SweepOptions& options) {
  const SweepSpec spec = load_sweep(options.file);
  const std::vector<std::string> stages =
      options.stages.empty() ? spec.stages : check_variant_stages(options.stages, "--stages");
  REHYAT_CHECK(options.jobs >= 0, "--jobs must be at least 1 (got {})", options.jobs);
  std::vector<const Variant*> selected;
  for (const std::string& name : options.only) {
    auto it =
        std::find_if(spec.variants.begin(), spec.variants.end(), [&](const Variant& v) { return v.name == name; });
    if (it == spec.variants.end()) {
      std::vector<std::string> names;
      for (const Variant& v : spec.variants) names.push_back(v.name);
      REHYAT_FAIL("--only: {} has no variant '{}' (variants: {})", spec.file, name, fmt::join(names, ", "));
    }
    if (std::find(selected.begin(), selected.end(), &*it) == selected.end()) selected.push_back(&*it);
  }
  if (options.only.empty())
    for (const Variant& v : spec.variants) selected.push_back(&v);

  const SweepLayout layout = sweep_layout(spec);
  const Config shared_config = load_sweep_config(spec, shared_overrides(spec, layout));
  const train::RunConfig shared_run = train::run_config_from(shared_config);
  const FlatConfig shared_flat = flatten_config(shared_config);
  const std::string recorded = layout.shared_dir + "/config.resolved.yaml";
  if (fs::exists(recorded)) {
    std::ifstream in(recorded);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const FlatConfig before = flatten_config_text(text, recorded);
    const std::vector<KeyChange> changes = teacher_cache_changes(before, shared_flat);
    // Distillation reads every block a variant may convert from the cache, which holds
    // the blocks of the run's attention.hybrid_blocks (all when that list is empty).
    if (const auto blocks = before.find("attention.hybrid_blocks"); blocks != before.end())
      REHYAT_CHECK(blocks->second == "[]",
                   "{}: the shared run '{}' cached only blocks {} (attention.hybrid_blocks); a sweep needs a cache of "
                   "every block: name another sweep.shared run",
                   spec.file, layout.shared_dir, blocks->second);
    if (!changes.empty()) {
      std::vector<std::string> listed;
      for (const KeyChange& c : changes)
        listed.push_back(fmt::format("{} ({} then, {} now)", c.key, c.before, c.after));
      REHYAT_FAIL(
          "{}: the shared teacher and activation cache in '{}' were made with other values of {}: restore "
          "them, give this sweep another sweep.shared run, or delete '{}' and the variants made from it "
          "(in '{}') to start over",
          spec.file, layout.shared_dir, fmt::join(listed, ", "), layout.shared_dir, layout.root);
    }
  }

  // Every variant's config, before anything runs: a forbidden key stops the sweep, an
  // invalid value fails that variant alone.
  std::map<std::string, std::string> invalid;
  std::map<std::string, FlatConfig> configs;
  for (const Variant& v : spec.variants) {
    std::optional<Config> config;
    try {
      config = load_sweep_config(spec, variant_overrides(spec, v, layout));
    } catch (const Error& e) {
      invalid[v.name] = e.what();
      continue;
    }
    configs[v.name] = flatten_config(*config);
    check_shared_keys(shared_flat, configs[v.name], v);
    try {
      train::run_config_from(*config);
    } catch (const Error& e) {
      invalid[v.name] = e.what();
    }
  }

  const bool cuda = shared_run.device.is_cuda();
  const int gpu_count = cuda ? cuda_device_count() : 0;
  const std::vector<std::string> gpus = visible_gpus(gpu_count);
  const int jobs = options.jobs > 0 ? options.jobs : std::max(1, int(gpus.size()));
  const std::string executable =
      options.executable.empty() ? fs::read_symlink("/proc/self/exe").string() : options.executable;

  log::info("sweep {}: {} of {} variants, stages {}, {} at a time on {}; runs in {}, results in {}", spec.name,
            selected.size(), spec.variants.size(), fmt::join(stages, ","), jobs,
            cuda ? fmt::format("{} GPU(s)", gpus.size()) : std::string("the CPU"), layout.root, spec.results_dir);
  if (cuda && gpus.empty())
    log::warn("sweep {}: the base config runs on cuda but this machine shows no CUDA device: its runs will fail",
              spec.name);
  if (options.dry_run) {
    SweepOutcome plan;
    plan.results_dir = spec.results_dir;
    const bool shared_done = run_finished(layout.shared_dir, {"teacher", "cache"});
    log::info("shared (teacher, cache): {} {}", shared_done ? "made, reused:" : "to run in", layout.shared_dir);
    for (size_t i = 0; i < selected.size(); ++i) {
      const Variant& v = *selected[i];
      const std::string label = fmt::format("[{}/{}] {}", i + 1, selected.size(), v.name);
      if (invalid.count(v.name)) {
        log::error("{}: invalid config:{}", label, indented(lines_of(invalid.at(v.name))));
        plan.failed.push_back(v.name);
      } else if (run_finished(layout.variant_dir(v.name), stages)) {
        log::info("{}: finished", label);
        plan.skipped.push_back(v.name);
      } else {
        log::info("{}: to run: {} {}", label, executable,
                  fmt::join(variant_job(spec, v, layout, stages, label).args, " "));
        plan.finished.push_back(v.name);
      }
    }
    return plan;
  }
  fs::create_directories(layout.root);
  // One runner per sweep folder; one maker of a shared run (sweeps may share it).
  FileLock sweep_lock(layout.root + "/sweep.lock");
  REHYAT_CHECK(sweep_lock.try_lock(), "sweep {}: another `rehyat sweep` is running in '{}' (it holds {}/sweep.lock)",
               spec.name, layout.root, layout.root);
  if (options.force)
    for (const Variant* v : selected)
      if (fs::exists(layout.variant_dir(v->name))) {
        log::warn("sweep: --force: deleting {}", layout.variant_dir(v->name));
        fs::remove_all(layout.variant_dir(v->name));
      }

  auto regenerate = [&](bool must) {
    try {
      write_results(collect_results(spec, layout, stages), spec.results_dir);
    } catch (const std::exception& e) {
      if (must) throw;
      log::warn("sweep: could not update the results in {} ({}); continuing", spec.results_dir, e.what());
    }
  };

  SignalGuard signals;
  Runner runner(executable, jobs, cuda, gpus);
  auto interrupted = [&](Runner& r) {
    for (const Ended& e : r.stop_all()) {
      write_record(e.child.job.dir, ended_record(e, "interrupted", {}));
      log::warn("{}: stopped after {} (resumes on the next run)", e.child.job.label, duration_text(e.seconds));
    }
    regenerate(false);
    REHYAT_FAIL("sweep {} interrupted by signal {}: run the same command again to resume it", spec.name, int(g_signal));
  };

  // The shared run: the teacher and the activation cache, once.
  fs::create_directories(layout.shared_out_dir);
  FileLock shared_lock(layout.shared_out_dir + "/" + layout.shared_name + ".lock");
  if (!shared_lock.try_lock()) {
    log::info("sweep {}: waiting for another sweep that is making the shared run {}", spec.name, layout.shared_dir);
    if (!shared_lock.lock()) REHYAT_FAIL("sweep {} interrupted by signal {} while waiting", spec.name, int(g_signal));
  }
  if (run_finished(layout.shared_dir, {"teacher", "cache"})) {
    log::info("sweep {}: shared teacher and cache already made ({}), reused", spec.name, layout.shared_dir);
  } else {
    Job job{"shared", "shared (teacher, cache)", layout.shared_dir, {"run", fs::absolute(spec.base).string()}};
    for (const std::string& o : shared_overrides(spec, layout)) job.args.push_back(o);
    job.args.insert(job.args.end(), {"--resume", "--stages", "teacher,cache"});
    const Child& child = runner.start(job);
    log::info("{}: started on {} (log: {}/sweep.log)", job.label, child.device, job.dir);
    std::optional<Ended> ended;
    while (!ended) {
      if (g_signal) interrupted(runner);
      for (Ended& e : runner.reap()) ended = std::move(e);
      if (!ended) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    const bool ok = ended->exit_code == 0 && run_finished(layout.shared_dir, {"teacher", "cache"});
    const std::vector<std::string> tail =
        ok ? std::vector<std::string>{} : log_tail(job.dir + "/sweep.log", ended->child.log_offset, kLogTailLines);
    write_record(job.dir, ended_record(*ended, ok ? "finished" : "failed", tail));
    REHYAT_CHECK(ok,
                 "sweep {}: the shared run (teacher, cache) failed after {} ({}); every variant needs it. Last "
                 "lines of {}/sweep.log:{}",
                 spec.name, duration_text(ended->seconds), why_failed(*ended), job.dir, indented(tail));
    log::info("{}: finished in {}", job.label, duration_text(ended->seconds));
  }
  shared_lock.unlock();

  SweepOutcome outcome;
  outcome.results_dir = spec.results_dir;
  std::vector<std::pair<const Variant*, std::string>> pending;  // (variant, console label)
  for (size_t i = 0; i < selected.size(); ++i) {
    const Variant& v = *selected[i];
    const std::string dir = layout.variant_dir(v.name);
    const std::string label = fmt::format("[{}/{}] {}", i + 1, selected.size(), v.name);
    if (run_finished(dir, stages)) {
      log::info("{}: already finished, skipped", label);
      outcome.skipped.push_back(v.name);
      const std::vector<std::string> changed = changed_keys(dir + "/config.resolved.yaml", configs[v.name]);
      if (!changed.empty())
        log::warn("{}: it finished with other values of {}: --force --only {} redoes it", label,
                  fmt::join(changed, ", "), v.name);
      continue;
    }
    if (invalid.count(v.name)) {
      const std::string& why = invalid.at(v.name);
      fs::create_directories(dir);
      std::ofstream(dir + "/sweep.log", std::ios::app) << "==== rehyat sweep: invalid config, not run\n" << why << "\n";
      write_record(dir, {{"status", "failed"},
                         {"device", nullptr},
                         {"started", std::time(nullptr)},
                         {"seconds", 0},
                         {"exit_code", nullptr},
                         {"signal", nullptr},
                         {"error", why},
                         {"log_tail", json::array()}});
      log::error("{}: FAILED before starting: invalid config:{}", label, indented(lines_of(why)));
      outcome.failed.push_back(v.name);
      continue;
    }
    pending.emplace_back(&v, label);
  }
  regenerate(false);

  // Variants sharing a GPU (more jobs than GPUs) would skew the latency the eval stage
  // measures, so then every variant's eval runs after the other stages, one per GPU.
  std::vector<std::vector<std::string>> phases = {stages};
  const bool gpus_shared = cuda && jobs > std::max(1, int(gpus.size()));
  if (gpus_shared && stages.size() > 1 && std::find(stages.begin(), stages.end(), "eval") != stages.end()) {
    std::vector<std::string> before_eval;
    for (const std::string& s : stages)
      if (s != "eval") before_eval.push_back(s);
    phases = {before_eval, {"eval"}};
    log::info("sweep {}: {} variants at a time share {} GPU(s): eval (which times the models) runs last, {} at a time",
              spec.name, jobs, gpus.size(), std::max(1, int(gpus.size())));
  }
  std::map<std::string, double> seconds;  // per variant, over the phases
  Clock::time_point last_heartbeat = Clock::now();
  for (size_t phase = 0; phase < phases.size(); ++phase) {
    const std::vector<std::string>& phase_stages = phases[phase];
    const bool last_phase = phase + 1 == phases.size();
    std::deque<Job> queue;
    for (const auto& [v, label] : pending)
      if (!run_finished(layout.variant_dir(v->name), phase_stages))
        queue.push_back(variant_job(spec, *v, layout, phase_stages, label));
      else if (last_phase)
        outcome.finished.push_back(v->name);  // its earlier phases ran in this sweep
    Runner phase_runner(executable, phase_stages == std::vector<std::string>{"eval"} ? std::max(1, int(gpus.size())) : jobs,
                  cuda, gpus);
    while (!queue.empty() || !phase_runner.idle()) {
      if (g_signal) interrupted(phase_runner);
      while (!queue.empty() && phase_runner.has_free_slot()) {
        Job job = std::move(queue.front());
        queue.pop_front();
        try {
          const LinkCounts links = link_shared_files(layout.shared_dir, job.dir);
          if (links.copied) log::warn("{}: {} shared files copied (hard links refused)", job.label, links.copied);
        } catch (const std::exception& e) {
          write_record(job.dir, {{"status", "failed"},
                                 {"device", nullptr},
                                 {"started", std::time(nullptr)},
                                 {"seconds", 0},
                                 {"exit_code", nullptr},
                                 {"signal", nullptr},
                                 {"error", e.what()},
                                 {"log_tail", json::array()}});
          log::error("{}: FAILED before starting: {}", job.label, e.what());
          outcome.failed.push_back(job.name);
          std::erase_if(pending, [&](const auto& p) { return p.first->name == job.name; });
          regenerate(false);
          continue;
        }
        const Child& child = phase_runner.start(job);
        write_record(job.dir, {{"status", "running"}, {"device", child.device}, {"started", child.started}});
        log::info("{}: started on {}{} (log: {}/sweep.log)", job.label, child.device,
                  phases.size() > 1 ? fmt::format(" for {}", fmt::join(phase_stages, ",")) : std::string(), job.dir);
      }
      const std::vector<Ended> ended = phase_runner.reap();
      for (const Ended& e : ended) {
        const Job& job = e.child.job;
        const bool ok = e.exit_code == 0 && run_finished(job.dir, phase_stages);
        seconds[job.name] += e.seconds;
        const std::vector<std::string> tail =
            ok ? std::vector<std::string>{} : log_tail(job.dir + "/sweep.log", e.child.log_offset, kLogTailLines);
        json record = ended_record(e, ok ? (last_phase ? "finished" : "running") : "failed", tail);
        record["seconds"] = seconds[job.name];
        write_record(job.dir, record);
        if (ok && !last_phase) {
          log::info("{}: {} done in {}", job.label, fmt::join(phase_stages, ","), duration_text(e.seconds));
        } else if (ok) {
          log::info("{}: finished in {}{}", job.label, duration_text(seconds[job.name]), outcome_summary(job.dir));
          outcome.finished.push_back(job.name);
        } else {
          log::error("{}: FAILED after {} ({}); last lines of {}/sweep.log:{}", job.label, duration_text(e.seconds),
                     why_failed(e), job.dir, indented(tail));
          outcome.failed.push_back(job.name);
          std::erase_if(pending, [&](const auto& p) { return p.first->name == job.name; });
        }
        regenerate(false);
      }
      if (ended.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (!phase_runner.idle() && options.heartbeat_seconds > 0 &&
          std::chrono::duration<double>(Clock::now() - last_heartbeat).count() >= options.heartbeat_seconds) {
        last_heartbeat = Clock::now();
        for (const Child& c : phase_runner.running()) {
          const std::vector<std::string> last = log_tail(c.job.dir + "/sweep.log", c.log_offset, 1);
          log::info("{}: running for {}{}", c.job.label,
                    duration_text(std::chrono::duration<double>(Clock::now() - c.start).count()),
                    last.empty() ? "" : ": " + last.back());
        }
      }
    }
  }
  regenerate(true);
  log::info("sweep {}: {} finished now, {} finished before, {} failed{}; results: {}/table.md", spec.name,
            outcome.finished.size(), outcome.skipped.size(), outcome.failed.size(),
            outcome.failed.empty() ? "" : fmt::format(" ({})", fmt::join(outcome.failed, ", ")), spec.results_dir);
  return outcome;
}

}  // namespace rehyat::sweep
