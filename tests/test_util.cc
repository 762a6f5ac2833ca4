#include "tests/test_util.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace wxa::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/wxa-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

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

Status FaultEnv::WriteAll(int fd, std::string_view data, const std::string& path) {
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

}  // namespace wxa::test
