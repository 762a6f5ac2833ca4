// Helpers shared by the tests: temporary directories, files, commands, and a
// fault-injecting Env (leveldb's ErrorEnv idea).
#pragma once

#include <atomic>
#include <cerrno>
#include <string>
#include <vector>

#include "formats/core/file.h"

namespace wxa::test {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& data);  // creates parents
// Regular files under dir, as paths relative to dir, sorted.
std::vector<std::string> ListFiles(const std::string& dir);
std::string SourcePath(const std::string& rel);  // path in the source tree
// Runs a shell command; returns its exit status and puts stdout+stderr in *out.
int Run(const std::string& command, std::string* out);
std::string ShellQuote(const std::string& s);

// Fails chosen calls with an errno: WriteAll after `fail_writes_after` more
// successful writes, or every fsync/syncfs when fail_sync is set.
class FaultEnv : public core::Env {
 public:
  std::atomic<long> fail_writes_after{-1};  // -1: never
  std::atomic<int> write_errno{ENOSPC};
  std::atomic<bool> fail_sync{false};
  std::atomic<long> writes{0};

  Status WriteAll(int fd, std::string_view data, const std::string& path) override;
  Status Sync(int fd, const std::string& path) override;
  Status SyncFilesystem(const std::string& path) override;
  Status SyncFilesystemFd(int fd, const std::string& path) override;
  Status SyncDirFd(int fd, const std::string& path) override;
};

}  // namespace wxa::test
