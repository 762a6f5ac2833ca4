#include "formats/wecom/record_reader.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "formats/core/hash.h"

namespace wxa::wecom {

namespace {
constexpr size_t kReadChunk = 1u << 20;

// The number after `"key` at line[at] (`"key": 123`, `"key":"123"`, or the
// escaped `\"key\":123` of a JSON string inside the line, at any depth of
// escaping); 0 if none.
uint64_t SizeAfterKey(std::string_view line, size_t at) {
  while (at < line.size() && line[at] == '\\') ++at;
  if (at >= line.size() || line[at] != '"') return 0;
  ++at;
  while (at < line.size() && (line[at] == ' ' || line[at] == '\t')) ++at;
  if (at >= line.size() || line[at] != ':') return 0;
  ++at;
  while (at < line.size() && (line[at] == ' ' || line[at] == '\t' || line[at] == '\\' || line[at] == '"')) ++at;
  constexpr uint64_t kCap = uint64_t{kMaxRecordBytes} * 64;
  uint64_t v = 0;  // at most kCap, so v * 10 + 9 never wraps however long the number
  for (; at < line.size() && line[at] >= '0' && line[at] <= '9'; ++at) {
    v = std::min<uint64_t>(kCap, v * 10 + static_cast<uint64_t>(line[at] - '0'));
  }
  return v;
}
}  // namespace

uint64_t DeclaredMediaBytes(std::string_view line, uint64_t max_each) {
  uint64_t total = 0;
  // Every key ends in "size": find that, then check which key it closes.
  for (size_t p = line.find("size"); p != std::string_view::npos; p = line.find("size", p + 4)) {
    for (std::string_view key : {std::string_view("\"filesize"), std::string_view("\"voice_size"),
                                 std::string_view("\"imagesize")}) {
      const size_t len = key.size() - 4;  // the part before "size"
      if (p >= len && line.substr(p - len, key.size()) == key) {
        const uint64_t v = SizeAfterKey(line, p + 4);
        if (v <= max_each) total += v;
        break;
      }
    }
  }
  return total;
}

Result<RecordReader> RecordReader::Open(const std::string& source_dir, core::Env* env) {
  RecordReader r;
  r.env_ = env != nullptr ? env : core::Env::Default();
  r.dir_ = source_dir;
  auto root = r.env_->OpenRoot(source_dir);
  if (!root.ok()) return root.status().WithContext("source directory");
  r.root_ = std::move(*root);
  WXA_ASSIGN_OR_RETURN(auto entries, r.env_->ListDirFd(r.root_.fd(), source_dir));
  std::vector<std::string> names;
  for (const auto& name : entries) {
    if (name.size() > 6 && name.compare(name.size() - 6, 6, ".jsonl") == 0 && name[0] != '.') {
      names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    struct stat st {};
    auto fd = r.env_->OpenFileBeneath(r.root_, name, &st);
    if (!fd.ok()) {
      r.issues_.push_back({name, fd.status().IsNotFound()
                                     ? fmt::format("{}: a dangling symlink or gone", name)
                                     : fd.status().message()});
      continue;
    }
    r.files_.push_back(name);
    r.sizes_.push_back(static_cast<uint64_t>(st.st_size));
  }
  r.starts_.assign(r.files_.size(), FileStart{});
  r.skip_.assign(r.files_.size(), false);
  return r;
}

std::vector<FileIssue> RecordReader::TakeNewIssues() {
  std::vector<FileIssue> out(issues_.begin() + static_cast<long>(issues_taken_), issues_.end());
  issues_taken_ = issues_.size();
  return out;
}

Result<std::string> RecordReader::PrefixHash(uint32_t i, uint32_t len) const {
  const std::string p = core::JoinPath(dir_, files_[i]);
  auto fd = env_->OpenFileBeneath(root_, files_[i], nullptr);
  if (!fd.ok()) return fd.status();
  std::string buf(len, '\0');
  size_t got = 0;
  while (got < len) {
    WXA_ASSIGN_OR_RETURN(size_t n, env_->PRead(fd->get(), buf.data() + got, len - got, got, p));
    if (n == 0) break;
    got += n;
  }
  buf.resize(got);
  core::Sha256Digest d = core::Sha256(buf);
  return std::string(reinterpret_cast<const char*>(d.data()), 16);
}

void RecordReader::SetStart(uint32_t i, FileStart start) { starts_[i] = start; }
void RecordReader::SkipFile(uint32_t i) { skip_[i] = true; }

core::Status RecordReader::OpenFile(uint32_t i) {
  cur_path_ = core::JoinPath(dir_, files_[i]);
  WXA_ASSIGN_OR_RETURN(fd_, env_->OpenFileBeneath(root_, files_[i], nullptr));
  ::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  const FileStart& s = starts_[i];
  if (s.offset > 0 && ::lseek(fd_.get(), static_cast<off_t>(s.offset), SEEK_SET) < 0) {
    return core::Status::FromErrno("seek", cur_path_, errno);
  }
  buf_.clear();
  pos_ = 0;
  buf_offset_ = s.offset;
  line_ = s.line;
  eof_ = false;
  open_ = true;
  if (s.offset == 0) {
    // A UTF-8 byte order mark (editors on Windows write one) is not part of
    // the first record.
    while (buf_.size() < 3) {
      WXA_ASSIGN_OR_RETURN(bool more, Fill());
      if (!more) break;
    }
    if (buf_.compare(0, 3, "\xEF\xBB\xBF") == 0) pos_ = 3;
  }
  return core::Status::Ok();
}

Result<bool> RecordReader::Fill() {
  if (eof_) return false;
  // Drop consumed bytes, then append one chunk.
  if (pos_ > 0) {
    buf_.erase(0, pos_);
    buf_offset_ += pos_;
    pos_ = 0;
  }
  size_t old = buf_.size();
  buf_.resize(old + kReadChunk);
  auto n = env_->Read(fd_.get(), buf_.data() + old, kReadChunk, cur_path_);
  if (!n.ok()) {
    buf_.resize(old);
    return n.status();
  }
  buf_.resize(old + *n);
  bytes_read_ += static_cast<uint64_t>(*n);
  if (*n == 0) eof_ = true;
  return *n > 0;
}

void RecordReader::AbandonFile(const core::Status& s, uint64_t offset, uint64_t line) {
  // Nothing from `offset` on was handed out, so the file's cursor stays at
  // or before it and a rerun reads the rest.
  issues_.push_back({files_[cur_], fmt::format("the rest from byte {} (after line {}) is left for a rerun: {}",
                                               offset, line, s.message())});
  fd_.Reset();
  open_ = false;
  buf_.clear();
  pos_ = 0;
  ++cur_;
}

Result<bool> RecordReader::NextBatch(const BatchLimits& limits, std::vector<RawRecord>* out) {
  size_t added = 0, bytes = 0;
  uint64_t media = 0;
  const bool count_media = limits.media_bytes != UINT64_MAX;
  while (added < limits.records && bytes < limits.bytes &&
         (media < limits.media_bytes || added < std::max<size_t>(1, limits.media_min_records))) {
    if (!open_) {
      while (cur_ < files_.size() && skip_[cur_]) ++cur_;
      if (cur_ >= files_.size()) break;
      core::Status os = OpenFile(cur_);
      if (!os.ok()) {
        // Replaced by something unreadable since Open(): skip it, say so.
        // Its cursor does not move, so a rerun reads it when it is fixed.
        issues_.push_back({files_[cur_], os.message()});
        fd_.Reset();
        ++cur_;
        continue;
      }
    }
    // Find the next line end, refilling as needed.
    // Fill() shifts the buffer, so remember how far past pos_ we have looked.
    size_t scanned = 0;
    size_t nl;
    bool too_long = false;
    bool read_failed = false;
    while ((nl = buf_.find('\n', pos_ + scanned)) == std::string::npos) {
      scanned = buf_.size() - pos_;
      if (scanned > kMaxRecordBytes) {
        too_long = true;
        break;
      }
      auto more = Fill();
      if (!more.ok()) {
        // The line begun at pos_ is dropped whole: a rerun reads it.
        AbandonFile(more.status(), buf_offset_ + pos_, line_);
        read_failed = true;
        break;
      }
      if (!*more) break;
    }
    if (read_failed) continue;
    if (too_long) {
      // Report the prefix, then discard up to the next newline (or EOF).
      RawRecord rec;
      rec.file_index = cur_;
      rec.offset = buf_offset_ + pos_;
      rec.line = ++line_;
      rec.too_long = true;
      rec.bytes.reserve(4096 + kRecordPadding);
      rec.bytes.assign(buf_, pos_, 4096);
      while (true) {
        nl = buf_.find('\n', pos_);
        if (nl != std::string::npos) {
          pos_ = nl + 1;
          break;
        }
        pos_ = buf_.size();
        auto more = Fill();
        if (!more.ok()) {
          AbandonFile(more.status(), rec.offset, rec.line - 1);
          read_failed = true;
          break;
        }
        if (!*more) {
          // No newline before the end: an export still being written,
          // maybe. The record is read again from its start next time, as
          // any last line without its newline (its tail is not a record).
          rec.unterminated = true;
          break;
        }
      }
      if (read_failed) continue;
      rec.next_offset = buf_offset_ + pos_;
      out->push_back(std::move(rec));
      ++added;
      continue;
    }
    if (nl == std::string::npos && pos_ >= buf_.size()) {
      // End of this file.
      fd_.Reset();
      open_ = false;
      ++cur_;
      continue;
    }
    RawRecord rec;
    rec.file_index = cur_;
    rec.offset = buf_offset_ + pos_;
    rec.line = ++line_;
    size_t end = (nl == std::string::npos) ? buf_.size() : nl;
    rec.unterminated = (nl == std::string::npos);
    size_t next = (nl == std::string::npos) ? buf_.size() : nl + 1;
    size_t content_end = end;
    if (content_end > pos_ && buf_[content_end - 1] == '\r') --content_end;
    rec.next_offset = buf_offset_ + next;
    bool blank = true;
    for (size_t k = pos_; k < content_end; ++k) {
      char c = buf_[k];
      if (c != ' ' && c != '\t' && c != '\r') {
        blank = false;
        break;
      }
    }
    const size_t start = pos_;
    const size_t len = content_end - start;
    pos_ = next;
    if (blank) continue;  // blank lines are not records
    rec.bytes.reserve(len + kRecordPadding);
    rec.bytes.assign(buf_, start, len);
    bytes += len;
    if (count_media) media += DeclaredMediaBytes(rec.bytes, limits.media_max_each);
    out->push_back(std::move(rec));
    ++added;
  }
  return added > 0;
}

}  // namespace wxa::wecom
