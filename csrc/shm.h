// Named shared-memory files mapped into the process (RAII).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "status.h"

namespace cachelink {

/// A file in a shared-memory directory (default /dev/shm), mapped read-write and shared.
/// The mapping lives as long as the object; the file is removed only by `unlink_file()`.
/// Opens `path` with openat() on its folder and O_NOFOLLOW on its last component (a planted symlink fails with
/// ELOOP); returns the descriptor or -1 with errno set.
int open_nofollow(const std::string& path, int flags, mode_t mode = 0);

class SharedMapping {
 public:
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  ~SharedMapping();

  /// Creates `path` (mode 0600, must not exist) of `size` bytes and maps it.
  static Status create(const std::string& path, uint64_t size, std::shared_ptr<SharedMapping>* out);
  /// Maps an existing file of ours; `expected_size` 0 accepts any size.
  static Status open(const std::string& path, uint64_t expected_size, std::shared_ptr<SharedMapping>* out);
  /// Maps a pool file a same-host peer advertised: `name` must be a plain file name inside `dir` (no slash, no
  /// "." or ".."), opened without following a symlink, a regular file owned by this process's user, of exactly
  /// `expected_size` bytes. Anything else is refused (the link falls back to TCP).
  static Status open_peer(const std::string& dir, const std::string& name, uint64_t expected_size,
                          std::shared_ptr<SharedMapping>* out);

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  void unlink_file() const;

 private:
  SharedMapping(std::string path, uint8_t* data, uint64_t size) : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  uint8_t* data_;
  uint64_t size_;
};

}  // namespace cachelink
