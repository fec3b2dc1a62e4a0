// TCP sockets with deadlines: every blocking operation waits in poll() (no busy loop) and is bounded.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "status.h"

namespace cachelink {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

inline Deadline deadline_in_ms(int64_t ms) { return Clock::now() + std::chrono::milliseconds(ms); }

/// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset();
  /// Wakes any thread blocked on this socket (read/write return 0 or an error) without closing it.
  void shutdown_both() const;

 private:
  int fd_ = -1;
};

/// What a failed socket operation means for the link.
enum class IoError { kNone, kTimeout, kClosed, kWoken, kTampered };

struct IoResult {
  IoError error = IoError::kNone;
  std::string message;
  bool ok() const { return error == IoError::kNone; }
};

/// Parses "a.b.c.d" into a sockaddr-ready value; false if it is not an IPv4 address.
bool parse_ipv4(const std::string& ip, uint32_t* out_be);

Status listen_tcp(const std::string& ip, uint16_t port, Fd* out, uint16_t* bound_port);
/// Connects within the deadline; `what` names the peer in messages ("cluster 7 at 127.0.0.1:26000").
Status connect_tcp(const std::string& ip, uint16_t port, Deadline deadline, Fd* out);
void tune_socket(int fd);

/// Sends/receives exactly the given bytes before the deadline. `wake_fd` (>= 0) aborts the wait.
IoResult send_all(int fd, const void* data, size_t len, Deadline deadline);
IoResult sendv_all(int fd, std::vector<iovec> iov, Deadline deadline);
IoResult recv_all(int fd, void* data, size_t len, Deadline deadline);
IoResult recvv_all(int fd, std::vector<iovec> iov, Deadline deadline);
/// Receives `len` bytes and throws them away (drains a rejected payload).
IoResult discard(int fd, uint64_t len, Deadline deadline);
/// Waits until `fd` is readable or `wake_fd` is signalled, at most `timeout_ms` (< 0: no limit; kTimeout after).
IoResult wait_readable(int fd, int wake_fd, int64_t timeout_ms = -1);

}  // namespace cachelink
