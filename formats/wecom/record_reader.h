// Streams the JSON-lines files of a WeCom archive export, one record per line,
// each with its byte offset and line number: the resume cursor.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/file.h"
#include "formats/core/status.h"

namespace wxa::wecom {

// Bytes beyond size() that every RawRecord::bytes keeps allocated, so the JSON
// parser (simdjson needs 64) can read past the end without a copy.
inline constexpr size_t kRecordPadding = 64;
// Lines longer than this are reported as malformed without being parsed.
inline constexpr size_t kMaxRecordBytes = 64u << 20;

struct RawRecord {
  uint32_t file_index = 0;   // index into RecordReader::files()
  uint64_t offset = 0;       // byte offset of the first byte of the line
  uint64_t line = 0;         // 1-based
  uint64_t next_offset = 0;  // offset just past the line and its newline: where to resume
  std::string bytes;         // the line without its line ending; capacity >= size + padding
  bool unterminated = false; // last line of the file had no newline (possibly truncated)
  bool too_long = false;     // longer than kMaxRecordBytes; bytes holds only a prefix
};

// Where to start reading a file (resume).
struct FileStart {
  uint64_t offset = 0;
  uint64_t line = 0;  // lines before `offset`
};

// A *.jsonl name in the source that is not read, or not read to its end,
// and why (a directory, a FIFO, a dangling symlink or one leading out of the
// source, unreadable, a read error part way through).
struct FileIssue {
  std::string file;
  std::string reason;
};

// The media bytes a record line declares: the sum of its "filesize",
// "voice_size" and "imagesize" numbers, nested ones included, however
// deeply JSON-escaped (a mixed message's parts, inside a chat record too),
// without parsing the line. Only an estimate for cutting batches (a
// media-heavy batch of 2,048 records can hold hundreds of MB to hash and
// encode): a value that is not a plain number is skipped (a decimal or
// exponent form counts its leading digits), so is one over `max_each`
// (media that big is rejected unread, so it costs nothing to render), and
// a number past kMaxRecordBytes x 64 counts as that. Media declared under "size" alone, or not at all (meeting
// recordings), is not counted.
uint64_t DeclaredMediaBytes(std::string_view line, uint64_t max_each = UINT64_MAX);

// Where RecordReader::NextBatch ends a batch.
struct BatchLimits {
  size_t records = 2048;
  size_t bytes = 4u << 20;  // of lines
  // Of media the lines declare (DeclaredMediaBytes, each value at most
  // media_max_each), once the batch holds media_min_records: a batch's
  // fixed costs (an index commit, a share of a barrier) stay small beside
  // its records' even when most of the declared media is never read
  // (missing files).
  uint64_t media_bytes = UINT64_MAX;
  size_t media_min_records = 256;
  uint64_t media_max_each = UINT64_MAX;
};

class RecordReader {
 public:
  // Lists the *.jsonl files directly in source_dir, sorted by name. Each is
  // opened beneath source_dir (core::RootedDir): what is not a readable
  // regular file inside the source is left out and listed in issues(). An
  // empty directory is fine (no records); a missing or unreadable one is an
  // error. A UTF-8 BOM at the start of a file is skipped. Every listing,
  // open and read goes through `env`.
  static Result<RecordReader> Open(const std::string& source_dir, core::Env* env = core::Env::Default());

  const std::string& source_dir() const { return dir_; }
  // Paths relative to source_dir; the index of a file is its position here.
  const std::vector<std::string>& files() const { return files_; }
  uint64_t FileSize(uint32_t i) const { return sizes_[i]; }
  // Starts file i at `start` instead of its beginning. Call before reading it.
  void SetStart(uint32_t i, FileStart start);
  uint64_t StartOffset(uint32_t i) const { return skip_[i] ? sizes_[i] : starts_[i].offset; }
  // Skips file i entirely (already fully read by an earlier run).
  void SkipFile(uint32_t i);

  // Appends records to *out until one of `limits` is reached or the files
  // are exhausted. Returns false when no record was added (the end).
  // A file that cannot be opened, or whose read fails part way through, is
  // listed in issues() and left for the next file: the records read before
  // the failure are handed out, nothing after it (not even a partly read
  // line), so a rerun resuming at the last record's next_offset reads the
  // rest exactly once.
  Result<bool> NextBatch(const BatchLimits& limits, std::vector<RawRecord>* out);
  Result<bool> NextBatch(size_t max_records, size_t max_bytes, std::vector<RawRecord>* out) {
    BatchLimits l;
    l.records = max_records;
    l.bytes = max_bytes;
    return NextBatch(l, out);
  }

  uint64_t bytes_read() const { return bytes_read_; }

  // Hash of the first `len` bytes of file i (16 bytes of SHA-256): tells a
  // file that was appended to from one that was replaced.
  Result<std::string> PrefixHash(uint32_t i, uint32_t len) const;

  // Files left out at Open(), and files that could not be opened or read to
  // their end when their turn came (the rest is skipped; a rerun tries it
  // again). Take() hands over the ones not taken yet.
  const std::vector<FileIssue>& issues() const { return issues_; }
  std::vector<FileIssue> TakeNewIssues();

 private:
  Status OpenFile(uint32_t i);
  // Refills buf_ from fd_ keeping [pos_, end). Returns false at EOF.
  Result<bool> Fill();
  // A read of the current file failed with `s`: lists it in issues(), saying
  // where reading stopped (byte `offset`, after line `line`), and moves on to
  // the next file.
  void AbandonFile(const core::Status& s, uint64_t offset, uint64_t line);

  core::Env* env_ = core::Env::Default();
  std::string dir_;
  core::RootedDir root_;
  std::vector<FileIssue> issues_;
  size_t issues_taken_ = 0;
  std::vector<std::string> files_;
  std::vector<uint64_t> sizes_;
  std::vector<FileStart> starts_;
  std::vector<bool> skip_;

  uint32_t cur_ = 0;          // current file index
  bool open_ = false;
  core::UniqueFd fd_;
  std::string cur_path_;      // full path of the current file, for errors
  std::string buf_;           // read buffer
  size_t pos_ = 0;            // first unconsumed byte in buf_
  uint64_t buf_offset_ = 0;   // file offset of buf_[0]
  uint64_t line_ = 0;         // lines consumed in the current file
  bool eof_ = false;
  uint64_t bytes_read_ = 0;
};

}  // namespace wxa::wecom
