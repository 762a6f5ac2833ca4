// Replays fuzz inputs without libFuzzer (zstd's tests/fuzz/regression_driver.c
// idea): every regular file under the given files or directories, in name
// order, goes once through the target's LLVMFuzzerTestOneInput. Linked with
// each target for ctest, so the committed corpus and crashers stay fixed
// with the normal toolchain. A failed check aborts; the handler names the
// input first.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

char g_current[4096];  // the input being run, for the signal handler

void OnFatalSignal(int sig) {
  const char prefix[] = "\nregression driver: input that failed: ";
  (void)!write(STDERR_FILENO, prefix, sizeof prefix - 1);
  (void)!write(STDERR_FILENO, g_current, strnlen(g_current, sizeof g_current));
  (void)!write(STDERR_FILENO, "\n", 1);
  signal(sig, SIG_DFL);
  raise(sig);
}

bool Wanted(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] != '.' && name.rfind("README", 0) != 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    fs::path arg(argv[i]);
    if (fs::is_directory(arg, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(arg, ec)) {
        if (e.is_regular_file() && Wanted(e.path())) inputs.push_back(e.path());
      }
    } else if (fs::is_regular_file(arg, ec)) {
      inputs.push_back(arg);
    } else if (!fs::exists(arg, ec)) {
      continue;  // an empty crashers/ directory may not exist in a checkout
    }
    if (ec) {
      std::fprintf(stderr, "cannot list %s: %s\n", argv[i], ec.message().c_str());
      return 2;
    }
  }
  std::sort(inputs.begin(), inputs.end());
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP}) signal(sig, OnFatalSignal);

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  double slowest_ms = 0;
  std::string slowest;
  for (const auto& p : inputs) {
    std::ifstream f(p, std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "cannot read %s\n", p.c_str());
      return 2;
    }
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::snprintf(g_current, sizeof g_current, "%s", p.c_str());
    const auto t0 = Clock::now();
    // A fresh heap copy of exactly the input's size, as libFuzzer passes it,
    // so ASan builds see reads past the end.
    std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes.size()]);
    std::memcpy(copy.get(), bytes.data(), bytes.size());
    LLVMFuzzerTestOneInput(copy.get(), bytes.size());
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (ms > slowest_ms) {
      slowest_ms = ms;
      slowest = p.filename().string();
    }
  }
  const double total_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::printf("%zu inputs replayed in %.0f ms (slowest %s: %.1f ms)\n", inputs.size(), total_ms,
              slowest.c_str(), slowest_ms);
  return 0;
}
