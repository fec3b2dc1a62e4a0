#include "shm.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace cachelink {
namespace {

std::string errno_text() { return std::strerror(errno); }

class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

Status map_fd(int fd, const std::string& path, uint64_t size, uint8_t** out) {
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (addr == MAP_FAILED) {
    return {Code::kOutOfMemory, "cannot map " + path + ": " + errno_text()};
  }
  *out = static_cast<uint8_t*>(addr);
  return Status::Ok();
}

}  // namespace

int open_nofollow(const std::string& path, int flags, mode_t mode) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  FdCloser dirfd(::open(dir.c_str(), O_DIRECTORY | O_PATH | O_CLOEXEC));
  if (dirfd.get() < 0) return -1;
  return ::openat(dirfd.get(), name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
}

SharedMapping::~SharedMapping() {
  if (data_ != nullptr && size_ > 0) ::munmap(data_, size_);
}

Status SharedMapping::create(const std::string& path, uint64_t size, std::shared_ptr<SharedMapping>* out) {
  FdCloser fd(open_nofollow(path, O_RDWR | O_CREAT | O_EXCL, 0600));
  if (fd.get() < 0) {
    return {Code::kParamInvalid, "cannot create pool file " + path + ": " + errno_text()};
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    std::string why = errno_text();
    ::unlink(path.c_str());
    return {Code::kOutOfMemory, "cannot size pool file " + path + ": " + why};
  }
  // Reserve the pages now so that a too-small /dev/shm fails here, not with SIGBUS on first touch.
  int rc = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(size));
  if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
    ::unlink(path.c_str());
    return {Code::kOutOfMemory,
            "cannot reserve " + std::to_string(size) + " bytes for pool file " + path + ": " + std::strerror(rc)};
  }
  uint8_t* data = nullptr;
  Status st = map_fd(fd.get(), path, size, &data);
  if (!st.ok()) {
    ::unlink(path.c_str());
    return st;
  }
  out->reset(new SharedMapping(path, data, size));  // private constructor: make_shared cannot reach it
  return Status::Ok();
}

Status SharedMapping::open(const std::string& path, uint64_t expected_size, std::shared_ptr<SharedMapping>* out) {
  FdCloser fd(open_nofollow(path, O_RDWR));
  if (fd.get() < 0) {
    return {Code::kKvCacheNotExist, "cannot open pool file " + path + ": " + errno_text()};
  }
  struct stat info{};
  if (::fstat(fd.get(), &info) != 0) return {Code::kFailed, "cannot stat " + path + ": " + errno_text()};
  if (!S_ISREG(info.st_mode)) return {Code::kParamInvalid, "pool file " + path + " is not a regular file"};
  auto size = static_cast<uint64_t>(info.st_size);
  if (expected_size != 0 && size != expected_size) {
    return {Code::kParamInvalid,
            "pool file " + path + " has " + std::to_string(size) + " bytes, expected " + std::to_string(expected_size)};
  }
  if (size == 0) return {Code::kParamInvalid, "pool file " + path + " is empty"};
  uint8_t* data = nullptr;
  CL_RETURN_IF_ERROR(map_fd(fd.get(), path, size, &data));
  out->reset(new SharedMapping(path, data, size));
  return Status::Ok();
}

Status SharedMapping::open_peer(const std::string& dir, const std::string& name, uint64_t expected_size,
                                std::shared_ptr<SharedMapping>* out) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    return {Code::kParamInvalid, "peer pool '" + name + "' is not a file name"};
  }
  if (expected_size == 0) return {Code::kParamInvalid, "peer pool " + name + " has no size"};
  const std::string path = dir + "/" + name;
  FdCloser fd(open_nofollow(path, O_RDWR));
  if (fd.get() < 0) return {Code::kKvCacheNotExist, "cannot open peer pool " + path + ": " + errno_text()};
  struct stat info{};
  if (::fstat(fd.get(), &info) != 0) return {Code::kFailed, "cannot stat " + path + ": " + errno_text()};
  if (!S_ISREG(info.st_mode)) return {Code::kParamInvalid, "peer pool " + path + " is not a regular file"};
  if (info.st_uid != ::geteuid()) return {Code::kParamInvalid, "peer pool " + path + " belongs to another user"};
  if (static_cast<uint64_t>(info.st_size) != expected_size) {
    return {Code::kParamInvalid, "peer pool " + path + " has " + std::to_string(info.st_size) + " bytes, advertised " +
                                     std::to_string(expected_size)};
  }
  uint8_t* data = nullptr;
  CL_RETURN_IF_ERROR(map_fd(fd.get(), path, expected_size, &data));
  out->reset(new SharedMapping(path, data, expected_size));
  return Status::Ok();
}

void SharedMapping::unlink_file() const { ::unlink(path_.c_str()); }

}  // namespace cachelink
