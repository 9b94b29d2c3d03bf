// Environment detection of a multi-process run (see dist_env.h for the sources and their
// precedence).
#include "train/dist_env.h"

#include <cerrno>
#include <cstdlib>

#include <fmt/format.h>

#include "core/check.h"

namespace rehyat::dist {

namespace {

// The variable's value, nullopt when unset or empty.
std::optional<std::string> get(const EnvLookup& lookup, const std::string& name) {
  std::optional<std::string> v = lookup(name);
  if (v && v->empty()) return std::nullopt;
  return v;
}

int64_t parse_integer(const std::string& name, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  REHYAT_CHECK(errno == 0 && end != value.c_str() && *end == '\0',
               "environment variable {}='{}' is not an integer", name, value);
  return v;
}

// The integer in `name`, nullopt when unset.
std::optional<int64_t> get_integer(const EnvLookup& lookup, const std::string& name) {
  std::optional<std::string> v = get(lookup, name);
  if (!v) return std::nullopt;
  return parse_integer(name, *v);
}

struct Source {
  const char* name;
  const char* rank;
  std::vector<const char*> world;  // first one set wins
  const char* local_rank;
};

// Ranks from one source; false when its rank variable is unset.
bool read_source(const EnvLookup& lookup, const Source& source, DistEnv& env) {
  std::optional<int64_t> rank = get_integer(lookup, source.rank);
  if (!rank) return false;
  std::optional<int64_t> world;
  std::string world_name;
  for (const char* name : source.world) {
    world = get_integer(lookup, name);
    world_name = name;
    if (world) break;
  }
  REHYAT_CHECK(world.has_value(), "environment variable {} is set ({}) but {} is not: cannot tell the world size",
               source.rank, *rank, fmt::join(source.world, " / "));
  REHYAT_CHECK(*world >= 1 && *world <= 1 << 20, "environment variable {}={} must be a positive world size",
               world_name, *world);
  REHYAT_CHECK(*rank >= 0 && *rank < *world, "environment variable {}={} is outside [0, {}) ({}={})", source.rank,
               *rank, *world, world_name, *world);
  std::optional<int64_t> local = get_integer(lookup, source.local_rank);
  std::string local_name = source.local_rank;
  if (!local && std::string(source.name) == "env") {
    if (std::optional<int64_t> local_world = get_integer(lookup, "LOCAL_WORLD_SIZE")) {
      REHYAT_CHECK(*local_world >= 1, "environment variable LOCAL_WORLD_SIZE={} must be positive", *local_world);
      local = *rank % *local_world;
    }
  }
  if (!local) local = *rank;
  REHYAT_CHECK(*local >= 0 && *local < *world, "environment variable {}={} is outside [0, {})", local_name, *local,
               *world);
  env.rank = int(*rank);
  env.world_size = int(*world);
  env.local_rank = int(*local);
  env.source = source.name;
  return true;
}

// Splits at commas outside brackets.
std::vector<std::string> split_top_level(const std::string& text, const std::string& variable) {
  std::vector<std::string> parts;
  std::string current;
  int depth = 0;
  for (char c : text) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    REHYAT_CHECK(depth >= 0 && depth <= 1, "{}='{}': unbalanced '[' ']'", variable, text);
    if (c == ',' && depth == 0) {
      if (!current.empty()) parts.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  REHYAT_CHECK(depth == 0, "{}='{}': unbalanced '[' ']'", variable, text);
  if (!current.empty()) parts.push_back(current);
  return parts;
}

// Expands every bracket group of one host pattern ("r[1-2]n[01-02]").
void expand_pattern(const std::string& pattern, const std::string& variable, const std::string& whole,
                    std::vector<std::string>& out) {
  const size_t open = pattern.find('[');
  if (open == std::string::npos) {
    out.push_back(pattern);
    return;
  }
  const size_t close = pattern.find(']', open);
  REHYAT_CHECK(close != std::string::npos, "{}='{}': unbalanced '[' ']'", variable, whole);
  const std::string prefix = pattern.substr(0, open), rest = pattern.substr(close + 1);
  const std::string body = pattern.substr(open + 1, close - open - 1);
  REHYAT_CHECK(!body.empty(), "{}='{}': empty '[]'", variable, whole);
  size_t start = 0;
  while (start <= body.size()) {
    size_t comma = body.find(',', start);
    if (comma == std::string::npos) comma = body.size();
    const std::string item = body.substr(start, comma - start);
    const size_t dash = item.find('-');
    const std::string lo = item.substr(0, dash), hi = dash == std::string::npos ? lo : item.substr(dash + 1);
    auto digits = [](const std::string& s) {
      return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
    };
    REHYAT_CHECK(digits(lo) && digits(hi), "{}='{}': '{}' is not a number or a range a-b", variable, whole, item);
    const int64_t a = std::stoll(lo), b = std::stoll(hi);
    REHYAT_CHECK(a <= b && b - a < 100000, "{}='{}': bad range '{}'", variable, whole, item);
    for (int64_t i = a; i <= b; ++i)
      expand_pattern(prefix + fmt::format("{:0{}}", i, lo.size()) + rest, variable, whole, out);
    start = comma + 1;
  }
}

}  // namespace

std::vector<std::string> expand_slurm_nodelist(const std::string& nodelist, const std::string& variable) {
  std::vector<std::string> hosts;
  for (const std::string& part : split_top_level(nodelist, variable)) expand_pattern(part, variable, nodelist, hosts);
  return hosts;
}

double dist_timeout_from_env(const EnvLookup& lookup) {
  std::optional<std::string> v = get(lookup, "REHYAT_DIST_TIMEOUT");
  if (!v) return kDefaultTimeoutSeconds;
  char* end = nullptr;
  errno = 0;
  const double seconds = std::strtod(v->c_str(), &end);
  REHYAT_CHECK(errno == 0 && end != v->c_str() && *end == '\0' && seconds > 0,
               "environment variable REHYAT_DIST_TIMEOUT='{}' must be a positive number of seconds", *v);
  return seconds;
}

std::string DistEnv::str() const {
  std::string rendezvous = world_size == 1          ? "none"
                           : rendezvous_file.empty() ? fmt::format("tcp://{}:{}", master_addr, master_port)
                                                     : fmt::format("file {}", rendezvous_file);
  return fmt::format("rank {}/{} (local {}) from {}, rendezvous {}, timeout {:g} s", rank, world_size, local_rank,
                     source, rendezvous, timeout_seconds);
}

DistEnv detect_dist_env(const EnvLookup& lookup) {
  static const std::vector<Source> sources = {
      {"env", "RANK", {"WORLD_SIZE"}, "LOCAL_RANK"},
      {"openmpi", "OMPI_COMM_WORLD_RANK", {"OMPI_COMM_WORLD_SIZE"}, "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"pmi", "PMI_RANK", {"PMI_SIZE"}, "MPI_LOCALRANKID"},
      {"slurm", "SLURM_PROCID", {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"}, "SLURM_LOCALID"},
  };
  DistEnv env;
  for (const Source& source : sources)
    if (read_source(lookup, source, env)) break;

  env.timeout_seconds = dist_timeout_from_env(lookup);
  if (std::optional<int64_t> port = get_integer(lookup, "MASTER_PORT")) {
    REHYAT_CHECK(*port >= 1 && *port <= 65535, "environment variable MASTER_PORT={} is outside 1..65535", *port);
    env.master_port = int(*port);
  }
  env.rendezvous_file = get(lookup, "REHYAT_RENDEZVOUS_FILE").value_or("");
  if (std::optional<std::string> addr = get(lookup, "MASTER_ADDR")) {
    env.master_addr = *addr;
  } else if (env.source == "slurm") {
    for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
      if (std::optional<std::string> list = get(lookup, name)) {
        std::vector<std::string> hosts = expand_slurm_nodelist(*list, name);
        REHYAT_CHECK(!hosts.empty(), "environment variable {}='{}' names no host", name, *list);
        env.master_addr = hosts.front();
        break;
      }
    }
    if (env.master_addr.empty()) env.master_addr = get(lookup, "SLURM_LAUNCH_NODE_IPADDR").value_or("");
  } else if (env.source == "openmpi" && env.rendezvous_file.empty() &&
             get(lookup, "OMPI_COMM_WORLD_LOCAL_SIZE") == get(lookup, "OMPI_COMM_WORLD_SIZE")) {
    env.master_addr = "127.0.0.1";  // every rank on this node (mpirun -np N on one machine)
  }
  REHYAT_CHECK(env.world_size == 1 || !env.master_addr.empty() || !env.rendezvous_file.empty(),
               "rank {} of {} (from {}): MASTER_ADDR is not set and neither is REHYAT_RENDEZVOUS_FILE: set "
               "MASTER_ADDR (and MASTER_PORT) to rank 0's host, or REHYAT_RENDEZVOUS_FILE to a path every rank sees",
               env.rank, env.world_size, env.source);
  return env;
}

DistEnv detect_dist_env() {
  return detect_dist_env([](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  });
}

}  // namespace rehyat::dist
