#include "tests/test_util.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

extern char** environ;

namespace wxa::test {

namespace fs = std::filesystem;

namespace {
std::string MakeTempDir(std::string base) {
  struct stat st {};
  if (base.empty() || ::stat(base.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    const char* env = std::getenv("TMPDIR");
    base = env != nullptr ? env : "/tmp";
  }
  std::string tmpl = base + "/wxa-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}
}  // namespace

TempDir::TempDir() : path_(MakeTempDir("")) {}
TempDir::TempDir(const std::string& base) : path_(MakeTempDir(base)) {}

TempDir::~TempDir() {
  if (std::getenv("WXA_KEEP_TEMP") != nullptr) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

std::vector<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool IsTempFile(const std::string& rel) {
  const std::string name = rel.substr(rel.rfind('/') + 1);
  const bool eml_temp = name.size() > 5 && name[0] == '.' && name.substr(name.size() - 4) == ".tmp" &&
                        name.find(".wxa.") != std::string::npos;
  return rel.find("/tmp/") != std::string::npos || rel.rfind(".wxarchiver-staging/", 0) == 0 || eml_temp;
}

std::string SourcePath(const std::string& rel) { return std::string(WXA_SOURCE_DIR) + "/" + rel; }

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  return out + "'";
}

int Run(const std::string& command, std::string* out) {
  std::string cmd = command + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
    if (out != nullptr) out->append(buf, n);
  }
  int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

pid_t Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  EXPECT_EQ(rc, 0);
  return pid;
}

int WaitExitCode(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

const Corpus& SharedCorpus(int users, int messages_per_user_day, uint64_t seed) {
  static std::mutex mu;
  static auto* made = new std::map<std::tuple<int, int, uint64_t>, Corpus>();
  std::lock_guard<std::mutex> l(mu);
  auto key = std::make_tuple(users, messages_per_user_day, seed);
  if (auto it = made->find(key); it != made->end()) return it->second;
  static auto* tmp = new TempDir();  // kept: the corpora outlive every test
  gen::GenOptions g;
  g.out = *tmp / fmt::format("corpus-{}-{}-{}", users, messages_per_user_day, seed);
  g.users = users;
  g.days = 2;
  g.seed = seed;
  g.messages_per_user_day = messages_per_user_day;
  g.media_scale = 0.01;
  g.broken_records = false;
  g.huge_files = false;
  return made->emplace(key, MakeCorpus(g)).first->second;
}

Corpus MakeCorpus(const gen::GenOptions& options) {
  Corpus out;
  out.dir = options.out;
  auto r = gen::GenerateCorpus(options);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  std::string list = ReadFile(out.dir + "/mailboxes.txt");
  size_t pos = 0;
  while (pos < list.size()) {
    size_t nl = list.find('\n', pos);
    std::string line = list.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? list.size() : nl + 1;
    if (!line.empty() && line[0] != '#' && line.find('@') != std::string::npos) out.mailboxes.push_back(line);
  }
  return out;
}

std::vector<std::string> CliImportArgs(const std::string& cli, const std::string& corpus_dir,
                                       const std::string& target) {
  const std::string& c = corpus_dir;
  return {cli, "import", "--quiet", "--source", c, "--directory", c + "/directory.csv",
          "--mapping", c + "/mapping.csv", "--mailboxes", c + "/mailboxes.txt", "--to", target};
}

Status FaultEnv::WriteAll(int fd, std::string_view data, const std::string& path) {
  if (!only_paths_containing.empty() && path.find(only_paths_containing) == std::string::npos) {
    return Env::WriteAll(fd, data, path);
  }
  long n = writes.fetch_add(1);
  long limit = fail_writes_after.load();
  if (limit >= 0 && n >= limit) return Status::FromErrno("write", path, write_errno.load());
  return Env::WriteAll(fd, data, path);
}

Status FaultEnv::Sync(int fd, const std::string& path) {
  if (fail_sync.load()) return Status::FromErrno("fsync", path, EIO);
  return Env::Sync(fd, path);
}

Status FaultEnv::SyncFilesystem(const std::string& path) {
  if (fail_sync.load()) return Status::FromErrno("syncfs", path, EIO);
  return Env::SyncFilesystem(path);
}

Status FaultEnv::SyncFilesystemFd(int fd, const std::string& path) {
  if (fail_sync.load()) return Status::FromErrno("syncfs", path, EIO);
  return Env::SyncFilesystemFd(fd, path);
}

Status FaultEnv::SyncDirFd(int fd, const std::string& path) {
  if (fail_sync.load()) return Status::FromErrno("fsync", path, EIO);
  return Env::SyncDirFd(fd, path);
}

bool FaultEnv::ReadFaultFor(const std::string& path) const {
  return !read_paths_containing.empty() && path.find(read_paths_containing) != std::string::npos;
}

Result<core::UniqueFd> FaultEnv::OpenFileBeneath(const core::RootedDir& root, std::string_view rel,
                                                 struct stat* st) {
  auto fd = Env::OpenFileBeneath(root, rel, st);
  const std::string path = core::JoinPath(root.path(), rel);
  if (fd.ok() && fail_read_open.load() && ReadFaultFor(path)) {
    ++read_faults;
    return Status::FromErrno("open", path, read_errno.load());
  }
  return fd;
}

Result<core::RootedDir> FaultEnv::OpenRoot(const std::string& path) {
  auto root = Env::OpenRoot(path);
  if (root.ok() && fail_read_open.load() && ReadFaultFor(path)) {
    ++read_faults;
    return Status::FromErrno("open directory", path, read_errno.load());
  }
  return root;
}

Result<core::UniqueFd> FaultEnv::OpenUserFile(const std::string& path, struct stat* st) {
  auto fd = Env::OpenUserFile(path, st);
  if (fd.ok() && fail_read_open.load() && ReadFaultFor(path)) {
    ++read_faults;
    return Status::FromErrno("open", path, read_errno.load());
  }
  return fd;
}

Result<std::vector<std::string>> FaultEnv::ListDirFd(int dir_fd, const std::string& path) {
  if (fail_list.load() && ReadFaultFor(path)) {
    ++read_faults;
    return Status::FromErrno("read directory", path, read_errno.load());
  }
  return Env::ListDirFd(dir_fd, path);
}

Result<size_t> FaultEnv::ReadLimit(uint64_t offset, size_t n, const std::string& path) {
  const int64_t cut = shrink_reads_to.load();
  const int64_t bad = fail_reads_at.load();
  if (cut >= 0 && offset >= static_cast<uint64_t>(cut)) {
    ++read_faults;
    return size_t{0};
  }
  if (bad >= 0 && offset >= static_cast<uint64_t>(bad)) {
    ++read_faults;
    return Status::FromErrno("read", path, read_errno.load());
  }
  uint64_t end = offset + n;
  if (cut >= 0) end = std::min<uint64_t>(end, static_cast<uint64_t>(cut));
  if (bad >= 0) end = std::min<uint64_t>(end, static_cast<uint64_t>(bad));
  return static_cast<size_t>(end - offset);
}

Result<size_t> FaultEnv::Read(int fd, char* buf, size_t n, const std::string& path) {
  if (!ReadFaultFor(path) || n == 0) return Env::Read(fd, buf, n, path);
  const off_t at = ::lseek(fd, 0, SEEK_CUR);
  if (at < 0) return Status::FromErrno("seek", path, errno);
  WXA_ASSIGN_OR_RETURN(size_t m, ReadLimit(static_cast<uint64_t>(at), n, path));
  if (m == 0) return size_t{0};
  return Env::Read(fd, buf, m, path);
}

Result<size_t> FaultEnv::PRead(int fd, char* buf, size_t n, uint64_t offset, const std::string& path) {
  if (!ReadFaultFor(path) || n == 0) return Env::PRead(fd, buf, n, offset, path);
  WXA_ASSIGN_OR_RETURN(size_t m, ReadLimit(offset, n, path));
  if (m == 0) return size_t{0};
  return Env::PRead(fd, buf, m, offset, path);
}

// ---- PowerCutEnv ------------------------------------------------------------

namespace {
std::string Parent(const std::string& p) {
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? std::string(".") : p.substr(0, slash);
}
}  // namespace

long PowerCutEnv::steps() const {
  std::lock_guard<std::mutex> l(mu_);
  return steps_;
}

bool PowerCutEnv::cut() const {
  std::lock_guard<std::mutex> l(mu_);
  return cut_at >= 0 && steps_ > cut_at;
}

bool PowerCutEnv::Step(const char* what, const std::string& path, Status* out) {
  std::lock_guard<std::mutex> l(mu_);
  ++steps_;
  if (cut_at >= 0 && steps_ > cut_at) {
    *out = Status::FromErrno(fmt::format("{} (power cut at step {})", what, cut_at), path, EIO);
    return false;
  }
  return true;
}

std::string PowerCutEnv::DirOf(int dir_fd) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = dir_fds_.find(dir_fd);
  return it == dir_fds_.end() ? std::string() : it->second;
}

Status PowerCutEnv::CreateDirs(const std::string& path) {
  Status s;
  if (!Step("mkdir", path, &s)) return s;
  return Env::CreateDirs(path);  // directories themselves: assumed durable (created once, synced by the run's syncs)
}

Status PowerCutEnv::Remove(const std::string& path) {
  Status s;
  if (!Step("unlink", path, &s)) return s;
  // Its bytes, to bring it back if the removal is undone.
  std::optional<std::string> bytes = ReadIfThere(path);
  s = Env::Remove(path);
  if (s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    std::optional<FileState> state;
    if (auto f = files_.find(path); f != files_.end()) state = f->second;
    ops_.push_back({EntryOp::kUnlink, path, "", ++seq_, std::move(bytes), state});
    files_.erase(path);
  }
  return s;
}

Result<core::UniqueFd> PowerCutEnv::OpenDirAt(int root_fd, const std::string& rel, bool create,
                                              const std::string& path) {
  Status s;
  if (!Step("open directory", path, &s)) return s;
  auto fd = Env::OpenDirAt(root_fd, rel, create, path);
  if (fd.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    dir_fds_[fd->get()] = path;
  }
  return fd;
}

void PowerCutEnv::NoteCreate(int fd, const std::string& path) {
  std::lock_guard<std::mutex> l(mu_);
  files_[path] = FileState{};
  ops_.push_back({EntryOp::kCreate, "", path, ++seq_, std::nullopt, std::nullopt});
  fd_paths_[fd] = path;
}

std::optional<std::string> PowerCutEnv::ReadIfThere(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return ReadFile(path);
}

void PowerCutEnv::NoteRename(const std::string& from_path, const std::string& to_path,
                             std::optional<std::string> replaced) {
  std::lock_guard<std::mutex> l(mu_);
  EntryOp op{EntryOp::kRename, from_path, to_path, ++seq_, std::move(replaced), std::nullopt};
  if (op.replaced) {
    if (auto old = files_.find(to_path); old != files_.end()) op.replaced_state = old->second;
  }
  ops_.push_back(std::move(op));
  auto f = files_.find(from_path);
  if (f != files_.end()) {
    files_[to_path] = f->second;
    files_.erase(f);
  }
  for (auto& [fd, p] : fd_paths_) {
    if (p == from_path) p = to_path;
  }
}

void PowerCutEnv::NoteDirSync(const std::string& dir) {
  std::lock_guard<std::mutex> l(mu_);
  dir_synced_[dir] = ++seq_;
}

Result<core::UniqueFd> PowerCutEnv::CreateAt(int dir_fd, const std::string& name, const std::string& path) {
  Status s;
  if (!Step("create", path, &s)) return s;
  auto fd = Env::CreateAt(dir_fd, name, path);
  if (fd.ok()) NoteCreate(fd->get(), path);
  return fd;
}

Result<core::UniqueFd> PowerCutEnv::CreateExclusive(const std::string& path) {
  Status s;
  if (!Step("create", path, &s)) return s;
  auto fd = Env::CreateExclusive(path);
  if (fd.ok()) NoteCreate(fd->get(), path);
  return fd;
}

Status PowerCutEnv::Rename(const std::string& from, const std::string& to) {
  Status s;
  if (!Step("rename", from, &s)) return s;
  auto replaced = ReadIfThere(to);
  s = Env::Rename(from, to);
  if (s.ok()) NoteRename(from, to, std::move(replaced));
  return s;
}

Status PowerCutEnv::SyncDir(const std::string& dir) {
  Status s;
  if (!Step("fsync directory", dir, &s)) return s;
  s = Env::SyncDir(dir);
  if (s.ok()) NoteDirSync(dir);
  return s;
}

Status PowerCutEnv::WriteAll(int fd, std::string_view data, const std::string& path) {
  Status s;
  if (!Step("write", path, &s)) return s;
  s = Env::WriteAll(fd, data, path);
  if (s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = fd_paths_.find(fd);
    const std::string& p = files_.count(path) || it == fd_paths_.end() ? path : it->second;
    files_[p].written += data.size();
  }
  return s;
}

Status PowerCutEnv::Sync(int fd, const std::string& path) {
  Status s;
  if (!Step("fsync", path, &s)) return s;
  s = Env::Sync(fd, path);
  if (s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = fd_paths_.find(fd);
    const std::string& p = files_.count(path) || it == fd_paths_.end() ? path : it->second;
    auto f = files_.find(p);
    if (f != files_.end()) f->second.synced = f->second.written;
  }
  return s;
}

Status PowerCutEnv::SetTimes(int fd, int64_t unix_seconds, const std::string& path) {
  Status s;
  if (!Step("set times", path, &s)) return s;
  return Env::SetTimes(fd, unix_seconds, path);
}

Status PowerCutEnv::RenameAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                             const std::string& path) {
  Status s;
  if (!Step("rename", path, &s)) return s;
  const std::string from_path = DirOf(from_dir) + "/" + from;
  const std::string to_path = DirOf(to_dir) + "/" + to;
  auto replaced = ReadIfThere(to_path);
  s = Env::RenameAt(from_dir, from, to_dir, to, path);
  if (s.ok()) NoteRename(from_path, to_path, std::move(replaced));
  return s;
}

Status PowerCutEnv::LinkAt(int from_dir, const std::string& from, int to_dir, const std::string& to,
                           const std::string& path) {
  Status s;
  if (!Step("link", path, &s)) return s;
  const std::string from_path = DirOf(from_dir) + "/" + from;
  const std::string to_path = DirOf(to_dir) + "/" + to;
  s = Env::LinkAt(from_dir, from, to_dir, to, path);
  if (s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    ops_.push_back({EntryOp::kCreate, "", to_path, ++seq_, std::nullopt, std::nullopt});
    auto f = files_.find(from_path);
    if (f != files_.end()) files_[to_path] = f->second;
  }
  return s;
}

Status PowerCutEnv::UnlinkAt(int dir_fd, const std::string& name, const std::string& path) {
  Status s;
  if (!Step("unlink", path, &s)) return s;
  const std::string p = DirOf(dir_fd) + "/" + name;
  s = Env::UnlinkAt(dir_fd, name, path);
  if (s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    ops_.push_back({EntryOp::kUnlink, p, "", ++seq_, std::nullopt, std::nullopt});
    files_.erase(p);
  }
  return s;
}

Status PowerCutEnv::SyncDirFd(int dir_fd, const std::string& path) {
  Status s;
  if (!Step("fsync directory", path, &s)) return s;
  s = Env::SyncDirFd(dir_fd, path);
  if (s.ok()) {
    const std::string dir = DirOf(dir_fd);
    NoteDirSync(dir.empty() ? path : dir);
  }
  return s;
}

void PowerCutEnv::MarkAllDurable() {
  std::lock_guard<std::mutex> l(mu_);
  for (auto& [p, f] : files_) f.synced = f.written;
  ops_.clear();
}

Status PowerCutEnv::SyncFilesystemFd(int fd, const std::string& path) {
  Status s;
  if (!Step("syncfs", path, &s)) return s;
  s = Env::SyncFilesystemFd(fd, path);
  if (s.ok()) MarkAllDurable();
  return s;
}

Status PowerCutEnv::SyncFilesystem(const std::string& path) {
  Status s;
  if (!Step("syncfs", path, &s)) return s;
  s = Env::SyncFilesystem(path);
  if (s.ok()) MarkAllDurable();
  return s;
}

void PowerCutEnv::ApplyPowerCut(Outcome outcome) {
  std::lock_guard<std::mutex> l(mu_);
  if (outcome == Outcome::kKeepEntries) ops_.clear();
  auto durable_in = [&](const std::string& dir, uint64_t seq) {
    auto it = dir_synced_.find(dir);
    return it != dir_synced_.end() && it->second > seq;
  };
  // Undo, newest first, what no directory fsync made durable.
  for (auto it = ops_.rbegin(); it != ops_.rend(); ++it) {
    const EntryOp& op = *it;
    switch (op.kind) {
      case EntryOp::kCreate:
        if (!durable_in(Parent(op.to), op.seq)) {
          ::unlink(op.to.c_str());
          files_.erase(op.to);
        }
        break;
      case EntryOp::kUnlink:
        // A removal by path (Remove) no fsync of its directory covered is
        // undone: the file is back, with what of it was synced. (UnlinkAt
        // keeps no bytes: a removed temp file coming back would be garbage
        // the next run cleans, so leaving it removed is the harder case
        // there.)
        if (op.replaced && !durable_in(Parent(op.from), op.seq)) {
          WriteFile(op.from, *op.replaced);
          if (op.replaced_state) {
            files_[op.from] = *op.replaced_state;
          } else {
            files_.erase(op.from);
          }
        }
        break;
      case EntryOp::kRename: {
        const bool in = durable_in(Parent(op.to), op.seq);
        const bool out = durable_in(Parent(op.from), op.seq);
        if (in && out) break;
        // Where the target's entry change is undone, a file it replaced
        // is back under its name.
        auto restore = [&] {
          if (!op.replaced) return;
          WriteFile(op.to, *op.replaced);
          if (op.replaced_state) {
            files_[op.to] = *op.replaced_state;
          } else {
            files_.erase(op.to);
          }
        };
        if (!in && !out) {
          ::rename(op.to.c_str(), op.from.c_str());
          auto f = files_.find(op.to);
          if (f != files_.end()) {
            files_[op.from] = f->second;
            files_.erase(f);
          }
          restore();
        } else if (in && !out) {
          ::link(op.to.c_str(), op.from.c_str());
          auto f = files_.find(op.to);
          if (f != files_.end()) files_[op.from] = f->second;
        } else {  // !in && out: the file is gone
          ::unlink(op.to.c_str());
          files_.erase(op.to);
          restore();
        }
        break;
      }
    }
  }
  // Drop data never made durable.
  for (const auto& [p, f] : files_) {
    if (f.synced < f.written) (void)::truncate(p.c_str(), static_cast<off_t>(f.synced));
  }
  ops_.clear();
}

}  // namespace wxa::test
