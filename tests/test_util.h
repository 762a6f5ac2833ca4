// Helpers shared by the tests: temporary directories, files, commands, and a
// fault-injecting Env (leveldb's ErrorEnv idea).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <cerrno>
#include <ostream>
#include <string>
#include <vector>

#include <sys/types.h>

#include <gtest/gtest.h>

#include "engine/sinks/local_sinks.h"
#include "formats/core/file.h"
#include "tools/gen/corpus_gen.h"

namespace wxa::test {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir();
  // Under `base` (e.g. "/dev/shm" for tests that fsync a lot and simulate
  // durability themselves); falls back to $TMPDIR when base is missing.
  explicit TempDir(const std::string& base);
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
// Whether a path from ListFiles of a local tree is a temp file: in a
// folder's tmp/, in the tree's staging directory (sinks::kStagingDirName),
// or an EML temp name (".<base>.<pid>_<n>.tmp" in the folder).
bool IsTempFile(const std::string& rel);
std::string SourcePath(const std::string& rel);  // path in the source tree
// Runs a shell command; returns its exit status and puts stdout+stderr in *out.
int Run(const std::string& command, std::string* out);
std::string ShellQuote(const std::string& s);

// Runs fn on a thread of its own and returns its result; past `limit` the
// test binary ends with a failure naming `what` (a hung call cannot be
// joined, and a hang must not stall the suite until ctest's timeout).
template <typename F>
auto WithDeadline(std::chrono::seconds limit, const std::string& what, F fn) {
  auto fut = std::async(std::launch::async, std::move(fn));
  if (fut.wait_for(limit) != std::future_status::ready) {
    ADD_FAILURE() << what << " did not finish in " << limit.count() << " s";
    std::fflush(nullptr);
    std::_Exit(1);
  }
  return fut.get();
}

// Starts args[0] (a path, no PATH search) with args, stdout to /dev/null,
// stderr inherited; a test failure when it cannot start.
pid_t Spawn(const std::vector<std::string>& args);
// Waits for pid: its exit code, or 128 + the signal that ended it (as a shell says).
int WaitExitCode(pid_t pid);

// A generated corpus and the mailboxes its mailboxes.txt lists.
struct Corpus {
  std::string dir;
  std::vector<std::string> mailboxes;
};
// Generates `options` into options.out; a test failure when that fails.
Corpus MakeCorpus(const gen::GenOptions& options);
// A small clean corpus (2 days, media scaled to 1%, no broken records or huge files), generated
// once per process and parameters and kept for the process's lifetime: generation is the slow
// part of the sink tests, which share it.
const Corpus& SharedCorpus(int users, int messages_per_user_day, uint64_t seed);
// `cli import --quiet` of the generated corpus in corpus_dir (its
// directory, mapping and mailbox list) into target; append more flags.
std::vector<std::string> CliImportArgs(const std::string& cli, const std::string& corpus_dir,
                                       const std::string& target);

// Fails chosen calls with an errno: WriteAll after `fail_writes_after` more
// successful writes, or every fsync/syncfs when fail_sync is set. Reads of
// the source and of the files the user names (Env::OpenRoot,
// OpenFileBeneath, OpenUserFile, Read, PRead, ListDirFd) fail or come up
// short for paths containing `read_paths_containing` (set it before the run).
class FaultEnv : public core::Env {
 public:
  std::atomic<long> fail_writes_after{-1};  // -1: never
  std::atomic<int> write_errno{ENOSPC};
  std::atomic<bool> fail_sync{false};
  std::atomic<long> writes{0};
  // When set, only writes to paths containing it count and fail.
  std::string only_paths_containing;

  // ---- read faults, only for paths containing read_paths_containing
  // (empty: no read fault at all) ----
  std::string read_paths_containing;
  std::atomic<int> read_errno{EIO};
  // Opening such a file fails with read_errno (after the real open succeeded,
  // so what is refused anyway is still refused for its own reason).
  std::atomic<bool> fail_read_open{false};
  // Listing such a directory fails with read_errno.
  std::atomic<bool> fail_list{false};
  // A bad spot at this byte offset (-1: none): a read that reaches it returns
  // the bytes before it (a short read), the next one fails with read_errno.
  std::atomic<int64_t> fail_reads_at{-1};
  // The file ends here for reads (-1: not cut), as if it shrank after it
  // was opened: fstat still says the old size, reads see end of file.
  std::atomic<int64_t> shrink_reads_to{-1};
  // Opens, listings and reads failed or cut short so far.
  std::atomic<long> read_faults{0};

  Status WriteAll(int fd, std::string_view data, const std::string& path) override;
  Status Sync(int fd, const std::string& path) override;
  Status SyncFilesystem(const std::string& path) override;
  Status SyncFilesystemFd(int fd, const std::string& path) override;
  Status SyncDirFd(int fd, const std::string& path) override;
  Result<core::UniqueFd> OpenFileBeneath(const core::RootedDir& root, std::string_view rel,
                                         struct stat* st) override;
  Result<core::RootedDir> OpenRoot(const std::string& path) override;
  Result<core::UniqueFd> OpenUserFile(const std::string& path, struct stat* st) override;
  Result<std::vector<std::string>> ListDirFd(int dir_fd, const std::string& path) override;
  Result<size_t> Read(int fd, char* buf, size_t n, const std::string& path) override;
  Result<size_t> PRead(int fd, char* buf, size_t n, uint64_t offset, const std::string& path) override;

 private:
  bool ReadFaultFor(const std::string& path) const;
  // How many of n bytes at `offset` to really read (0: none), or the error.
  Result<size_t> ReadLimit(uint64_t offset, size_t n, const std::string& path);
};

// File-system syncs (SyncFilesystemFd: a local tree's batch publication)
// wait until the test opens the gate.
class GatedSyncEnv : public core::Env {
 public:
  Status SyncFilesystemFd(int fd, const std::string& path) override {
    {
      std::unique_lock<std::mutex> l(mu_);
      ++entered_;
      cv_.notify_all();
      cv_.wait(l, [&] { return open_; });
    }
    return core::Env::SyncFilesystemFd(fd, path);
  }
  // Whether a sync is waiting (or went through) within `limit`.
  bool WaitEntered(std::chrono::seconds limit = std::chrono::seconds(60)) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, limit, [&] { return entered_ > 0; });
  }
  void Open() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;
  bool open_ = false;
};

// A power cut, simulated (leveldb's FaultInjectionTestEnv idea, with
// isync's step counter): every output operation is a numbered step; from
// step `cut_at` on, each fails with EIO as if the machine had stopped. Then
// ApplyPowerCut() makes the file system look like what survives a power cut
// at that moment under POSIX rules: file data not fsynced (or covered by a
// syncfs) is dropped, and directory entries created, renamed or removed
// since their directory's last fsync are undone. Renames count as an entry
// in each directory: a rename whose target directory was synced but whose
// source was not leaves the file in both; the reverse loses it. The LMDB
// index does its own I/O (durable at each commit) and is not simulated.
class PowerCutEnv : public core::Env {
 public:
  long cut_at = -1;  // -1: never
  long steps() const;
  bool cut() const;
  // Which of the two worst cases to leave: kUndoEntries undoes directory
  // changes no fsync covered (a file created or renamed may vanish);
  // kKeepEntries keeps them, as a journal committing them on its own may
  // (a renamed file may then be there with its unsynced data gone). Data not
  // fsynced is dropped either way.
  enum class Outcome { kUndoEntries, kKeepEntries };
  void ApplyPowerCut(Outcome outcome = Outcome::kUndoEntries);

  Status CreateDirs(const std::string& path) override;
  Status Remove(const std::string& path) override;
  // By path (the run report): tracked like their *At forms.
  Result<core::UniqueFd> CreateExclusive(const std::string& path) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status SyncDir(const std::string& dir) override;
  Result<core::UniqueFd> OpenDirAt(int root_fd, const std::string& rel, bool create,
                                   const std::string& path) override;
  Result<core::UniqueFd> CreateAt(int dir_fd, const std::string& name, const std::string& path) override;
  Status WriteAll(int fd, std::string_view data, const std::string& path) override;
  Status Sync(int fd, const std::string& path) override;
  Status SetTimes(int fd, int64_t unix_seconds, const std::string& path) override;
  Status RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                  const std::string& path) override;
  Status LinkAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                const std::string& path) override;
  Status UnlinkAt(int dir_fd, const std::string& name, const std::string& path) override;
  Status SyncDirFd(int dir_fd, const std::string& path) override;
  Status SyncFilesystemFd(int fd, const std::string& path) override;
  Status SyncFilesystem(const std::string& path) override;

 private:
  // Counts a step; false once the power is out.
  bool Step(const char* what, const std::string& path, Status* out);
  std::string DirOf(int dir_fd);
  void MarkAllDurable();
  void NoteCreate(int fd, const std::string& path);
  static std::optional<std::string> ReadIfThere(const std::string& path);
  void NoteRename(const std::string& from_path, const std::string& to_path, std::optional<std::string> replaced);
  void NoteDirSync(const std::string& dir);

  struct FileState {
    uint64_t written = 0;
    uint64_t synced = 0;
  };
  struct EntryOp {
    enum Kind { kCreate, kRename, kUnlink } kind;
    std::string from;  // full paths
    std::string to;
    uint64_t seq;
    // A rename over an existing file, or a file removed by path: its bytes
    // and state, put back when the rename or removal is undone (POSIX: the
    // old name then still holds the old file).
    std::optional<std::string> replaced;
    std::optional<FileState> replaced_state;  // none: it was durable
  };
  mutable std::mutex mu_;
  long steps_ = 0;                               // GUARDED_BY(mu_)
  uint64_t seq_ = 0;                             // GUARDED_BY(mu_)
  std::map<int, std::string> dir_fds_;           // GUARDED_BY(mu_)
  std::map<int, std::string> fd_paths_;          // GUARDED_BY(mu_): open file fds -> current path
  std::map<std::string, FileState> files_;       // GUARDED_BY(mu_): by current path
  std::map<std::string, uint64_t> dir_synced_;   // GUARDED_BY(mu_): dir -> seq of its last fsync
  std::vector<EntryOp> ops_;                     // GUARDED_BY(mu_)
};

}  // namespace wxa::test

namespace wxa::sinks {
// How gtest shows a SyncMode test parameter (found by ADL): the --sync spelling.
inline void PrintTo(SyncMode m, std::ostream* os) { *os << (m == SyncMode::kBatch ? "batch" : "file"); }
}  // namespace wxa::sinks
