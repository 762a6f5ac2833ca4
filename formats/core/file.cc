#include "formats/core/file.h"

#include <cerrno>
#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <system_error>

#include <fmt/format.h>

namespace wxa::core {

void UniqueFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<MappedFile> MappedFile::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open", path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat", path, errno);
  if (!S_ISREG(st.st_mode)) return Status::IOError(fmt::format("{}: not a regular file", path));
  MappedFile m;
  m.size_ = static_cast<size_t>(st.st_size);
  if (m.size_ == 0) return m;  // mmap of 0 bytes is invalid; an empty view is fine
  void* addr = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (addr == MAP_FAILED) return Status::FromErrno("mmap", path, errno);
  ::madvise(addr, m.size_, MADV_SEQUENTIAL);
  m.addr_ = addr;
  return m;
}

MappedFile::~MappedFile() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
}
MappedFile::MappedFile(MappedFile&& o) noexcept : addr_(o.addr_), size_(o.size_) {
  o.addr_ = nullptr;
  o.size_ = 0;
}
MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    addr_ = o.addr_;
    size_ = o.size_;
    o.addr_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

namespace {

const char* FileTypeName(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISLNK(m)) return "a symlink";
  return "not a regular file";
}

// openat2 is missing on kernels before 5.6 (ENOSYS) and may be filtered by
// seccomp (EPERM); then the walk below is used for the rest of the process.
std::atomic<bool> g_have_openat2{true};

}  // namespace

void UseOpenat2ForTesting(bool use) { g_have_openat2.store(use); }

Result<RootedDir> RootedDir::Open(const std::string& path) {
  RootedDir d;
  d.path_ = path;
  d.fd_ = UniqueFd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d.fd_.valid()) {
    if (errno == ENOENT) return Status::NotFound(fmt::format("{} does not exist", path));
    if (errno == ENOTDIR) return Status::InvalidArgument(fmt::format("{} is not a directory", path));
    return Status::FromErrno("open directory", path, errno);
  }
  return d;
}

Result<UniqueFd> RootedDir::OpenBeneath(std::string_view rel, int flags) const {
  const std::string full = JoinPath(path_, rel);
  if (rel.empty() || rel.front() == '/') {
    return Status::InvalidArgument(fmt::format("{}: not a relative path", full));
  }
  const std::string r(rel);
  if (g_have_openat2.load(std::memory_order_relaxed)) {
    open_how how{};
    how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    long fd;
    do {
      fd = ::syscall(SYS_openat2, fd_.get(), r.c_str(), &how, sizeof how);
    } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
    if (fd >= 0) return UniqueFd(static_cast<int>(fd));
    int err = errno;
    if (err == ENOSYS || err == EPERM) {
      g_have_openat2.store(false);
    } else if (err == EXDEV) {
      return Status::InvalidArgument(
          fmt::format("{}: a symlink leads outside {}; not followed", full, path_));
    } else if (err == ELOOP) {
      return Status::InvalidArgument(fmt::format("{}: a symlink loop; not followed", full));
    } else if (err == ENOENT || err == ENOTDIR) {
      return Status::NotFound(full);
    } else {
      return Status::FromErrno("open", full, err);
    }
  }
  // The walk: every component opened with O_NOFOLLOW, so no symlink is used.
  UniqueFd dir;
  int at = fd_.get();
  size_t start = 0;
  while (true) {
    size_t slash = r.find('/', start);
    std::string comp = r.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (comp.empty() || comp == "." || comp == "..") {
      return Status::InvalidArgument(fmt::format("{}: not a plain relative path", full));
    }
    bool last = slash == std::string::npos;
    int f = last ? (flags | O_NOFOLLOW | O_CLOEXEC) : (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    UniqueFd next(::openat(at, comp.c_str(), f));
    if (!next.valid()) {
      int err = errno;
      if (err == ELOOP || (err == ENOTDIR && !last)) {
        struct stat lst {};
        if (::fstatat(at, comp.c_str(), &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lst.st_mode)) {
          return Status::InvalidArgument(fmt::format("{}: a symlink; not followed", full));
        }
      }
      if (err == ENOENT || err == ENOTDIR) return Status::NotFound(full);
      return Status::FromErrno("open", full, err);
    }
    if (last) return next;
    dir = std::move(next);
    at = dir.get();
    start = slash + 1;
  }
}

Result<UniqueFd> RootedDir::OpenFile(std::string_view rel, struct stat* st) const {
  WXA_ASSIGN_OR_RETURN(UniqueFd fd, OpenBeneath(rel, O_RDONLY | O_NONBLOCK | O_NOCTTY));
  struct stat local {};
  struct stat* s = st != nullptr ? st : &local;
  const std::string full = JoinPath(path_, rel);
  if (::fstat(fd.get(), s) != 0) return Status::FromErrno("fstat", full, errno);
  if (!S_ISREG(s->st_mode)) {
    return Status::InvalidArgument(fmt::format("{} is {}, not a regular file; not read", full,
                                               FileTypeName(s->st_mode)));
  }
  // Regular files ignore O_NONBLOCK, but drop it so reads behave plainly.
  // One call, no F_GETFL first: F_SETFL changes only O_APPEND, O_ASYNC,
  // O_DIRECT, O_NOATIME and O_NONBLOCK, and of those the file was opened
  // with O_NONBLOCK alone (a media file per item: 28,000 calls fewer on the
  // 50,000-record text corpus).
  (void)::fcntl(fd.get(), F_SETFL, 0);
  return fd;
}

Status RootedDir::CheckDirectory(std::string_view rel) const {
  auto fd = OpenBeneath(rel, O_RDONLY | O_DIRECTORY | O_NONBLOCK);
  if (fd.ok()) return Status::Ok();
  if (fd.status().IsNotFound()) {
    // ENOTDIR reads as absent; something there that is not a directory is not.
    if (OpenBeneath(rel, O_PATH).ok()) {
      return Status::InvalidArgument(fmt::format("{} is not a directory", JoinPath(path_, rel)));
    }
  }
  return fd.status();
}

Result<std::vector<RootedDir::Entry>> RootedDir::List(std::string_view rel) const {
  UniqueFd dfd;
  if (rel.empty()) {
    dfd = UniqueFd(::openat(fd_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dfd.valid()) return Status::FromErrno("open directory", path_, errno);
  } else {
    WXA_ASSIGN_OR_RETURN(dfd, OpenBeneath(rel, O_RDONLY | O_DIRECTORY));
  }
  int dup_fd = ::dup(dfd.get());
  if (dup_fd < 0) return Status::FromErrno("dup", JoinPath(path_, rel), errno);
  DIR* d = ::fdopendir(dup_fd);
  if (d == nullptr) {
    int err = errno;
    ::close(dup_fd);
    return Status::FromErrno("read directory", JoinPath(path_, rel), err);
  }
  std::vector<Entry> out;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n == "." || n == "..") continue;
    Entry en{std::string(n), e->d_type};
    if (en.type == DT_UNKNOWN) {
      struct stat st {};
      if (::fstatat(dfd.get(), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        en.type = S_ISREG(st.st_mode)    ? DT_REG
                  : S_ISDIR(st.st_mode)  ? DT_DIR
                  : S_ISLNK(st.st_mode)  ? DT_LNK
                  : S_ISFIFO(st.st_mode) ? DT_FIFO
                                         : DT_UNKNOWN;
      }
    }
    out.push_back(std::move(en));
    errno = 0;
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) return Status::FromErrno("read directory", JoinPath(path_, rel), err);
  return out;
}

Status ReadFd(int fd, const std::string& path, uint64_t max_bytes, std::string* out) {
  return ReadFd(Env::Default(), fd, path, max_bytes, out);
}

Status ReadFd(Env* env, int fd, const std::string& path, uint64_t max_bytes, std::string* out) {
  char buf[1 << 16];
  uint64_t got = 0;
  while (true) {
    WXA_ASSIGN_OR_RETURN(size_t n, env->Read(fd, buf, sizeof buf, path));
    if (n == 0) return Status::Ok();
    got += static_cast<uint64_t>(n);
    if (got > max_bytes) {
      return Status::TooLarge(fmt::format("{}: more than {} bytes", path, max_bytes));
    }
    out->append(buf, static_cast<size_t>(n));
  }
}

Result<std::string> ReadUserFile(Env* env, const std::string& path, uint64_t max_bytes) {
  if (env == nullptr) env = Env::Default();
  struct stat st {};
  WXA_ASSIGN_OR_RETURN(UniqueFd fd, env->OpenUserFile(path, &st));
  auto too_large = [&] {
    return Status::TooLarge(
        fmt::format("{} is larger than {} MiB; refused before reading it", path, max_bytes >> 20));
  };
  std::string out;
  if (S_ISREG(st.st_mode)) {
    if (static_cast<uint64_t>(st.st_size) > max_bytes) return too_large();
    out.reserve(static_cast<size_t>(st.st_size));
  }
  Status s = ReadFd(env, fd.get(), path, max_bytes, &out);
  if (s.code() == Status::Code::kTooLarge) return too_large();
  if (!s.ok()) return s;
  return out;
}

Result<std::string> ReadWholeFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open", path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat", path, errno);
  if (S_ISDIR(st.st_mode)) return Status::IOError(fmt::format("{}: is a directory", path));
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("read", path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

uint64_t OpenFileLimit(uint64_t cap) {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  return rl.rlim_cur == RLIM_INFINITY ? cap : std::min<uint64_t>(rl.rlim_cur, cap);
}

void RaiseOpenFileLimit(uint64_t want) {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  const rlim_t target = rl.rlim_max == RLIM_INFINITY ? want : std::min<rlim_t>(rl.rlim_max, want);
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < target) {
    rl.rlim_cur = target;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

bool PathExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  std::string out(a);
  if (out.back() != '/') out.push_back('/');
  while (!b.empty() && b.front() == '/') b.remove_prefix(1);
  out.append(b);
  return out;
}

Env* Env::Default() {
  static Env* env = new Env();
  return env;
}

Status Env::CreateDirs(const std::string& path) {
  if (path.empty()) return Status::InvalidArgument("empty directory path");
  if (IsDirectory(path)) return Status::Ok();
  size_t pos = 0;
  while (true) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno("mkdir", prefix, errno);
    }
    if (pos == std::string::npos) break;
  }
  if (!IsDirectory(path)) return Status::IOError(fmt::format("{}: not a directory", path));
  return Status::Ok();
}

Result<UniqueFd> Env::CreateExclusive(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    if (errno == EEXIST) return Status::AlreadyExists(path);
    return Status::FromErrno("create", path, errno);
  }
  return fd;
}

Status Env::WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status Env::Sync(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return Status::FromErrno("fsync", path, errno);
  return Status::Ok();
}

Status Env::SyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open", dir, errno);
  if (::fsync(fd.get()) != 0) return Status::FromErrno("fsync", dir, errno);
  return Status::Ok();
}

Status Env::Rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return Status::FromErrno("rename", from, errno);
  return Status::Ok();
}

Status Env::Link(const std::string& from, const std::string& to) {
  if (::link(from.c_str(), to.c_str()) != 0) {
    if (errno == EEXIST) return Status::AlreadyExists(to);
    return Status::FromErrno("link", to, errno);
  }
  return Status::Ok();
}

Status Env::Remove(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Status::FromErrno("unlink", path, errno);
  return Status::Ok();
}

Status Env::Stat(const std::string& path, uint64_t* size) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return Status::NotFound(path);
    return Status::FromErrno("stat", path, errno);
  }
  if (size != nullptr) *size = static_cast<uint64_t>(st.st_size);
  return Status::Ok();
}

Status Env::SyncFilesystem(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open", path, errno);
  if (::syncfs(fd.get()) != 0) return Status::FromErrno("syncfs", path, errno);
  return Status::Ok();
}

Result<UniqueFd> Env::OpenDirAt(int root_fd, const std::string& rel, bool create,
                               const std::string& path) {
  if (rel.empty() || rel.front() == '/') {
    return Status::InvalidArgument(fmt::format("{}: not a relative path", path));
  }
  auto symlink_error = [&] {
    return Status::InvalidArgument(
        fmt::format("{}: a symlink on the way; not followed (output trees must hold real directories)", path));
  };
  if (!create && g_have_openat2.load(std::memory_order_relaxed)) {
    open_how how{};
    how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long fd;
    do {
      fd = ::syscall(SYS_openat2, root_fd, rel.c_str(), &how, sizeof how);
    } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
    if (fd >= 0) return UniqueFd(static_cast<int>(fd));
    int err = errno;
    if (err == ELOOP || err == EXDEV) return symlink_error();
    if (err == ENOENT) return Status::NotFound(path);
    if (err == ENOTDIR) return Status::InvalidArgument(fmt::format("{}: not a directory", path));
    if (err != ENOSYS && err != EPERM) return Status::FromErrno("open directory", path, err);
    g_have_openat2.store(false);
  }
  UniqueFd cur;
  int at = root_fd;
  size_t start = 0;
  while (true) {
    size_t slash = rel.find('/', start);
    std::string comp = rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (comp.empty() || comp == "." || comp == "..") {
      return Status::InvalidArgument(fmt::format("{}: not a plain relative path", path));
    }
    if (create && ::mkdirat(at, comp.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno("mkdir", path, errno);
    }
    UniqueFd next(::openat(at, comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next.valid()) {
      int err = errno;
      if (err == ELOOP) return symlink_error();
      if (err == ENOTDIR) {
        struct stat lst {};
        if (::fstatat(at, comp.c_str(), &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lst.st_mode)) {
          return symlink_error();
        }
        return Status::InvalidArgument(fmt::format("{}: not a directory", path));
      }
      if (err == ENOENT) return Status::NotFound(path);
      return Status::FromErrno("open directory", path, err);
    }
    cur = std::move(next);
    at = cur.get();
    if (slash == std::string::npos) return cur;
    start = slash + 1;
  }
}

Result<UniqueFd> Env::CreateAt(int dir_fd, const std::string& name, const std::string& path) {
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    if (errno == EEXIST) return Status::AlreadyExists(path);
    return Status::FromErrno("create", path, errno);
  }
  return fd;
}

Status Env::RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                     const std::string& path) {
  if (::renameat(from_dir, from.c_str(), to_dir, to.c_str()) != 0) {
    return Status::FromErrno("rename", path, errno);
  }
  return Status::Ok();
}

Status Env::LinkAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                   const std::string& path) {
  if (::linkat(from_dir, from.c_str(), to_dir, to.c_str(), 0) != 0) {
    if (errno == EEXIST) return Status::AlreadyExists(path);
    return Status::FromErrno("link", path, errno);
  }
  return Status::Ok();
}

Status Env::UnlinkAt(int dir_fd, const std::string& name, const std::string& path) {
  if (::unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
    return Status::FromErrno("unlink", path, errno);
  }
  return Status::Ok();
}

Status Env::StatAt(int dir_fd, const std::string& name, struct stat* st, const std::string& path) {
  if (::fstatat(dir_fd, name.c_str(), st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return Status::NotFound(path);
    return Status::FromErrno("stat", path, errno);
  }
  return Status::Ok();
}

Status Env::SyncDirFd(int dir_fd, const std::string& path) {
  if (::fsync(dir_fd) != 0) return Status::FromErrno("fsync", path, errno);
  return Status::Ok();
}

Status Env::SyncFilesystemFd(int fd, const std::string& path) {
  if (::syncfs(fd) != 0) return Status::FromErrno("syncfs", path, errno);
  return Status::Ok();
}

Status Env::SetTimes(int fd, int64_t unix_seconds, const std::string& path) {
  struct timespec ts[2];
  ts[0].tv_sec = ts[1].tv_sec = static_cast<time_t>(unix_seconds);
  ts[0].tv_nsec = ts[1].tv_nsec = 0;
  if (::futimens(fd, ts) != 0) return Status::FromErrno("set times of", path, errno);
  return Status::Ok();
}

Result<std::vector<std::string>> Env::ListDirFd(int dir_fd, const std::string& path) {
  int dup_fd = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dup_fd < 0) return Status::FromErrno("open directory", path, errno);
  DIR* d = ::fdopendir(dup_fd);
  if (d == nullptr) {
    int err = errno;
    ::close(dup_fd);
    return Status::FromErrno("read directory", path, err);
  }
  std::vector<std::string> out;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") out.emplace_back(n);
    errno = 0;
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) return Status::FromErrno("read directory", path, err);
  return out;
}

// statfs f_type of an anonymous pipe (linux/magic.h PIPEFS_MAGIC).
constexpr decltype(statfs::f_type) kPipeFsMagic = 0x50495045;

Result<RootedDir> Env::OpenRoot(const std::string& path) { return RootedDir::Open(path); }

Result<UniqueFd> Env::OpenNoFollow(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return Status::NotFound(fmt::format("{} does not exist", path));
    return Status::FromErrno("open", path, errno);
  }
  return fd;
}

Result<UniqueFd> Env::OpenLockFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno("open", path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(fmt::format("{} is {}, not a regular file (a lock file)", path, FileTypeName(st.st_mode)));
  }
  return fd;
}

Result<UniqueFd> Env::OpenUserFile(const std::string& path, struct stat* st) {
  struct stat local {};
  if (st == nullptr) st = &local;
  // O_NONBLOCK: opening a FIFO must not wait before its type is known.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return Status::NotFound(fmt::format("{} does not exist", path));
    return Status::FromErrno("open", path, errno);
  }
  if (::fstat(fd.get(), st) != 0) return Status::FromErrno("fstat", path, errno);
  if (S_ISREG(st->st_mode)) return fd;
  // A terminal (a secret typed at it, ended with Ctrl-D) is read like a pipe.
  const bool tty = S_ISCHR(st->st_mode) && ::isatty(fd.get()) == 1;
  if (!S_ISFIFO(st->st_mode) && !tty) {
    return Status::InvalidArgument(
        fmt::format("{} is {}, not a regular file or pipe", path, FileTypeName(st->st_mode)));
  }
  if (S_ISFIFO(st->st_mode)) {
    // A named FIFO whose writer has not opened it yet would read as empty:
    // wait for its first data or its writer's end (Linux reports no hang-up
    // before a writer has been seen). A pipe (process substitution) has had
    // its writer from the start, which may have finished already: no wait.
    struct statfs fs {};
    if (::fstatfs(fd.get(), &fs) == 0 && fs.f_type != kPipeFsMagic) {
      pollfd p{fd.get(), POLLIN, 0};
      while (::poll(&p, 1, -1) < 0) {
        if (errno != EINTR) return Status::FromErrno("poll", path, errno);
      }
    }
  }
  // Read blocking, to the writer's end, as `cat` would.
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return Status::FromErrno("fcntl", path, errno);
  }
  return fd;
}

Result<UniqueFd> Env::OpenFileBeneath(const RootedDir& root, std::string_view rel, struct stat* st) {
  return root.OpenFile(rel, st);
}

Result<size_t> Env::Read(int fd, char* buf, size_t n, const std::string& path) {
  while (true) {
    ssize_t got = ::read(fd, buf, n);
    if (got >= 0) return static_cast<size_t>(got);
    if (errno != EINTR) return Status::FromErrno("read", path, errno);
  }
}

Result<size_t> Env::PRead(int fd, char* buf, size_t n, uint64_t offset, const std::string& path) {
  while (true) {
    ssize_t got = ::pread(fd, buf, n, static_cast<off_t>(offset));
    if (got >= 0) return static_cast<size_t>(got);
    if (errno != EINTR) return Status::FromErrno("read", path, errno);
  }
}

Result<std::thread> Env::NewThread(std::function<void()> fn) {
  try {
    return std::thread(std::move(fn));
  } catch (const std::system_error& e) {
    return Status::FromErrno("start", "a thread", e.code().value());
  }
}

Status WriteTempFile(Env* env, const std::string& tmp_path, std::string_view data, bool sync) {
  auto fd = env->CreateExclusive(tmp_path);
  if (!fd.ok() && fd.status().code() == Status::Code::kAlreadyExists) {
    // A temp file left by a crashed run: it was never renamed, so it is garbage.
    WXA_RETURN_IF_ERROR(env->Remove(tmp_path));
    fd = env->CreateExclusive(tmp_path);
  }
  if (!fd.ok()) return fd.status();
  Status s = env->WriteAll(fd->get(), data, tmp_path);
  if (s.ok() && sync) s = env->Sync(fd->get(), tmp_path);
  fd->Reset();
  if (!s.ok()) (void)env->Remove(tmp_path);
  return s;
}

Status WriteFileAtomic(Env* env, const std::string& tmp_path, const std::string& path,
                       std::string_view data, Durability durability) {
  WXA_RETURN_IF_ERROR(WriteTempFile(env, tmp_path, data, durability != Durability::kNone));
  Status s = env->Rename(tmp_path, path);
  if (!s.ok()) {
    (void)env->Remove(tmp_path);
    return s;
  }
  if (durability == Durability::kFileAndDir) {
    std::string dir = path.substr(0, path.rfind('/'));
    WXA_RETURN_IF_ERROR(env->SyncDir(dir.empty() ? "/" : dir));
  }
  return Status::Ok();
}

}  // namespace wxa::core
