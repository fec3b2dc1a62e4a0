#include "net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace cachelink {
namespace {

int remaining_ms(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<int64_t>(left, 1 << 30));
}

/// Waits for `events` on fd until the deadline. Returns kNone when ready.
IoResult wait_for(int fd, short events, Deadline deadline) {
  for (;;) {
    int timeout = remaining_ms(deadline);
    if (timeout == 0) return {IoError::kTimeout, "timed out"};
    pollfd pfd{fd, events, 0};
    int rc = ::poll(&pfd, 1, timeout);
    if (rc > 0) return {};
    if (rc == 0) return {IoError::kTimeout, "timed out"};
    if (errno != EINTR) return {IoError::kClosed, std::strerror(errno)};
  }
}

/// Consumes `n` transferred bytes from the front of iov[*index..].
void advance(std::vector<iovec>& iov, size_t* index, size_t n) {
  while (n > 0 && *index < iov.size()) {
    iovec& v = iov[*index];
    if (n >= v.iov_len) {
      n -= v.iov_len;
      ++*index;
    } else {
      v.iov_base = static_cast<char*>(v.iov_base) + n;
      v.iov_len -= n;
      n = 0;
    }
  }
}

sockaddr_in make_addr(uint32_t ip_be, uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = ip_be;
  return addr;
}

}  // namespace

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = other.release();
  }
  return *this;
}

void Fd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Fd::shutdown_both() const {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

bool parse_ipv4(const std::string& ip, uint32_t* out_be) {
  in_addr addr{};
  if (::inet_pton(AF_INET, ip.c_str(), &addr) != 1) return false;
  *out_be = addr.s_addr;
  return true;
}

void tune_socket(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int buf = 4 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

Status listen_tcp(const std::string& ip, uint16_t port, Fd* out, uint16_t* bound_port) {
  uint32_t ip_be = 0;
  if (!parse_ipv4(ip, &ip_be)) return {Code::kParamInvalid, "listen address '" + ip + "' is not an IPv4 address"};
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return {Code::kFailed, std::string("socket(): ") + std::strerror(errno)};
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr = make_addr(ip_be, port);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return {Code::kParamInvalid, "cannot listen on " + ip + ":" + std::to_string(port) + ": " + std::strerror(errno)};
  }
  if (::listen(fd.get(), 128) != 0) {
    return {Code::kFailed, "listen() on " + ip + ":" + std::to_string(port) + ": " + std::strerror(errno)};
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  *bound_port = ntohs(addr.sin_port);
  *out = std::move(fd);
  return Status::Ok();
}

Status connect_tcp(const std::string& ip, uint16_t port, Deadline deadline, Fd* out) {
  const std::string where = ip + ":" + std::to_string(port);
  uint32_t ip_be = 0;
  if (!parse_ipv4(ip, &ip_be)) return {Code::kParamInvalid, "'" + ip + "' is not an IPv4 address"};
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return {Code::kFailed, std::string("socket(): ") + std::strerror(errno)};
  tune_socket(fd.get());
  sockaddr_in addr = make_addr(ip_be, port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS) {
      return {Code::kLinkFailed, "cannot connect to " + where + ": " + std::strerror(errno)};
    }
    IoResult waited = wait_for(fd.get(), POLLOUT, deadline);
    if (!waited.ok()) return {Code::kLinkFailed, "cannot connect to " + where + ": " + waited.message};
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return {Code::kLinkFailed, "cannot connect to " + where + ": " + std::strerror(err)};
  }
  *out = std::move(fd);
  return Status::Ok();
}

namespace {

/// Moves every byte of `iov` through `fd` in one direction before the deadline: sendmsg or recvmsg,
/// up to IOV_MAX pieces a call, waiting in poll() when the socket is not ready.
IoResult move_iov(int fd, std::vector<iovec> iov, Deadline deadline, bool sending) {
  size_t index = 0;
  while (index < iov.size()) {
    if (iov[index].iov_len == 0) {
      ++index;
      continue;
    }
    msghdr msg{};
    msg.msg_iov = &iov[index];
    msg.msg_iovlen = std::min<size_t>(iov.size() - index, IOV_MAX);
    ssize_t n = sending ? ::sendmsg(fd, &msg, MSG_NOSIGNAL) : ::recvmsg(fd, &msg, 0);
    if (n == 0 && !sending) return {IoError::kClosed, "connection closed by peer"};
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        IoResult waited = wait_for(fd, sending ? POLLOUT : POLLIN, deadline);
        if (!waited.ok()) return waited;
        continue;
      }
      return {IoError::kClosed, std::strerror(errno)};
    }
    advance(iov, &index, static_cast<size_t>(n));
  }
  return {};
}

}  // namespace

IoResult sendv_all(int fd, std::vector<iovec> iov, Deadline deadline) {
  return move_iov(fd, std::move(iov), deadline, true);
}

IoResult send_all(int fd, const void* data, size_t len, Deadline deadline) {
  return sendv_all(fd, {iovec{const_cast<void*>(data), len}}, deadline);
}

IoResult recvv_all(int fd, std::vector<iovec> iov, Deadline deadline) {
  return move_iov(fd, std::move(iov), deadline, false);
}

IoResult recv_all(int fd, void* data, size_t len, Deadline deadline) {
  return recvv_all(fd, {iovec{data, len}}, deadline);
}

IoResult discard(int fd, uint64_t len, Deadline deadline) {
  char sink[65536];
  while (len > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(len, sizeof(sink)));
    IoResult r = recv_all(fd, sink, chunk, deadline);
    if (!r.ok()) return r;
    len -= chunk;
  }
  return {};
}

IoResult wait_readable(int fd, int wake_fd, int64_t timeout_ms) {
  const Deadline deadline = timeout_ms < 0 ? Deadline::max() : deadline_in_ms(timeout_ms);
  for (;;) {
    pollfd pfds[2] = {{fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    const int timeout = timeout_ms < 0 ? -1 : remaining_ms(deadline);
    if (timeout_ms >= 0 && timeout == 0) return {IoError::kTimeout, "timed out"};
    int rc = ::poll(pfds, wake_fd >= 0 ? 2 : 1, timeout);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return {IoError::kClosed, std::strerror(errno)};
    }
    if (wake_fd >= 0 && (pfds[1].revents & POLLIN) != 0) return {IoError::kWoken, "engine stopping"};
    if (pfds[0].revents != 0) return {};
  }
}

}  // namespace cachelink
