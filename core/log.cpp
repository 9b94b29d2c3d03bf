#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace rehyat::log {

namespace {
std::shared_ptr<spdlog::logger> make_logger() {
  auto l = spdlog::stderr_color_mt("rehyat");
  l->set_pattern("[%H:%M:%S.%e] [rehyat] [%^%l%$] %v");
  return l;
}
}  // namespace

std::shared_ptr<spdlog::logger> logger() {
  static std::shared_ptr<spdlog::logger> l = make_logger();
  return l;
}

void set_rank(int rank, int world_size) {
  logger()->set_pattern(fmt::format("[%H:%M:%S.%e] [rehyat r{}/{}] [%^%l%$] %v", rank, world_size));
}

void set_level(const std::string& level) {
  auto lv = spdlog::level::from_str(level);
  logger()->set_level(lv);
}

}  // namespace rehyat::log
