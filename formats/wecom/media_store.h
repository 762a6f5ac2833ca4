// The media directory beside the records (ARCHITECTURE section 3):
//   media/<md5sum>             when the payload has an md5sum (stored once however often forwarded)
//   media/<sdkfileid>          otherwise, with '+' -> '-' and '/' -> '_'
//   media/<sha256 hex of id>   when that name would exceed 255 bytes (real sdkfileids often do)
//   media/index.csv            optional "sdkfileid,path" rows (path relative to media/) that win
// Every file is opened beneath the source directory (core::RootedDir): a
// symlink leading out of it, a FIFO, a device or a directory is never read.
// Resolve() finds a file without reading it; Load() reads it once and
// verifies the declared size and MD5 on the very bytes that go into the item,
// so a file rewritten or truncated during the run can never be mailed as if
// it matched (and, being read rather than mapped, can never SIGBUS us).
// Every open and read goes through a core::Env (tests fail them on demand).
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "formats/core/file.h"
#include "formats/core/item.h"
#include "formats/core/status.h"
#include "formats/wecom/directory.h"

namespace wxa::wecom {

class MediaStore {
 public:
  // `source_dir` holds media/ (which may not exist: every lookup then
  // misses). A malformed or refused media/index.csv is an error; its
  // unusable rows are listed in issues(). Files are opened and read
  // through `env`, which must outlive the store.
  static Result<MediaStore> Open(const std::string& source_dir, core::Env* env = core::Env::Default());

  // Finds the file for `ref`: state kFound with path and size, or kMissing
  // with the reason in ref.problem. Opens and closes the file (one
  // descriptor at a time); reads nothing. Thread-safe.
  void Resolve(core::MediaRef& ref) const;

  // Reads a kFound ref into ref.bytes and verifies it: kOk, or kCorrupt
  // (attached as read, ref.problem says why), or kMissing when it can no
  // longer be opened or its read fails (ref.problem names the file and the
  // error). A file over `max_bytes` is not read: kTooLarge, and the
  // ref stays kFound. Refs in any other state are left alone. Thread-safe.
  Status Load(core::MediaRef& ref, uint64_t max_bytes) const;

  // A found ref's file hashed in pieces (memory stays flat whatever its
  // size), up to its size when opened: a file that grows meanwhile is not
  // followed (it is hashed to that size, and `problem` says it grew). Thread-safe.
  struct FileDigest {
    std::string sha256_hex;
    std::string md5_hex;
    uint64_t size = 0;          // bytes hashed: at most size_at_open
    uint64_t size_at_open = 0;
    std::string problem;        // how it differs from the record, or that it changed while read; empty if neither
  };
  Result<FileDigest> Digest(const core::MediaRef& ref) const;

  const std::vector<CsvIssue>& issues() const { return issues_; }
  const std::string& dir() const { return media_dir_; }

 private:
  // The file name (relative to media/) for a ref, or an explanation in *why.
  std::string LocalName(const core::MediaRef& ref, std::string* why) const;

  core::Env* env_ = core::Env::Default();
  core::RootedDir source_;  // invalid when the source has no media/ directory
  bool have_dir_ = false;
  std::string media_dir_;
  std::unordered_map<std::string, std::string> index_;  // sdkfileid -> path relative to media/
  std::vector<CsvIssue> issues_;
};

// True when s is a safe relative path below a directory: not absolute, no
// "." or ".." components, no empty components, no NUL/control characters.
bool IsSafeRelativePath(std::string_view s);

// The media/ file name for an sdkfileid without md5sum: '+' -> '-', '/' ->
// '_', or the SHA-256 hex of the id when that would exceed 255 bytes. Empty
// when the id is not usable as a name ("." or "..", control characters).
std::string SdkFileIdName(std::string_view sdkfileid);

}  // namespace wxa::wecom
