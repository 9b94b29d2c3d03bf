// The collective watchdog (see dist_watchdog.h).
#include "train/dist_watchdog.h"

#include <cstdio>
#include <future>
#include <cstdlib>

#include <fmt/format.h>

#include "core/check.h"

namespace rehyat::dist {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string describe_loss(const PeerLoss& loss) {
  if (loss.finished) return fmt::format("rank {} has already finished (it closed its communicator)", loss.rank);
  return fmt::format("rank {} went away: {}", loss.rank, loss.reason);
}

// Short sleeps that grow: a nonblocking NCCL enqueue is usually done on the first look.
class Backoff {
 public:
  void pause() {
    if (++polls_ < 64) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    sleep_us_ = std::min(sleep_us_ * 2, 5000);
  }

 private:
  int polls_ = 0;
  int sleep_us_ = 50;
};

}  // namespace

CollectiveWatchdog::CollectiveWatchdog(int rank, Options options, Hooks hooks)
    : rank_(rank), options_(std::move(options)), hooks_(std::move(hooks)) {
  REHYAT_CHECK(options_.timeout_seconds > 0, "rank {}: the communicator timeout must be positive, got {}", rank_,
               options_.timeout_seconds);
  if (options_.thread) thread_ = std::thread([this] { thread_loop(); });
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

CollectiveWatchdog::Diagnosis CollectiveWatchdog::diagnose(const std::string* what, Clock::time_point start) {
  std::string label;
  Clock::time_point since;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(entries_, [](const Entry& e) { return e.finished(); });
    if (!entries_.empty()) {
      label = entries_.front().what;
      since = entries_.front().start;
    }
    if (what && (label.empty() || start < since)) {
      label = *what;
      since = start;
    }
  }
  if (label.empty()) return {};
  if (hooks_.async_error) {
    const std::string error = hooks_.async_error();
    if (!error.empty())
      return {Problem::Error, fmt::format("rank {}: {} failed: the {} reported: {}", rank_, label, options_.backend,
                                          error)};
  }
  if (hooks_.peer_loss) {
    // A goodbye is not fatal here: a rank that finished may have seen the last collective
    // complete before this one's probe did. New collectives check it in check_start().
    const std::optional<PeerLoss> loss = hooks_.peer_loss();
    if (loss && !loss->finished)
      return {Problem::PeerLost, fmt::format("rank {}: {} cannot finish: {}", rank_, label, describe_loss(*loss))};
  }
  if (seconds_since(since) > options_.timeout_seconds)
    return {Problem::Timeout, fmt::format("rank {}: {} did not finish within {}: another rank died or hung", rank_,
                                          label, seconds_text(options_.timeout_seconds))};
  return {};
}

std::string CollectiveWatchdog::set_failure(const Diagnosis& diagnosis, bool from_thread) {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (failing_ || !failure_.empty()) {  // someone else got there first: theirs is the message
      changed_.wait(lock, [&] { return !failure_.empty(); });
      if (!from_thread) observed_ = true;
      return failure_;
    }
    failing_ = true;
  }
  std::string message = diagnosis.message;
  if (hooks_.abort) {
    // On its own thread with a bounded wait: ncclCommAbort itself has been seen to hang.
    auto finished = std::make_shared<std::promise<std::string>>();
    std::future<std::string> result = finished->get_future();
    abort_returned_ = false;
    std::thread([abort = hooks_.abort, finished] {
      try {
        abort();
        finished->set_value("");
      } catch (const std::exception& e) {
        finished->set_value(e.what());
      }
    }).detach();
    const auto wait = std::chrono::duration<double>(options_.abort_wait_seconds);
    if (result.wait_for(wait) == std::future_status::ready) {
      abort_returned_ = true;
      const std::string error = result.get();
      if (!error.empty()) message += fmt::format(" (aborting failed too: {})", error);
    } else {
      message += fmt::format(" (the abort did not return within {})", seconds_text(options_.abort_wait_seconds));
    }
  }
  if (diagnosis.problem == Problem::Timeout && hooks_.stragglers) {
    try {
      const std::string who = hooks_.stragglers();
      if (!who.empty()) message += " (" + who + ")";
    } catch (const std::exception& e) {
      message += fmt::format(" (asking the other ranks failed: {})", e.what());
    }
  }
  message += "; aborted the " + options_.backend;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = message;
    failing_ = false;
    observed_ = !from_thread;
    failed_at_ = Clock::now();
  }
  changed_.notify_all();
  return message;
}

void CollectiveWatchdog::throw_failure() {
  std::lock_guard<std::mutex> lock(mutex_);
  observed_ = true;
  throw Error(failure_);
}

void CollectiveWatchdog::fail(const std::string& message) {
  throw Error(set_failure({Problem::Error, message}, false));
}

void CollectiveWatchdog::check() {
  {
    // A failure being recorded (the abort already done, the message still being put
    // together -- asking the other ranks takes seconds): wait for its message, so the
    // caller reports the cause rather than a closed communicator.
    std::unique_lock<std::mutex> lock(mutex_);
    if (failing_) changed_.wait(lock, [&] { return !failure_.empty(); });
  }
  if (failed()) throw_failure();
  const Diagnosis d = diagnose(nullptr, {});
  if (d.problem != Problem::None) throw Error(set_failure(d, false));
}

void CollectiveWatchdog::check_start(const std::string& what) {
  check();
  if (hooks_.peer_loss) {
    if (const std::optional<PeerLoss> loss = hooks_.peer_loss())
      fail(fmt::format("rank {}: {} cannot start: {}", rank_, what, describe_loss(*loss)));
  }
}

void CollectiveWatchdog::track(const std::string& what, std::function<bool()> finished) {
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.push_back({what, std::move(finished), Clock::now()});
}

void CollectiveWatchdog::wait_all() {
  Backoff backoff;
  for (;;) {
    check();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (entries_.empty()) return;
    }
    backoff.pause();
  }
}

void CollectiveWatchdog::wait_until(const std::string& what, const std::function<bool()>& ready) {
  const Clock::time_point start = Clock::now();
  Backoff backoff;
  for (;;) {
    if (failed()) throw_failure();
    if (ready()) return;
    const Diagnosis d = diagnose(&what, start);
    if (d.problem != Problem::None) throw Error(set_failure(d, false));
    backoff.pause();
  }
}

bool CollectiveWatchdog::failed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !failure_.empty();
}

std::string CollectiveWatchdog::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

size_t CollectiveWatchdog::in_flight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

void CollectiveWatchdog::thread_loop() {
  const auto poll = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.poll_seconds));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    changed_.wait_for(lock, poll);
    if (stop_) break;
    if (!failure_.empty()) {
      if (!observed_ && options_.exit_grace_seconds >= 0 && seconds_since(failed_at_) > options_.exit_grace_seconds) {
        std::fflush(stdout);
        fmt::print(stderr,
                   "rehyat: error: {}\nrehyat: rank {}: nothing picked this failure up within {}, so the watchdog "
                   "ends the process\n",
                   failure_, rank_, seconds_text(options_.exit_grace_seconds));
        std::fflush(stderr);
        std::_Exit(1);
      }
      continue;
    }
    if (failing_) continue;
    lock.unlock();
    const Diagnosis d = diagnose(nullptr, {});
    if (d.problem != Problem::None) set_failure(d, true);
    lock.lock();
  }
}

}  // namespace rehyat::dist
