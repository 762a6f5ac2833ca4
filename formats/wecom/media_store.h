// The media directory beside the records (ARCHITECTURE section 3):
//   media/<md5sum>           when the payload has an md5sum (stored once however often forwarded)
//   media/<sdkfileid>        otherwise, with '+' -> '-' and '/' -> '_'
//   media/index.csv          optional "sdkfileid,path" rows (path relative to media/) that win
// Resolution checks the declared size and MD5 once per file and caches the
// verdict; the cache is bounded (a backfill can reference millions of files),
// so a file seen again after many others may be checked again.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "formats/core/item.h"
#include "formats/core/status.h"
#include "formats/wecom/directory.h"

namespace wxa::wecom {

struct MediaStats {
  uint64_t files_verified = 0;  // distinct files hashed
  uint64_t bytes_verified = 0;
  uint64_t cached = 0;          // verdicts held now
};

class MediaStore {
 public:
  // media_dir may not exist (a corpus without media): every lookup then misses.
  // A malformed index.csv is an error; unusable rows are listed in issues().
  // At most max_cached verdicts are kept (about 250 bytes each); when full
  // the cache starts over.
  static constexpr size_t kDefaultMaxCached = size_t{1} << 16;
  static Result<MediaStore> Open(const std::string& media_dir, size_t max_cached = kDefaultMaxCached);

  // Fills ref.path / ref.size / ref.problem. Never fails: a missing, unreadable
  // or mismatching file is described in ref.problem. A file whose bytes do not
  // match the record is still offered (path set) so nothing is lost; its
  // problem says so. Thread-safe.
  void Resolve(core::MediaRef& ref);

  const std::vector<CsvIssue>& issues() const { return issues_; }
  MediaStats stats() const;
  const std::string& dir() const { return dir_; }

 private:
  struct Verdict {
    bool exists = false;
    std::string error;     // open/read failure
    uint64_t size = 0;
    std::string md5_hex;   // computed lazily, only when some record declares one
  };
  // The file name (relative to media/) for a ref, or an explanation in *why.
  std::string LocalName(const core::MediaRef& ref, std::string* why) const;
  Verdict Check(const std::string& rel, bool need_md5);

  std::string dir_;
  bool have_dir_ = false;
  size_t max_cached_ = kDefaultMaxCached;
  std::unordered_map<std::string, std::string> index_;  // sdkfileid -> relative path
  std::vector<CsvIssue> issues_;
  // Verdicts shared by the pipeline threads; behind a pointer so the store moves.
  struct Shared {
    std::mutex mu;
    std::unordered_map<std::string, Verdict> cache;  // GUARDED_BY(mu)
    MediaStats stats;                                // GUARDED_BY(mu)
  };
  std::unique_ptr<Shared> shared_ = std::make_unique<Shared>();
};

// True when s is a safe relative path below a directory: not absolute, no
// "." or ".." components, no empty components, no NUL/control characters.
bool IsSafeRelativePath(std::string_view s);

}  // namespace wxa::wecom
