// Helpers shared by the fuzz targets: a failed check that libFuzzer reports
// as a crash, and a scratch directory for targets whose API takes paths.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace wxa::fuzz {

// A violated property: print what and where, then abort so that libFuzzer
// (and the regression driver, via its exit status) reports the input.
[[noreturn]] inline void Fail(const char* file, int line, const char* what, std::string_view detail) {
  std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", file, line, what);
  if (!detail.empty()) {
    std::fprintf(stderr, "  detail: %.*s\n", static_cast<int>(detail.size()), detail.data());
  }
  std::abort();
}

#define WXA_FUZZ_CHECK(cond, detail) \
  do {                               \
    if (!(cond)) ::wxa::fuzz::Fail(__FILE__, __LINE__, #cond, (detail)); \
  } while (0)

inline std::string_view AsView(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A private directory under $TMPDIR (or /tmp), made once per process and
// removed at exit. Reusing it keeps a run to a few syscalls per input.
class ScratchDir {
 public:
  // The process-wide instance.
  static const ScratchDir& Get();
  const std::string& path() const { return path_; }
  // path()/rel
  std::string Path(std::string_view rel) const;
  ~ScratchDir();

 private:
  ScratchDir();
  std::string path_;
};

// Replaces the file at `path` with `bytes` (truncate + write); aborts when
// the file cannot be written, since every later check would be meaningless.
void WriteFileOrDie(const std::string& path, std::string_view bytes);
// Creates the directory (and parents) when missing; aborts on failure.
void MakeDirOrDie(const std::string& path);

// Splits `in` at the first `parts - 1` occurrences of `sep`: lets one input
// carry several files. Missing parts are empty.
std::vector<std::string_view> SplitInput(std::string_view in, char sep, size_t parts);

}  // namespace wxa::fuzz
