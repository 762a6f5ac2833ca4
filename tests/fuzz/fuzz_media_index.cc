// Fuzz target: media/index.csv and the lookups it steers.
// The input becomes media/index.csv of a source directory made once per
// process, whose media/ also holds a few files, a subdirectory, a FIFO and
// symlinks leading out of the source (to a file holding a secret). Each run
// opens the store (wecom::MediaStore::Open), then resolves and loads refs
// named by the input's own fields and a few fixed ones. Checks, beyond "no
// crash" and "no hang" (a FIFO must never be opened for reading):
//  - Resolve gives kFound with a safe "media/..." path, or kMissing with a
//    reason; Load gives bytes whose size is the recorded size;
//  - nothing outside the source is ever read (the secret never shows up);
//  - SdkFileIdName gives a single safe path component or nothing.
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/csv.h"
#include "formats/core/hash.h"
#include "formats/core/item.h"
#include "formats/wecom/media_store.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace core = wxa::core;
namespace wecom = wxa::wecom;

constexpr std::string_view kSecret = "SECRET-OUTSIDE-THE-SOURCE";
constexpr size_t kMaxRefsFromInput = 6;
constexpr uint64_t kLoadLimit = 1 << 20;

struct Fixture {
  std::string source;      // the source directory (holds media/)
  std::string index_path;  // source/media/index.csv
  std::string gamma_md5;   // MD5 hex of media/<md5>'s content
};

void Symlink(const std::string& target, const std::string& link) {
  if (::symlink(target.c_str(), link.c_str()) != 0) wxa::fuzz::Fail(__FILE__, __LINE__, "symlink", link);
}

const Fixture& GetFixture() {
  static const Fixture fx = [] {
    Fixture f;
    const auto& scratch = wxa::fuzz::ScratchDir::Get();
    f.source = scratch.Path("source");
    const std::string media = f.source + "/media";
    wxa::fuzz::MakeDirOrDie(media + "/sub");
    wxa::fuzz::MakeDirOrDie(media + "/dir.d");
    wxa::fuzz::WriteFileOrDie(scratch.Path("secret"), kSecret);
    wxa::fuzz::WriteFileOrDie(media + "/a.bin", "alpha");
    wxa::fuzz::WriteFileOrDie(media + "/sub/b.txt", "beta");
    wxa::fuzz::WriteFileOrDie(media + "/x-y_z", "delta");  // SdkFileIdName("x+y/z")
    f.gamma_md5 = core::ToHex(core::Md5("gamma"));
    wxa::fuzz::WriteFileOrDie(media + "/" + f.gamma_md5, "gamma");
    wxa::fuzz::WriteFileOrDie(media + "/big.bin", std::string(4096, 'B'));
    Symlink("../../secret", media + "/out");
    Symlink(scratch.Path("secret"), media + "/abs");
    Symlink(scratch.path(), media + "/up.d");
    Symlink("a.bin", media + "/inside");
    if (::mkfifo((media + "/fifo").c_str(), 0600) != 0) wxa::fuzz::Fail(__FILE__, __LINE__, "mkfifo", media);
    f.index_path = media + "/index.csv";
    return f;
  }();
  return fx;
}

core::MediaRef Ref(std::string sdkfileid, std::string md5, std::string ext = {}) {
  core::MediaRef r;
  r.role = "file";
  r.sdkfileid = std::move(sdkfileid);
  r.md5sum = std::move(md5);
  r.extension = std::move(ext);
  return r;
}

std::string Upper(std::string s) {
  for (char& c : s) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return s;
}

void CheckName(std::string_view id) {
  std::string name = wecom::SdkFileIdName(id);
  if (name.empty()) return;
  WXA_FUZZ_CHECK(name.size() <= 255, name);
  WXA_FUZZ_CHECK(name.find('/') == std::string::npos, name);
  WXA_FUZZ_CHECK(wecom::IsSafeRelativePath(name), name);
}

void ResolveAndLoad(const wecom::MediaStore& store, core::MediaRef ref, uint64_t limit) {
  store.Resolve(ref);
  if (ref.state == core::MediaState::kFound) {
    WXA_FUZZ_CHECK(ref.path.rfind("media/", 0) == 0, ref.path);
    WXA_FUZZ_CHECK(wecom::IsSafeRelativePath(ref.path), ref.path);
    WXA_FUZZ_CHECK(ref.problem.empty(), ref.problem);
  } else {
    WXA_FUZZ_CHECK(ref.state == core::MediaState::kMissing, ref.sdkfileid);
    WXA_FUZZ_CHECK(!ref.problem.empty() && ref.path.empty(), ref.sdkfileid);
    return;
  }
  (void)store.Load(ref, limit);  // TooLarge is an answer, not an error here
  if (ref.has_bytes()) {
    WXA_FUZZ_CHECK(ref.bytes.size() == ref.size, ref.path);
    WXA_FUZZ_CHECK(ref.bytes.size() <= limit, ref.path);
    WXA_FUZZ_CHECK(ref.bytes.find(kSecret) == std::string::npos, ref.path);
    WXA_FUZZ_CHECK(ref.state != core::MediaState::kOk || ref.problem.empty(), ref.problem);
  } else {
    WXA_FUZZ_CHECK(ref.bytes.empty(), ref.path);
    WXA_FUZZ_CHECK(ref.state == core::MediaState::kFound || ref.state == core::MediaState::kMissing,
                   ref.path);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Fixture& fx = GetFixture();
  const std::string_view in = wxa::fuzz::AsView(data, size);
  wxa::fuzz::WriteFileOrDie(fx.index_path, in);

  auto store = wecom::MediaStore::Open(fx.source);
  if (!store.ok()) {
    WXA_FUZZ_CHECK(!store.status().message().empty(), "");
    return 0;
  }
  for (const auto& issue : store->issues()) WXA_FUZZ_CHECK(issue.line >= 1, issue.reason);

  // The input's own fields as sdkfileids (index hits) and as md5sums.
  std::vector<core::MediaRef> refs;
  if (auto table = core::ParseCsv(in, "index.csv"); table.ok()) {
    for (const auto& row : table->rows) {
      for (const auto& f : row.fields) {
        if (refs.size() >= kMaxRefsFromInput) break;
        CheckName(f);
        refs.push_back(Ref(f, f, "jpg"));
      }
    }
  }
  refs.push_back(Ref("a.bin", ""));
  refs.push_back(Ref("x+y/z", ""));
  refs.push_back(Ref("", Upper(fx.gamma_md5)));
  refs.push_back(Ref("out", ""));
  refs.push_back(Ref("fifo", ""));
  refs.push_back(Ref(std::string(300, 'L'), ""));
  // Every other ref loads with a limit below most files' size (TooLarge).
  for (size_t i = 0; i < refs.size(); ++i) ResolveAndLoad(*store, refs[i], (i + size) % 2 ? kLoadLimit : 4);
  return 0;
}
