// Logging through spdlog with a rank-aware prefix: "[rehyat r0/2] ..." once distributed
// training sets the rank, "[rehyat] ..." before that.
#pragma once

#include <spdlog/spdlog.h>

namespace rehyat::log {

void set_rank(int rank, int world_size);
void set_level(const std::string& level);  // "debug", "info", "warn", "error"
std::shared_ptr<spdlog::logger> logger();

template <typename... Args>
void info(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger()->info(fmt, std::forward<Args>(args)...); }
template <typename... Args>
void warn(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger()->warn(fmt, std::forward<Args>(args)...); }
template <typename... Args>
void error(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger()->error(fmt, std::forward<Args>(args)...); }
template <typename... Args>
void debug(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger()->debug(fmt, std::forward<Args>(args)...); }

}  // namespace rehyat::log
