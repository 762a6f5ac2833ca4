#include "tests/fuzz/fuzz_support.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>
#include <vector>

#include "formats/core/file.h"

namespace wxa::fuzz {

const ScratchDir& ScratchDir::Get() {
  static const ScratchDir dir;
  return dir;
}

ScratchDir::ScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/wxa-fuzz-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) Fail(__FILE__, __LINE__, "mkdtemp", templ);
  path_ = buf.data();
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string ScratchDir::Path(std::string_view rel) const { return path_ + "/" + std::string(rel); }

void WriteFileOrDie(const std::string& path, std::string_view bytes) {
  core::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) Fail(__FILE__, __LINE__, "open for writing", path);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) Fail(__FILE__, __LINE__, "write", path);
    done += static_cast<size_t>(n);
  }
}

void MakeDirOrDie(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) Fail(__FILE__, __LINE__, "create_directories", path + ": " + ec.message());
}

std::vector<std::string_view> SplitInput(std::string_view in, char sep, size_t parts) {
  std::vector<std::string_view> out;
  while (out.size() + 1 < parts) {
    size_t at = in.find(sep);
    if (at == std::string_view::npos) break;
    out.push_back(in.substr(0, at));
    in.remove_prefix(at + 1);
  }
  out.push_back(in);
  out.resize(parts);
  return out;
}

}  // namespace wxa::fuzz
