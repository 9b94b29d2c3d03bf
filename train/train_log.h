// Training progress: metrics as JSON lines (one object {"step", "time", <metrics>} per
// log() call, flushed per line so a killed run keeps everything it reported) and a
// console progress bar on stderr (label, step/total, percent, steps/s, ETA, metrics).
//
// Steps are counted as steps done (1-based: log(1, ...) after the first step), the
// convention of a checkpoint's step. Resume: a log for a run that restarts from a
// checkpoint taken after first_step steps keeps the earlier lines with step <= first_step
// and drops the rest (steps an interrupted run did after that checkpoint, and a torn last
// line), rewriting the file atomically before appending, so the file never holds a step
// twice. first_step = 0 starts a fresh file.
//
// The bar is redrawn in place (\r) at most every 0.1 s when stderr is a terminal, and
// printed as a plain line every 10 s otherwise (CI logs).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>

namespace rehyat::train {

class TrainLog {
 public:
  // jsonl_path "" writes no file (console only).
  TrainLog(const std::string& jsonl_path, const std::string& label, int64_t total_steps, int64_t first_step = 0);
  TrainLog(const TrainLog&) = delete;
  TrainLog& operator=(const TrainLog&) = delete;
  ~TrainLog();

  // `step`: steps done so far, in (first_step, total_steps].
  void log(int64_t step, const std::map<std::string, double>& metrics);
  // Draws the final bar state and ends its line; the file stays as written.
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  void draw(bool final_line);

  std::string path_;
  std::string label_;
  int64_t total_steps_;
  int64_t first_step_;
  std::FILE* file_ = nullptr;
  bool tty_ = false;
  bool finished_ = false;
  bool line_open_ = false;  // a \r-redrawn line without its newline yet
  Clock::time_point start_;
  Clock::time_point last_draw_;
  int64_t done_ = 0;  // steps done, counting those before first_step
  std::map<std::string, double> metrics_;
};

}  // namespace rehyat::train
