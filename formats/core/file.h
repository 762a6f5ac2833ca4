// Files: RAII for descriptors and mappings, and Env, the seam between the
// writers and the OS (leveldb's Env idea) so tests can fail writes on demand.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "formats/core/status.h"

namespace wxa::core {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void Reset();

 private:
  int fd_ = -1;
};

// A read-only mapping of a whole file. The view lives as long as the object.
class MappedFile {
 public:
  static Result<MappedFile> Open(const std::string& path);
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::string_view data() const { return {static_cast<const char*>(addr_), size_}; }
  size_t size() const { return size_; }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

// A directory whose files are opened by relative path without ever leaving
// it: openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) where the kernel has it
// (Linux 5.6+), else a component walk that follows no symlink at all. Files
// are opened O_NONBLOCK (a FIFO can never block a run) and must be regular
// files: a FIFO, a device, a socket or a directory is refused with a reason.
// This is how every input below the source directory is read (records and
// media), so a symlink planted in an export can never mail /etc/shadow.
class RootedDir {
 public:
  // Opens `path` itself normally (the user chose it, symlink or not).
  static Result<RootedDir> Open(const std::string& path);
  RootedDir() = default;
  RootedDir(RootedDir&&) = default;
  RootedDir& operator=(RootedDir&&) = default;

  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }

  // Opens `rel` (a relative path below this directory) read-only. *st gets
  // its fstat. Errors: kNotFound when absent; kInvalidArgument when it is
  // not a regular file or a symlink would lead out of the directory (the
  // message says which); kIOError for the rest (EACCES, EMFILE, ...).
  Result<UniqueFd> OpenFile(std::string_view rel, struct stat* st) const;

  // OK when `rel` is a directory below this one (symlinks inside allowed);
  // kNotFound when absent; kInvalidArgument when it is something else or
  // a symlink would lead out.
  Status CheckDirectory(std::string_view rel) const;

  struct Entry {
    std::string name;
    unsigned char type = 0;  // DT_REG, DT_DIR, DT_LNK, DT_FIFO, ... (DT_UNKNOWN resolved by fstatat)
  };
  // The entries of directory `rel` ("" = this one), without "." and "..",
  // unsorted. Symlinked directories are not followed.
  Result<std::vector<Entry>> List(std::string_view rel) const;

 private:
  Result<UniqueFd> OpenBeneath(std::string_view rel, int flags) const;
  UniqueFd fd_;
  std::string path_;
};

// Tests only: false makes RootedDir use its no-symlink walk, as on a kernel
// without openat2 (both paths are tested).
void UseOpenat2ForTesting(bool use);

class Env;

// Reads all of an open file descriptor into *out (appending), at most
// `max_bytes` (more is kTooLarge). `path` names it in errors.
Status ReadFd(int fd, const std::string& path, uint64_t max_bytes, std::string* out);
// The same, each read through env->Read (so tests can fail it).
Status ReadFd(Env* env, int fd, const std::string& path, uint64_t max_bytes, std::string* out);

Result<std::string> ReadWholeFile(const std::string& path);

// The most a file the user names (the user directory, mapping CSV, mailbox
// list, credentials) may hold: larger is refused before it is read whole.
inline constexpr uint64_t kMaxUserFileBytes = uint64_t{256} << 20;

// The whole of a file the user named on the command line, opened with
// env->OpenUserFile and read with env->Read: a regular file, or a pipe or
// FIFO (process substitution, read to its end once); anything else is
// refused by OpenUserFile. More than `max_bytes` is kTooLarge, saying so.
Result<std::string> ReadUserFile(Env* env, const std::string& path, uint64_t max_bytes = kMaxUserFileBytes);
bool PathExists(const std::string& path);
// The soft limit on open files (`cap` when unlimited or larger). Sinks that keep descriptors
// per mailbox size their caches from it.
uint64_t OpenFileLimit(uint64_t cap = 65536);
// Raises the soft limit on open files towards the hard limit (at most `want`). A process-wide
// setting: the CLI does it once at start, libraries do not.
void RaiseOpenFileLimit(uint64_t want = 65536);
bool IsDirectory(const std::string& path);
// Joins with exactly one '/' between the parts.
std::string JoinPath(std::string_view a, std::string_view b);

// What writers need from the OS, and what the readers of the source use to
// open and read it. The default (Env::Default()) is POSIX; tests wrap it to
// inject ENOSPC, EIO, short reads or crashes at chosen calls.
// All methods are thread-safe.
class Env {
 public:
  virtual ~Env() = default;
  static Env* Default();  // process-lifetime singleton, never deleted

  // Creates `path` and its missing parents (mode 0700 for new ones).
  virtual Status CreateDirs(const std::string& path);
  // open(O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600).
  virtual Result<UniqueFd> CreateExclusive(const std::string& path);
  // Writes all of data, retrying on EINTR and short writes.
  virtual Status WriteAll(int fd, std::string_view data, const std::string& path_for_errors);
  virtual Status Sync(int fd, const std::string& path_for_errors);
  // fsync of a directory, so a rename or create in it is durable.
  virtual Status SyncDir(const std::string& dir);
  virtual Status Rename(const std::string& from, const std::string& to);
  // Creates `to` as a hard link to `from`; fails with kAlreadyExists if `to` exists.
  virtual Status Link(const std::string& from, const std::string& to);
  virtual Status Remove(const std::string& path);
  // kNotFound when absent; size in *size when non-null.
  virtual Status Stat(const std::string& path, uint64_t* size);
  // syncfs(2) of the file system holding `path`: every write and directory
  // change made on it so far is durable when this returns.
  virtual Status SyncFilesystem(const std::string& path);

  // ---- descriptor-based: the output writers work relative to directory
  // descriptors opened without following any symlink, so a symlink planted
  // in an output tree can never redirect a write. `path` is the full path of
  // what is operated on, for errors (and for test environments that track
  // what was synced). ----
  // Opens directory `rel` below `root_fd` refusing every symlink on the way
  // (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or an O_NOFOLLOW walk);
  // missing levels are created (0700) when `create`. A symlink is
  // kInvalidArgument ("... is a symlink; not followed"), a missing level
  // without `create` kNotFound.
  virtual Result<UniqueFd> OpenDirAt(int root_fd, const std::string& rel, bool create,
                                     const std::string& path);
  // openat(O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600); kAlreadyExists if taken.
  virtual Result<UniqueFd> CreateAt(int dir_fd, const std::string& name, const std::string& path);
  virtual Status RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                          const std::string& path);
  // A hard link; kAlreadyExists when `to` exists.
  virtual Status LinkAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                        const std::string& path);
  // Removes a file; an absent one is fine.
  virtual Status UnlinkAt(int dir_fd, const std::string& name, const std::string& path);
  // lstat semantics (a symlink is reported, not followed); kNotFound when absent.
  virtual Status StatAt(int dir_fd, const std::string& name, struct stat* st, const std::string& path);
  // fsync of an open directory: creates and renames in it are durable after.
  virtual Status SyncDirFd(int dir_fd, const std::string& path);
  virtual Status SyncFilesystemFd(int fd, const std::string& path);
  // Sets both the access and modification times of an open file.
  virtual Status SetTimes(int fd, int64_t unix_seconds, const std::string& path);
  // The names in an open directory, without "." and "..", unsorted. (The
  // source directory is listed with it too.)
  virtual Result<std::vector<std::string>> ListDirFd(int dir_fd, const std::string& path);

  // ---- source reads: the source directory, the record files, media files
  // and media/index.csv are opened and read only through these (and the
  // source directory listed with ListDirFd), and so are the files the user
  // names (ReadUserFile), so tests can fail them. `path` names what is
  // read, for errors (and for test environments that choose what to fail). ----
  // Exactly RootedDir::Open(path): the source directory, below which the
  // record and media files are opened.
  virtual Result<RootedDir> OpenRoot(const std::string& path);
  // A file the user named (symlinks followed: the user chose the path),
  // opened read-only: a regular file, or a pipe, FIFO or terminal, which is
  // then read as `cat` would (a named FIFO waits for its writer's first
  // data or end). A directory, other device or socket is refused,
  // kInvalidArgument "<path> is a character device, not a regular file or
  // pipe", before any read (/dev/zero cannot fill memory). *st (when
  // non-null) gets its fstat.
  virtual Result<UniqueFd> OpenUserFile(const std::string& path, struct stat* st);
  // Exactly root.OpenFile(rel, st): `rel` below `root`, never through a
  // symlink out of it, opened O_NONBLOCK (a FIFO cannot block), refused
  // unless a regular file; *st (when non-null) gets its fstat.
  virtual Result<UniqueFd> OpenFileBeneath(const RootedDir& root, std::string_view rel, struct stat* st);
  // open(O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC) of a file of our own (a
  // run report's side file): kNotFound when absent; a symlink there is an
  // error (ELOOP), never followed; a FIFO does not block.
  virtual Result<UniqueFd> OpenNoFollow(const std::string& path);
  // A lock file of our own: open(O_RDWR|O_CREAT|O_NOFOLLOW|O_NONBLOCK|
  // O_CLOEXEC, 0600), refused unless a regular file. Not locked here.
  virtual Result<UniqueFd> OpenLockFile(const std::string& path);
  // read(2) of at most n bytes at the file position, retrying EINTR: the
  // count read (0 at the end of the file); an error is "read <path>: ...".
  virtual Result<size_t> Read(int fd, char* buf, size_t n, const std::string& path);
  // pread(2) likewise at `offset`; the file position does not move.
  virtual Result<size_t> PRead(int fd, char* buf, size_t n, uint64_t offset, const std::string& path);

  // A new (joinable) thread running fn, or why none could be had (EAGAIN:
  // the process or its cgroup is at its thread limit). Callers that can do
  // the work themselves do so (leveldb's Env::StartThread, with a result).
  virtual Result<std::thread> NewThread(std::function<void()> fn);
};

// Creates `tmp_path` (O_EXCL; a stale one from a crashed run is replaced)
// holding `data`, fsynced when `sync`. On failure nothing is left behind.
Status WriteTempFile(Env* env, const std::string& tmp_path, std::string_view data, bool sync);

// How durable WriteFileAtomic makes the new file before returning.
enum class Durability {
  kNone,        // atomic only (a generated corpus, a bench fixture)
  kFile,        // the file's bytes are fsynced before the rename
  kFileAndDir,  // ... and its directory after it
};

// Creates `path` with `data` atomically, through `tmp_path`: O_EXCL create,
// write, fsync (per `durability`), rename, fsync of the directory (ditto).
// On failure the temp file is removed and `path` is untouched.
Status WriteFileAtomic(Env* env, const std::string& tmp_path, const std::string& path,
                       std::string_view data, Durability durability);

}  // namespace wxa::core
