// TrainLog (see train_log.h): JSONL metrics with resume-safe truncation, and the stderr
// progress bar.
#include "train/train_log.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/atomic_file.h"
#include "core/check.h"

namespace rehyat::train {
namespace {

constexpr std::chrono::milliseconds kTtyRedraw{100};
constexpr std::chrono::seconds kPlainLineEvery{10};
constexpr int kBarWidth = 24;

// The lines of an earlier log up to the checkpoint at first_step: JSON objects with an
// integer "step" <= first_step, in file order. Anything else (later steps, a torn line)
// goes.
std::vector<std::string> lines_before(const std::string& path, int64_t first_step) {
  std::vector<std::string> kept;
  std::ifstream in(path);
  REHYAT_CHECK(in.good(), "cannot read training log '{}': {}", path, std::strerror(errno));
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json entry = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (entry.is_object() && entry.contains("step") && entry["step"].is_number_integer() &&
        entry["step"].get<int64_t>() <= first_step)
      kept.push_back(line);
  }
  return kept;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const int64_t total = int64_t(seconds + 0.5);
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  return h > 0 ? fmt::format("{}:{:02}:{:02}", h, m, s) : fmt::format("{:02}:{:02}", m, s);
}

}  // namespace

TrainLog::TrainLog(const std::string& jsonl_path, const std::string& label, int64_t total_steps, int64_t first_step)
    : path_(jsonl_path),
      label_(label),
      total_steps_(total_steps),
      first_step_(first_step),
      tty_(::isatty(::fileno(stderr)) == 1),
      start_(Clock::now()),
      last_draw_(start_),
      done_(first_step) {
  REHYAT_CHECK(total_steps >= 0 && first_step >= 0 && first_step <= total_steps,
               "training log '{}': first step {} outside [0, {}]", jsonl_path, first_step, total_steps);
  if (path_.empty()) return;
  if (std::filesystem::exists(path_)) {
    AtomicFileWriter rewrite(path_);
    for (const std::string& line : lines_before(path_, first_step)) rewrite.write(line + "\n");
    rewrite.commit();
  }
  file_ = std::fopen(path_.c_str(), "a");
  REHYAT_CHECK(file_ != nullptr, "cannot open training log '{}': {}", path_, std::strerror(errno));
}

TrainLog::~TrainLog() {
  if (line_open_) std::fputc('\n', stderr);
  if (file_) std::fclose(file_);
}

void TrainLog::log(int64_t step, const std::map<std::string, double>& metrics) {
  if (file_) {
    nlohmann::ordered_json entry;
    entry["step"] = step;
    entry["time"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    for (const auto& [name, value] : metrics) {
      REHYAT_CHECK(name != "step" && name != "time", "training log '{}': metric name '{}' is reserved", path_, name);
      entry[name] = value;  // NaN and Inf are written as null
    }
    const std::string line = entry.dump() + "\n";
    REHYAT_CHECK(std::fputs(line.c_str(), file_) != EOF && std::fflush(file_) == 0,
                 "cannot write training log '{}': {}", path_, std::strerror(errno));
  }
  done_ = step;
  metrics_ = metrics;
  const auto now = Clock::now();
  const bool never_drawn = last_draw_ == start_, last = done_ >= total_steps_;
  const Clock::duration every = tty_ ? Clock::duration(kTtyRedraw) : Clock::duration(kPlainLineEvery);
  if (never_drawn || last || now - last_draw_ >= every) draw(false);
}

void TrainLog::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
  if (file_) {
    std::fclose(file_);
    file_ = nullptr;
  }
}

void TrainLog::draw(bool final_line) {
  last_draw_ = Clock::now();
  const double elapsed = std::chrono::duration<double>(last_draw_ - start_).count();
  const double rate = elapsed > 0 ? double(done_ - first_step_) / elapsed : 0.0;
  const double fraction = total_steps_ > 0 ? std::min(1.0, double(done_) / double(total_steps_)) : 1.0;
  const int filled = int(fraction * kBarWidth);
  std::string text = fmt::format("{} [{}{}] {}/{} {:5.1f}% {:.2f} it/s ETA {}", label_, std::string(filled, '#'),
                                 std::string(kBarWidth - filled, '.'), done_, total_steps_, 100.0 * fraction, rate,
                                 format_duration(rate > 0 ? double(total_steps_ - done_) / rate : NAN));
  for (const auto& [name, value] : metrics_) text += fmt::format(" {}={:.4g}", name, value);
  if (tty_) {
    std::fprintf(stderr, "\r%s\x1b[K%s", text.c_str(), final_line ? "\n" : "");
    line_open_ = !final_line;
  } else {
    std::fprintf(stderr, "%s\n", text.c_str());
  }
  std::fflush(stderr);
}

}  // namespace rehyat::train
