#include "formats/core/file.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
