// The control channel (see dist_rendezvous.h): rendezvous over TCP or a shared file, the
// star of sockets around rank 0, its channel thread, all_gather and dead-peer reports.
//
// Wire format: frames of [u32 length, big endian][u8 type][body]; the length counts type
// and body. Integers in bodies are u32 big endian, strings are a u32 length then bytes.
//   Hello    rank>0 -> 0   magic, version, rank, world, pid, host
//   Welcome  0 -> rank     world
//   Reject   0 -> rank     reason (then rank 0 closes the socket)
//   Gather   rank -> 0     tag, timeout in ms, payload
//   Gathered 0 -> rank     tag, world payloads
//   Timeout  0 -> rank     tag, timeout in ms, missing ranks
//   PeerGone 0 -> rank     rank, finished flag, reason
//   Failure  rank -> 0     reason (0 relays it as PeerGone)
//   Bye      either way    (a goodbye: the sender finished normally)
#include "train/dist_rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "core/atomic_file.h"
#include "core/check.h"

namespace rehyat::dist {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x52485954;  // "RHYT"
constexpr uint32_t kVersion = 1;
constexpr size_t kMaxFrameBytes = size_t(64) << 20;
constexpr int kPollMs = 50;
// How much longer than the timeout a rank waits for rank 0's verdict on a tag before it
// gives up on rank 0 itself.
constexpr double kVerdictGraceSeconds = 5;
// How long a closing channel waits for its peers to close their ends (see drain_and_close).
constexpr double kDrainSeconds = 0.5;

enum class Msg : uint8_t { Hello = 1, Welcome, Reject, Gather, Gathered, Timeout, PeerGone, Failure, Bye };

double seconds_until(Clock::time_point deadline) {
  return std::chrono::duration<double>(deadline - Clock::now()).count();
}
Clock::time_point after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// --- encoding -------------------------------------------------------------------------

struct Writer {
  std::string bytes;
  Writer& u32(uint32_t v) {
    const uint32_t be = htonl(v);
    bytes.append(reinterpret_cast<const char*>(&be), 4);
    return *this;
  }
  Writer& str(const std::string& s) {
    u32(uint32_t(s.size()));
    bytes += s;
    return *this;
  }
};

struct Reader {
  const std::string& bytes;
  size_t pos = 0;
  uint32_t u32() {
    REHYAT_CHECK(pos + 4 <= bytes.size(), "control channel: truncated message");
    uint32_t be;
    std::memcpy(&be, bytes.data() + pos, 4);
    pos += 4;
    return ntohl(be);
  }
  std::string str() {
    const uint32_t n = u32();
    REHYAT_CHECK(pos + n <= bytes.size(), "control channel: truncated message");
    std::string s = bytes.substr(pos, n);
    pos += n;
    return s;
  }
};

struct Frame {
  Msg type;
  std::string body;
};

// Bytes received on one socket, cut into frames.
struct FrameBuffer {
  std::string pending;
  // The next complete frame; throws on a frame that cannot be ours.
  std::optional<Frame> next() {
    if (pending.size() < 5) return std::nullopt;
    uint32_t be;
    std::memcpy(&be, pending.data(), 4);
    const uint32_t length = ntohl(be);
    REHYAT_CHECK(length >= 1 && length <= kMaxFrameBytes, "control channel: bad frame length {}", length);
    if (pending.size() < 4 + size_t(length)) return std::nullopt;
    Frame f{Msg(uint8_t(pending[4])), pending.substr(5, length - 1)};
    pending.erase(0, 4 + size_t(length));
    return f;
  }
};

// --- sockets --------------------------------------------------------------------------

bool send_all(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += size_t(n);
  }
  return true;
}

bool send_frame(int fd, Msg type, const std::string& body) {
  std::string frame = Writer().u32(uint32_t(body.size() + 1)).bytes;
  frame += char(type);
  frame += body;
  return send_all(fd, frame);
}

// Reads what is there (after poll said so). False at the end of the stream or on an error.
bool receive_some(int fd, FrameBuffer& buffer) {
  char chunk[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buffer.pending.append(chunk, size_t(n));
    return true;
  }
}

// Waits for one frame until `deadline`; nullopt on timeout or a closed socket (`closed` tells).
std::optional<Frame> read_frame(int fd, FrameBuffer& buffer, Clock::time_point deadline, bool& closed) {
  closed = false;
  for (;;) {
    if (std::optional<Frame> f = buffer.next()) return f;
    const double left = seconds_until(deadline);
    if (left <= 0) return std::nullopt;
    pollfd p{fd, POLLIN, 0};
    const int rc = ::poll(&p, 1, int(std::min(left * 1000, 200.0)) + 1);
    if (rc < 0 && errno != EINTR) {
      closed = true;
      return std::nullopt;
    }
    if (rc > 0 && !receive_some(fd, buffer)) {
      closed = true;
      return std::nullopt;
    }
  }
}

void set_socket_options(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  const int idle = 10, interval = 5, count = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
  timeval send_timeout{10, 0};  // a peer that stops reading cannot block a sender for ever
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
}

void set_blocking(int fd, bool blocking) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  ::fcntl(fd, F_SETFL, blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK);
}

// One connection attempt to host:port within `seconds`; -1 with `error` set on failure.
int try_connect(const std::string& host, int port, double seconds, std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int gai = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (gai != 0) {
    error = fmt::format("cannot resolve '{}': {}", host, gai_strerror(gai));
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = found; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    set_blocking(fd, false);
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, std::max(1, int(seconds * 1000)));
      int so_error = 0;
      socklen_t len = sizeof so_error;
      if (rc == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) == 0 && so_error == 0) {
        rc = 0;
      } else {
        error = rc == 0 ? std::string("connection attempt timed out") : std::strerror(so_error ? so_error : errno);
        rc = -1;
      }
    } else if (rc < 0) {
      error = std::strerror(errno);
    }
    if (rc != 0) {
      ::close(fd);
      fd = -1;
      continue;
    }
    set_blocking(fd, true);
    set_socket_options(fd);
  }
  ::freeaddrinfo(found);
  return fd;
}

// A listening socket on every interface (IPv6 dual stack where there is IPv6); port 0 asks
// for an ephemeral port. Returns the fd and sets `port`.
int listen_on(int& port, int rank) {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1, zero = 0;
  int rc = -1;
  if (fd >= 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(uint16_t(port));
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (rc != 0 && errno == EADDRINUSE) {
      ::close(fd);
      REHYAT_FAIL("rank {}: cannot listen for the rendezvous on port {}: it is in use (another run? set MASTER_PORT "
                  "to a free port)",
                  rank, port);
    }
    if (rc != 0) ::close(fd);
  }
  if (fd < 0 || rc != 0) {  // no IPv6: plain IPv4
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REHYAT_CHECK(fd >= 0, "rank {}: cannot create a socket: {}", rank, std::strerror(errno));
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(uint16_t(port));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      const int err = errno;
      ::close(fd);
      REHYAT_FAIL("rank {}: cannot listen for the rendezvous on port {}: {}{}", rank, port, std::strerror(err),
                  err == EADDRINUSE ? " (another run? set MASTER_PORT to a free port)" : "");
    }
  }
  REHYAT_CHECK(::listen(fd, 1024) == 0, "rank {}: cannot listen on port {}: {}", rank, port, std::strerror(errno));
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                     : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return fd;
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

std::string rank_list(const std::vector<int>& ranks) {
  return fmt::format("{} {}", ranks.size() == 1 ? "rank" : "ranks", fmt::join(ranks, ", "));
}

std::string loss_text(const PeerLoss& loss) {
  if (loss.finished) return fmt::format("rank {} has already finished (it closed its channel normally)", loss.rank);
  return fmt::format("rank {} went away: {}", loss.rank, loss.reason);
}

// The rendezvous file: "rehyat-rendezvous 1 <address> <port> <world>".
struct FileRecord {
  std::string address;
  int port = 0;
  int world = 0;
};
std::optional<FileRecord> parse_file_record(const std::string& text) {
  std::istringstream in(text);
  std::string magic;
  int version = 0;
  FileRecord r;
  if (!(in >> magic >> version >> r.address >> r.port >> r.world)) return std::nullopt;
  if (magic != "rehyat-rendezvous" || version != 1 || r.port <= 0 || r.world <= 0) return std::nullopt;
  return r;
}

struct Gather {
  std::vector<std::optional<std::string>> parts;
  Clock::time_point first;
  double timeout_seconds = 0;
};

}  // namespace

std::string seconds_text(double seconds) { return fmt::format("{:g} s", seconds); }

// --- state ----------------------------------------------------------------------------

struct ControlChannel::State {
  int rank = 0, world = 1;
  std::string file_path, file_text;  // rank 0 with a file rendezvous: what it wrote
  std::vector<int> fds;              // [world] sockets: rank 0 to each rank, others to rank 0 at [0]; -1 = none
  std::vector<FrameBuffer> buffers;  // [world]
  int wake[2] = {-1, -1};            // a byte here stops the channel thread
  std::thread thread;

  mutable std::mutex mutex;  // everything below; taken before send_mutex
  std::condition_variable changed;
  std::mutex send_mutex;
  std::map<std::string, int> tag_counts;                       // tag -> calls so far (wire tag "tag#n")
  std::map<std::string, Gather> gathers;                       // rank 0: tags being collected
  std::map<std::string, std::vector<std::string>> results;    // wire tag -> payloads
  std::map<std::string, std::vector<int>> timed_out;           // wire tag -> missing ranks
  std::vector<std::optional<PeerLoss>> lost;                   // [world]
  std::vector<PeerLoss> losses;                                // in the order they became known
  bool finished = false;

  ~State() { close_all(); }

  void send_to(int peer, Msg type, const std::string& body) {
    std::lock_guard<std::mutex> lock(send_mutex);
    if (fds[size_t(peer)] >= 0) send_frame(fds[size_t(peer)], type, body);
  }
  void send_to_all(Msg type, const std::string& body, int except = -1) {
    for (int r = 0; r < world; ++r)
      if (r != rank && r != except) send_to(r, type, body);
  }

  // The earliest loss, preferring real losses over goodbyes (caller holds mutex): the
  // earliest is the cause, later ones are usually ranks that failed because of it.
  std::optional<PeerLoss> first_loss() const {
    std::optional<PeerLoss> finished_one;
    for (const PeerLoss& l : losses) {
      if (!l.finished) return l;
      if (!finished_one) finished_one = l;
    }
    return finished_one;
  }

  // Records a gone rank (the first word on it stays: a goodbye or a failure report is
  // followed by the end of its stream); rank 0 tells the others (caller holds mutex).
  void mark_lost(int peer, PeerLoss loss) {
    if (lost[size_t(peer)]) return;
    lost[size_t(peer)] = loss;
    losses.push_back(loss);
    if (rank == 0) send_to_all(Msg::PeerGone, Writer().u32(uint32_t(peer)).u32(loss.finished).str(loss.reason).bytes, peer);
    changed.notify_all();
  }

  // Rank 0: completes a tag when every part is in (caller holds mutex).
  void maybe_complete(const std::string& wire) {
    auto it = gathers.find(wire);
    if (it == gathers.end()) return;
    for (const std::optional<std::string>& p : it->second.parts)
      if (!p) return;
    std::vector<std::string> parts;
    Writer w;
    w.str(wire).u32(uint32_t(world));
    for (const std::optional<std::string>& p : it->second.parts) {
      parts.push_back(*p);
      w.str(*p);
    }
    gathers.erase(it);
    send_to_all(Msg::Gathered, w.bytes);
    results[wire] = std::move(parts);
    changed.notify_all();
  }

  // Rank 0: adds one rank's part (caller holds mutex).
  void add_part(int from, const std::string& wire, double timeout_seconds, const std::string& payload) {
    if (auto t = timed_out.find(wire); t != timed_out.end()) {  // too late: that tag has failed
      if (from != 0)
        send_to(from, Msg::Timeout, [&] {
          Writer w;
          w.str(wire).u32(uint32_t(timeout_seconds * 1000)).u32(uint32_t(t->second.size()));
          for (int m : t->second) w.u32(uint32_t(m));
          return w.bytes;
        }());
      return;
    }
    Gather& g = gathers[wire];
    if (g.parts.empty()) {
      g.parts.resize(size_t(world));
      g.first = Clock::now();
      g.timeout_seconds = timeout_seconds;
    }
    g.parts[size_t(from)] = payload;
    maybe_complete(wire);
  }

  // Rank 0: fails the tags whose time is up, naming the ranks that never arrived.
  void expire_gathers() {
    std::lock_guard<std::mutex> lock(mutex);
    const Clock::time_point now = Clock::now();
    for (auto it = gathers.begin(); it != gathers.end();) {
      const Gather& g = it->second;
      if (std::chrono::duration<double>(now - g.first).count() < g.timeout_seconds) {
        ++it;
        continue;
      }
      std::vector<int> missing;
      for (int r = 0; r < world; ++r)
        if (!g.parts[size_t(r)]) missing.push_back(r);
      Writer w;
      w.str(it->first).u32(uint32_t(g.timeout_seconds * 1000)).u32(uint32_t(missing.size()));
      for (int m : missing) w.u32(uint32_t(m));
      send_to_all(Msg::Timeout, w.bytes);
      timed_out[it->first] = missing;
      it = gathers.erase(it);
      changed.notify_all();
    }
  }

  void handle(int from, const Frame& f) {
    std::lock_guard<std::mutex> lock(mutex);
    Reader in{f.body};
    switch (f.type) {
      case Msg::Gather: {  // rank 0
        const std::string wire = in.str();
        const double timeout_seconds = in.u32() / 1000.0;
        add_part(from, wire, timeout_seconds, in.str());
        break;
      }
      case Msg::Gathered: {
        const std::string wire = in.str();
        std::vector<std::string> parts(in.u32());
        for (std::string& p : parts) p = in.str();
        results[wire] = std::move(parts);
        changed.notify_all();
        break;
      }
      case Msg::Timeout: {
        const std::string wire = in.str();
        in.u32();
        std::vector<int> missing(in.u32());
        for (int& m : missing) m = int(in.u32());
        timed_out[wire] = missing;
        changed.notify_all();
        break;
      }
      case Msg::PeerGone: {
        const int peer = int(in.u32());
        PeerLoss loss{peer, "", in.u32() != 0};
        loss.reason = in.str();
        if (peer >= 0 && peer < world) mark_lost(peer, loss);
        break;
      }
      case Msg::Failure:  // rank 0: relayed at once so the others can name the reason
        mark_lost(from, {from, "it failed: " + in.str(), false});
        break;
      case Msg::Bye:
        mark_lost(from, {from, "it finished", true});
        break;
      default:
        REHYAT_FAIL("control channel: unexpected message {} from rank {}", int(f.type), from);
    }
  }

  void connection_closed(int peer, const std::string& why) {
    {
      std::lock_guard<std::mutex> send_lock(send_mutex);
      ::close(fds[size_t(peer)]);
      fds[size_t(peer)] = -1;
    }
    std::lock_guard<std::mutex> lock(mutex);
    mark_lost(peer, {peer, why, false});
  }

  // Handles the complete frames in peer's buffer; false when it sent garbage (then closed).
  bool handle_buffered(int peer) {
    try {
      while (std::optional<Frame> f = buffers[size_t(peer)].next()) handle(peer, *f);
    } catch (const Error& e) {
      connection_closed(peer, fmt::format("it sent garbage ({})", e.what()));
      return false;
    }
    return true;
  }

  // The channel thread: reads every socket until told to stop.
  void run() {
    // Frames that arrived with the rendezvous answer (a quick "rank R went away") first.
    for (int r = 0; r < world; ++r)
      if (fds[size_t(r)] >= 0) handle_buffered(r);
    for (;;) {
      std::vector<pollfd> polled = {{wake[0], POLLIN, 0}};
      std::vector<int> peers = {-1};
      for (int r = 0; r < world; ++r)
        if (fds[size_t(r)] >= 0) {
          polled.push_back({fds[size_t(r)], POLLIN, 0});
          peers.push_back(r);
        }
      const int rc = ::poll(polled.data(), polled.size(), kPollMs);
      if (rc < 0 && errno != EINTR) return;
      if (polled[0].revents) return;
      for (size_t i = 1; i < polled.size() && rc > 0; ++i) {
        if (!polled[i].revents) continue;
        const int peer = peers[i];
        if (!receive_some(fds[size_t(peer)], buffers[size_t(peer)])) {
          connection_closed(peer, "its connection closed without a goodbye (the process exited or was killed)");
          continue;
        }
        handle_buffered(peer);
      }
      if (rank == 0) expire_gathers();
    }
  }

  void start_thread() {
    REHYAT_CHECK(::pipe2(wake, O_CLOEXEC) == 0, "control channel: pipe: {}", std::strerror(errno));
    thread = std::thread([this] { run(); });
  }

  // Closing a socket with unread input makes the kernel send a reset, and a reset can make
  // the peer drop what we sent last (a goodbye, a relayed "rank R went away"). So: send our
  // end of stream, read until the peers close theirs (their channel threads do at once),
  // at most kDrainSeconds, then close.
  void drain_and_close() {
    for (int fd : fds)
      if (fd >= 0) ::shutdown(fd, SHUT_WR);
    const Clock::time_point deadline = after(kDrainSeconds);
    for (;;) {
      std::vector<pollfd> open;
      for (int fd : fds)
        if (fd >= 0) open.push_back({fd, POLLIN, 0});
      const double left = seconds_until(deadline);
      if (open.empty() || left <= 0) break;
      if (::poll(open.data(), open.size(), int(left * 1000) + 1) <= 0) continue;
      for (const pollfd& p : open) {
        if (!p.revents) continue;
        char chunk[4096];
        const ssize_t n = ::recv(p.fd, chunk, sizeof chunk, 0);
        if (n <= 0 && !(n < 0 && errno == EINTR))
          for (int& fd : fds)
            if (fd == p.fd) ::close(std::exchange(fd, -1));
      }
    }
    for (int& fd : fds)
      if (fd >= 0) ::close(std::exchange(fd, -1));
  }

  void close_all() {
    if (thread.joinable()) {
      const char byte = 1;
      (void)!::write(wake[1], &byte, 1);
      thread.join();
    }
    for (int& fd : wake)
      if (fd >= 0) ::close(std::exchange(fd, -1));
    std::lock_guard<std::mutex> lock(send_mutex);
    drain_and_close();
    if (!file_path.empty()) {  // only our own file: a newer run may have replaced it
      std::ifstream in(file_path);
      std::stringstream text;
      text << in.rdbuf();
      if (in && text.str() == file_text) std::filesystem::remove(file_path);
      file_path.clear();
    }
  }
};

// --- rendezvous -----------------------------------------------------------------------

namespace {

using State = ControlChannel::State;

void rendezvous_as_rank0(State& s, const DistEnv& env, double timeout_seconds) {
  const Clock::time_point deadline = after(timeout_seconds);
  int port = env.rendezvous_file.empty() ? env.master_port : 0;
  const int listen_fd = listen_on(port, 0);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{listen_fd};
  if (!env.rendezvous_file.empty()) {
    s.file_text = fmt::format("rehyat-rendezvous 1 {} {} {}\n",
                              env.master_addr.empty() ? host_name() : env.master_addr, port, s.world);
    publish_rendezvous_file(env.rendezvous_file, s.file_text);
    s.file_path = env.rendezvous_file;
  }
  const std::string where = env.rendezvous_file.empty() ? fmt::format("port {}", port)
                                                        : fmt::format("port {} (published in {})", port,
                                                                      env.rendezvous_file);
  struct Pending {
    int fd;
    FrameBuffer buffer;
  };
  std::vector<Pending> pending;
  int joined = 0;
  auto reject = [&](int fd, const std::string& reason) {
    send_frame(fd, Msg::Reject, Writer().str(reason).bytes);
    ::close(fd);
  };
  while (joined < s.world - 1) {
    if (seconds_until(deadline) <= 0) {
      std::vector<int> missing;
      for (int r = 1; r < s.world; ++r)
        if (s.fds[size_t(r)] < 0) missing.push_back(r);
      const std::string message =
          fmt::format("rank 0: rendezvous on {}: {} did not connect within {} (not started, or a different "
                      "MASTER_ADDR / MASTER_PORT / REHYAT_RENDEZVOUS_FILE?)",
                      where, rank_list(missing), seconds_text(timeout_seconds));
      for (int r = 1; r < s.world; ++r)
        if (s.fds[size_t(r)] >= 0) reject(std::exchange(s.fds[size_t(r)], -1), message);
      for (Pending& p : pending) ::close(p.fd);
      REHYAT_FAIL("{}", message);
    }
    std::vector<pollfd> polled = {{listen_fd, POLLIN, 0}};
    for (const Pending& p : pending) polled.push_back({p.fd, POLLIN, 0});
    if (::poll(polled.data(), polled.size(), kPollMs) <= 0) continue;
    if (polled[0].revents & POLLIN) {
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        set_socket_options(fd);
        pending.push_back({fd, {}});
      }
    }
    for (size_t i = 1; i < polled.size(); ++i) {
      if (!polled[i].revents) continue;
      Pending& p = pending[i - 1];
      std::optional<Frame> hello;
      bool bad = !receive_some(p.fd, p.buffer);
      try {
        if (!bad) hello = p.buffer.next();
      } catch (const Error&) {
        bad = true;
      }
      if (bad || (hello && hello->type != Msg::Hello)) {
        ::close(std::exchange(p.fd, -1));
        continue;
      }
      if (!hello) continue;
      Reader in{hello->body};
      try {
        const uint32_t magic = in.u32(), version = in.u32();
        const int rank = int(in.u32()), world = int(in.u32());
        in.u32();  // pid
        const std::string host = in.str();
        if (magic != kMagic || version != kVersion) {
          ::close(std::exchange(p.fd, -1));
        } else if (world != s.world) {
          reject(std::exchange(p.fd, -1), fmt::format("rank 0 runs a world of {} ranks, rank {} (on {}) expects {}",
                                                      s.world, rank, host, world));
        } else if (rank < 1 || rank >= s.world || s.fds[size_t(rank)] >= 0) {
          reject(std::exchange(p.fd, -1),
                 fmt::format("rank {} (on {}) is already connected or outside [1, {})", rank, host, s.world));
        } else {
          s.fds[size_t(rank)] = std::exchange(p.fd, -1);
          s.buffers[size_t(rank)] = std::move(p.buffer);
          ++joined;
        }
      } catch (const Error&) {
        ::close(std::exchange(p.fd, -1));
      }
    }
    std::erase_if(pending, [](const Pending& p) { return p.fd < 0; });
  }
  for (Pending& p : pending) ::close(p.fd);
  for (int r = 1; r < s.world; ++r) send_frame(s.fds[size_t(r)], Msg::Welcome, Writer().u32(uint32_t(s.world)).bytes);
}

void rendezvous_as_peer(State& s, const DistEnv& env, double timeout_seconds) {
  const Clock::time_point deadline = after(timeout_seconds);
  std::string last_error = "no attempt yet", target;
  bool file_seen = false;
  double backoff = 0.05;
  while (seconds_until(deadline) > 0) {
    std::string host = env.master_addr;
    int port = env.master_port;
    if (!env.rendezvous_file.empty()) {
      std::ifstream in(env.rendezvous_file);
      std::stringstream text;
      text << in.rdbuf();
      std::optional<FileRecord> record = in ? parse_file_record(text.str()) : std::nullopt;
      if (!record || record->world != s.world) {
        if (record)
          last_error = fmt::format("the file names a world of {} ranks, not {}", record->world, s.world);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      file_seen = true;
      host = record->address;
      port = record->port;
    }
    target = fmt::format("{}:{}", host, port);
    const int fd = try_connect(host, port, std::min(2.0, std::max(0.01, seconds_until(deadline))), last_error);
    if (fd < 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(std::min(backoff, std::max(0.0, seconds_until(deadline)))));
      backoff = std::min(backoff * 2, 0.5);
      continue;
    }
    Writer hello;
    hello.u32(kMagic).u32(kVersion).u32(uint32_t(s.rank)).u32(uint32_t(s.world)).u32(uint32_t(::getpid()))
        .str(host_name());
    FrameBuffer buffer;
    bool closed = false;
    std::optional<Frame> answer;
    if (send_frame(fd, Msg::Hello, hello.bytes)) answer = read_frame(fd, buffer, deadline, closed);
    if (answer && answer->type == Msg::Welcome) {
      s.fds[0] = fd;
      s.buffers[0] = std::move(buffer);
      return;
    }
    ::close(fd);
    if (answer && answer->type == Msg::Reject) {
      Reader in{answer->body};
      REHYAT_FAIL("rank {}: rank 0 at {} refused this rank: {}", s.rank, target, in.str());
    }
    if (!answer && !closed) {
      REHYAT_FAIL("rank {}: connected to rank 0 at {}, but the rendezvous did not complete within {} (other ranks "
                  "missing?)",
                  s.rank, target, seconds_text(timeout_seconds));
    }
    last_error = "rank 0 closed the connection during the rendezvous";
  }
  if (!env.rendezvous_file.empty() && !file_seen)
    REHYAT_FAIL("rank {}: the rendezvous file '{}' did not appear within {} (rank 0 writes it: is rank 0 running, "
                "and is the path on a file system every rank shares?){}",
                s.rank, env.rendezvous_file, seconds_text(timeout_seconds),
                last_error == "no attempt yet" ? "" : "; " + last_error);
  REHYAT_FAIL("rank {}: could not reach rank 0 at {} within {} ({}): is rank 0 running, and are MASTER_ADDR and "
              "MASTER_PORT right on every rank?",
              s.rank, target.empty() ? fmt::format("{}:{}", env.master_addr, env.master_port) : target,
              seconds_text(timeout_seconds), last_error);
}

}  // namespace

// --- ControlChannel ---------------------------------------------------------------------

ControlChannel::ControlChannel(std::unique_ptr<State> state) : state_(std::move(state)) {}

ControlChannel::~ControlChannel() = default;  // State's destructor closes everything (abruptly unless finished)

std::unique_ptr<ControlChannel> ControlChannel::connect(const DistEnv& env, double timeout_seconds) {
  REHYAT_CHECK(timeout_seconds > 0, "rendezvous timeout must be positive, got {}", timeout_seconds);
  REHYAT_CHECK(env.rank >= 0 && env.rank < env.world_size, "rank {} is outside [0, {})", env.rank, env.world_size);
  auto s = std::make_unique<State>();
  s->rank = env.rank;
  s->world = env.world_size;
  s->fds.assign(size_t(s->world), -1);
  s->buffers.resize(size_t(s->world));
  s->lost.resize(size_t(s->world));
  if (s->world > 1) {
    REHYAT_CHECK(!env.master_addr.empty() || !env.rendezvous_file.empty(),
                 "rank {}: no MASTER_ADDR and no REHYAT_RENDEZVOUS_FILE: cannot find rank 0", env.rank);
    if (s->rank == 0)
      rendezvous_as_rank0(*s, env, timeout_seconds);
    else
      rendezvous_as_peer(*s, env, timeout_seconds);
    s->start_thread();
  }
  return std::unique_ptr<ControlChannel>(new ControlChannel(std::move(s)));
}

int ControlChannel::rank() const { return state_->rank; }
int ControlChannel::world_size() const { return state_->world; }

namespace {

// How one all_gather ended (a failure is reported, not thrown, so that both all_gather and
// absent_ranks can use it).
struct GatherOutcome {
  std::vector<std::string> parts;  // filled on success
  std::vector<int> missing;        // rank 0's verdict on a timeout
  std::optional<PeerLoss> loss;    // a rank went away (or finished) first
  bool no_answer = false;          // rank 0 said nothing within timeout + grace
};

GatherOutcome gather(State& s, const std::string& tag, const std::string& payload, double timeout_seconds) {
  REHYAT_CHECK(timeout_seconds > 0, "rank {}: {}: timeout must be positive", s.rank, tag);
  std::unique_lock<std::mutex> lock(s.mutex);
  REHYAT_CHECK(!s.finished, "rank {}: {}: the control channel was already finished", s.rank, tag);
  GatherOutcome outcome;
  const std::string wire = fmt::format("{}#{}", tag, s.tag_counts[tag]++);
  if ((outcome.loss = s.first_loss())) return outcome;
  if (s.rank == 0) {
    s.add_part(0, wire, timeout_seconds, payload);
  } else {
    Writer w;
    w.str(wire).u32(uint32_t(timeout_seconds * 1000)).str(payload);
    s.send_to(0, Msg::Gather, w.bytes);
  }
  const Clock::time_point deadline = after(timeout_seconds + std::min(kVerdictGraceSeconds, timeout_seconds));
  for (;;) {
    if (auto r = s.results.find(wire); r != s.results.end()) {
      outcome.parts = std::move(r->second);
      s.results.erase(r);
      return outcome;
    }
    if (auto t = s.timed_out.find(wire); t != s.timed_out.end()) {
      outcome.missing = t->second;
      s.timed_out.erase(t);
      return outcome;
    }
    if ((outcome.loss = s.first_loss())) return outcome;
    if (Clock::now() >= deadline) {
      outcome.no_answer = true;
      return outcome;
    }
    s.changed.wait_until(lock, std::min(deadline, Clock::now() + std::chrono::milliseconds(200)));
  }
}

}  // namespace

std::vector<std::string> ControlChannel::all_gather(const std::string& tag, const std::string& payload,
                                                    double timeout_seconds) {
  State& s = *state_;
  if (s.world == 1) return {payload};
  GatherOutcome outcome = gather(s, tag, payload, timeout_seconds);
  if (!outcome.missing.empty())
    REHYAT_FAIL("rank {}: {} did not finish within {}: {} did not arrive (hung, or slower than the timeout)", s.rank,
                tag, seconds_text(timeout_seconds), rank_list(outcome.missing));
  if (outcome.loss) REHYAT_FAIL("rank {}: {} cannot finish: {}", s.rank, tag, loss_text(*outcome.loss));
  if (outcome.no_answer)
    REHYAT_FAIL("rank {}: {} did not finish within {} and rank 0 gave no answer (rank 0 hung?)", s.rank, tag,
                seconds_text(timeout_seconds));
  return std::move(outcome.parts);
}

std::vector<int> ControlChannel::absent_ranks(const std::string& tag, double timeout_seconds) {
  State& s = *state_;
  if (s.world == 1) return {};
  GatherOutcome outcome = gather(s, tag, "", timeout_seconds);
  if (outcome.loss) return {outcome.loss->rank};
  if (outcome.no_answer) return {0};
  return outcome.missing;
}

std::string ControlChannel::broadcast(const std::string& tag, const std::string& payload, double timeout_seconds,
                                      int root) {
  REHYAT_CHECK(root >= 0 && root < state_->world, "{}: root {} is outside [0, {})", tag, root, state_->world);
  return all_gather(tag, state_->rank == root ? payload : std::string(), timeout_seconds)[size_t(root)];
}

void ControlChannel::barrier(const std::string& tag, double timeout_seconds) { all_gather(tag, "", timeout_seconds); }

std::optional<PeerLoss> ControlChannel::peer_loss() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->first_loss();
}

void ControlChannel::report_failure(const std::string& reason) {
  State& s = *state_;
  if (s.world == 1) return;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.finished) return;
  if (s.rank == 0)
    s.send_to_all(Msg::PeerGone, Writer().u32(0).u32(0).str("it failed: " + reason).bytes);
  else
    s.send_to(0, Msg::Failure, Writer().str(reason).bytes);
}

void ControlChannel::finish() {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.finished) return;
    s.finished = true;
    if (s.world > 1) s.send_to_all(Msg::Bye, "");
  }
  s.close_all();
}

// --- files and ports ----------------------------------------------------------------------

void publish_rendezvous_file(const std::string& path, const std::string& text) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
  }
  AtomicFileWriter writer(path);
  writer.write(text);
  writer.commit();
}

std::string wait_for_rendezvous_file(const std::string& path, double timeout_seconds, int rank,
                                     const std::function<bool(const std::string&)>& accept) {
  const Clock::time_point deadline = after(timeout_seconds);
  for (;;) {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::stringstream text;
      text << in.rdbuf();
      if (!accept || accept(text.str())) return text.str();
    }
    if (Clock::now() >= deadline)
      REHYAT_FAIL("rank {}: the rendezvous file '{}' did not appear within {} (rank 0 writes it: is rank 0 running, "
                  "and is the path on a file system every rank shares?)",
                  rank, path, seconds_text(timeout_seconds));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int free_tcp_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REHYAT_CHECK(fd >= 0, "cannot create a socket: {}", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const int err = errno;
  ::close(fd);
  REHYAT_CHECK(ok, "cannot find a free TCP port: {}", std::strerror(err));
  return ntohs(addr.sin_port);
}

}  // namespace rehyat::dist
