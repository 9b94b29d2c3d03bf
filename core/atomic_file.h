// Atomic file replacement (SPEC §7: checkpoints and resolved configs are written with
// write, fsync, rename). Bytes go to "<path>.tmp.<pid>"; commit() flushes, fsyncs and
// renames it over <path>, so readers see either the old file or the complete new one,
// and a crash or an exception mid-write never destroys what was there. A writer that is
// destroyed without commit() removes its temp file.
//
// Header-only so that every folder can use it without a build-file change.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "core/check.h"

namespace rehyat {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path)
      : path_(std::move(path)), temp_path_(path_ + ".tmp." + std::to_string(::getpid())) {
    file_ = std::fopen(temp_path_.c_str(), "wb");
    REHYAT_CHECK(file_ != nullptr, "cannot write '{}': cannot create temp file '{}': {}", path_, temp_path_,
                 std::strerror(errno));
  }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter() {
    if (file_) std::fclose(file_);
    if (!committed_) std::remove(temp_path_.c_str());
  }

  const std::string& path() const { return path_; }

  void write(const void* data, size_t bytes) {
    REHYAT_CHECK(file_ != nullptr, "cannot write '{}': writer already committed", path_);
    if (bytes == 0) return;
    if (std::fwrite(data, 1, bytes, file_) != bytes)
      REHYAT_FAIL("cannot write '{}': writing temp file '{}' failed: {}", path_, temp_path_, std::strerror(errno));
  }
  void write(const std::string& text) { write(text.data(), text.size()); }

  // Makes the new content durable and visible under path(); the temp file is gone after.
  void commit() {
    REHYAT_CHECK(file_ != nullptr, "cannot write '{}': writer already committed", path_);
    bool synced = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
    int sync_errno = errno;
    bool closed = std::fclose(file_) == 0;
    file_ = nullptr;
    REHYAT_CHECK(synced && closed, "cannot write '{}': flushing temp file '{}' failed: {}", path_, temp_path_,
                 std::strerror(synced ? errno : sync_errno));
    REHYAT_CHECK(std::rename(temp_path_.c_str(), path_.c_str()) == 0, "cannot write '{}': renaming '{}' failed: {}",
                 path_, temp_path_, std::strerror(errno));
    committed_ = true;
    sync_parent_directory();
  }

 private:
  // Persists the rename itself. Best effort: the new file is already in place, so a
  // filesystem that cannot fsync directories is no reason to report failure.
  void sync_parent_directory() const {
    std::filesystem::path parent = std::filesystem::path(path_).parent_path();
    int fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
  }

  std::string path_;
  std::string temp_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace rehyat
