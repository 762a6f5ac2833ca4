#include "engine/pipeline/report.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <random>

#include <fmt/format.h>
#include <simdjson.h>

#include "formats/core/json_writer.h"

namespace wxa::pipeline {

const char* OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kUnmapped: return "unmapped";
    case Outcome::kOversize: return "oversize";
    case Outcome::kMalformed: return "malformed";
    case Outcome::kFailed: return "failed";
    case Outcome::kSwitch: return "switch";
    case Outcome::kMissingMedia: return "missing_media";
    case Outcome::kCorruptMedia: return "corrupt_media";
    case Outcome::kRepaired: return "repaired";
    case Outcome::kUnknownType: return "unknown_type";
    case Outcome::kInputIssue: return "input_issue";
    case Outcome::kConflict: return "conflict";
    case Outcome::kStubbed: return "stubbed";
  }
  return "?";
}

bool IsNotImported(Outcome o) {
  return o == Outcome::kUnmapped || o == Outcome::kOversize || o == Outcome::kMalformed ||
         o == Outcome::kFailed || o == Outcome::kConflict;
}

// The directory `path` is in.
static std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Makes the entries of directory `dir` durable. A directory that cannot be
// opened for reading (a drop box: writable, not readable, EACCES) or whose
// file system cannot fsync a directory (EINVAL) is taken as done, as
// PostgreSQL's fsync_fname does: refusing would fail every run that
// reports into such a directory.
static Status SyncDirIfPossible(core::Env* env, const std::string& dir) {
  Status s = env->SyncDir(dir);
  const int err = s.os_errno();
  if (!s.ok() && (err == EACCES || err == EPERM || err == EINVAL)) return Status::Ok();
  return s;
}

// A fresh file at `path` (a stale one from a stopped run is replaced).
static Result<core::UniqueFd> CreateFresh(core::Env* env, const std::string& path) {
  Status rm = env->Remove(path);
  if (!rm.ok() && !rm.IsNotFound()) return rm.WithContext("create report");
  auto fd = env->CreateExclusive(path);
  if (!fd.ok()) return fd.status().WithContext("create report");
  return std::move(*fd);
}

// Whether open file `fd` is still the file at `path` (not removed, nor
// replaced by a rename, since it was opened).
static bool StillAt(int fd, const std::string& path) {
  struct stat a, b;
  return ::fstat(fd, &a) == 0 && ::lstat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// The report path's lock: "<report>.lock", locked (flock) by the run
// writing the report from Open until Finish has removed its side file, then
// removed. Everything done to the side file (created, carried over,
// removed) is done under it: a second run with the same --report path (and
// another index) is refused at its start, where it would replace or carry
// over the entries of the first while that run writes them. The file is
// removed by its holder, so a lock taken may be on a file no longer at the
// path: it is checked, and the lock taken again on the file there.
static Result<core::UniqueFd> LockReportPath(core::Env* env, const std::string& lock_path) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    auto opened = env->OpenLockFile(lock_path);
    if (!opened.ok()) {
      const int err = opened.status().os_errno();
      const char* hint = err == ENOENT || err == ENOTDIR ? "the report's directory does not exist"
                         : err == EACCES || err == EPERM || err == EROFS
                             ? "files cannot be created in the report's directory"
                             : "something else is where the lock file goes; if no run uses this --report path, "
                               "remove it";
      return opened.status().WithContext(fmt::format("lock the report path ({})", hint));
    }
    core::UniqueFd fd = std::move(*opened);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        return Status::AlreadyExists(fmt::format(
            "another run is writing the report with this path ({} is locked); give this run another --report path",
            lock_path));
      }
      return Status::FromErrno("flock", lock_path, errno);
    }
    if (StillAt(fd.get(), lock_path)) return fd;
  }
  return Status::Aborted(fmt::format("the report's lock file {} keeps being replaced", lock_path));
}

// The side file's first line: {"report_run":"<32 hex digits>"} and a newline.
static constexpr std::string_view kRunHead = "{\"report_run\":\"";
static constexpr size_t kRunIdLen = 32;
static constexpr size_t kRunLineLen = kRunHead.size() + kRunIdLen + 3;

static std::string NewRunId() {
  std::random_device rd;  // /dev/urandom
  std::string id;
  for (int i = 0; i < 4; ++i) id += fmt::format("{:08x}", static_cast<uint32_t>(rd()));
  return id;
}

// The run id on the first line of side file `fd` (empty: none, as in a side
// file of a version before ids, or one cut short).
static std::string RunIdOf(int fd) {
  char line[kRunLineLen];
  ssize_t n;
  do {
    n = ::pread(fd, line, sizeof line, 0);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof line)) return {};
  const std::string_view v(line, sizeof line);
  if (v.substr(0, kRunHead.size()) != kRunHead || v.substr(kRunHead.size() + kRunIdLen) != "\"}\n") return {};
  const std::string_view id = v.substr(kRunHead.size(), kRunIdLen);
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return {};
  }
  return std::string(id);
}

// The report's first member: {"report_run":"<id>", then the summary.
static std::string ReportStart(const std::string& id) { return fmt::format("{}{}\",\n", kRunHead, id); }
static std::string RunLine(const std::string& id) { return fmt::format("{}{}\"}}\n", kRunHead, id); }

// Whether the report at `path` (a regular file, not followed through a
// symlink) is run `id`'s: it starts by saying so.
static bool ReportNamesRun(const std::string& path, const std::string& id) {
  core::UniqueFd in(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  struct stat st;
  if (!in.valid() || ::fstat(in.get(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  const std::string want = ReportStart(id);
  std::string head(want.size(), '\0');
  ssize_t n;
  do {
    n = ::pread(in.get(), head.data(), head.size(), 0);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(want.size()) && head == want;
}

Result<ReportWriter> ReportWriter::Open(const std::string& path, core::Env* env) {
  ReportWriter w;
  w.env_ = env != nullptr ? env : core::Env::Default();
  if (path.empty()) return w;
  struct stat pst;
  if (path.back() == '/' || (::stat(path.c_str(), &pst) == 0 && S_ISDIR(pst.st_mode))) {
    return Status::InvalidArgument(fmt::format("--report {} is a directory; give a file name for the report", path));
  }
  w.path_ = path;
  w.entries_path_ = path + ".entries.tmp";
  w.run_id_ = NewRunId();
  WXA_ASSIGN_OR_RETURN(w.lock_fd_, LockReportPath(w.env_, path + ".lock"));
  struct stat st;
  if (::lstat(w.entries_path_.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      return Status::InvalidArgument(
          fmt::format("{} is a directory, where the report's side file goes; move it away", w.entries_path_));
    }
    // A side file left by a killed run. Anything else there is not ours,
    // and is replaced: a symlink, a FIFO or socket, a hard link to some
    // other file. A side file that cannot be read is an error (its
    // entries would be lost).
    auto old = w.env_->OpenNoFollow(w.entries_path_);
    if (!old.ok() && !old.status().IsNotFound() && old.status().os_errno() != ELOOP &&
        old.status().os_errno() != ENXIO) {
      return old.status().WithContext("read the report's side file left by an interrupted run");
    }
    struct stat ost;
    const bool ours = old.ok() && ::fstat(old->get(), &ost) == 0 && S_ISREG(ost.st_mode) && ost.st_nlink == 1;
    // A run of a version that locked the side file itself may be writing it.
    if (old.ok() && ::flock(old->get(), LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
      return Status::AlreadyExists(fmt::format(
          "another run is writing the report with this path (its side file {} is locked); give this run another "
          "--report path",
          w.entries_path_));
    }
    // Killed after its report was in place: every entry is in that report,
    // and the side file goes instead of being carried over.
    const std::string old_id = ours ? RunIdOf(old->get()) : std::string();
    if (!old_id.empty() && ReportNamesRun(path, old_id)) {
      Status rm = w.env_->Remove(w.entries_path_);
      if (!rm.ok() && !rm.IsNotFound()) return rm.WithContext("remove the side file of a run already reported");
    } else {
      // Its complete entries start this run's, written to a new file
      // renamed over it (a kill meanwhile leaves the old one whole).
      const std::string next = w.entries_path_ + ".new";
      WXA_ASSIGN_OR_RETURN(w.entries_fd_, CreateFresh(w.env_, next));
      (void)::flock(w.entries_fd_.get(), LOCK_EX | LOCK_NB);  // (as below, for earlier versions)
      // Synced before the rename: a power cut must leave the old file or a
      // whole copy, never a renamed file without its data.
      Status s = w.env_->WriteAll(w.entries_fd_.get(), RunLine(w.run_id_), next);
      if (s.ok() && ours) s = w.CarryOver(old->get(), w.entries_path_, w.entries_fd_.get(), next);
      if (s.ok()) s = w.env_->Sync(w.entries_fd_.get(), next);
      if (s.ok()) s = w.env_->Rename(next, w.entries_path_);
      if (!s.ok()) {
        // The old side file stays whole for the next try; the copy goes.
        w.entries_fd_.Reset();
        (void)w.env_->Remove(next);
        return s.WithContext("carry over the entries of an interrupted run");
      }
      return w;
    }
  }
  // This run's own, fresh (a stale one from a stopped run is replaced),
  // locked too, for runs of the version that locked the side file itself.
  WXA_ASSIGN_OR_RETURN(w.entries_fd_, CreateFresh(w.env_, w.entries_path_));
  (void)::flock(w.entries_fd_.get(), LOCK_EX | LOCK_NB);
  // The run's line goes with the first flush (a side file that cannot be
  // written fails there, as for any entry).
  w.buf_ = RunLine(w.run_id_);
  return w;
}

// Reads `fd` to its end, fn(chunk) for each chunk read.
static Status ForEachChunk(int fd, const std::string& path, const std::function<Status(std::string_view)>& fn) {
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("read", path, errno);
    if (n == 0) return Status::Ok();
    WXA_RETURN_IF_ERROR(fn(std::string_view(buf, static_cast<size_t>(n))));
  }
}

// Copies the complete entries of `stale` (one JSON object a line, lines
// joined by ",\n"; the last may be cut short by the kill) to `to`, each
// marked. `in` is the stale file, open, read from where it stands (the
// caller read only its first line, with pread).
Status ReportWriter::CarryOver(int in, const std::string& stale, int to, const std::string& to_path) {
  simdjson::dom::parser parser;
  std::string pending, out;
  auto take = [&](std::string_view line) -> Status {
    // A power cut can leave a file's tail zero-filled (its size durable,
    // its data not): what follows a whole entry is not part of it.
    while (!line.empty() && line.back() == '\0') line.remove_suffix(1);
    if (!line.empty() && line.back() == ',') line.remove_suffix(1);
    simdjson::dom::element e;
    simdjson::padded_string copy(line);
    std::string_view outcome;
    if (line.size() < 2 || line.front() != '{' || parser.parse(copy).get(e) != simdjson::SUCCESS ||
        !e.is_object() || e["outcome"].get(outcome) != simdjson::SUCCESS) {
      return Status::Ok();  // cut short by the kill (or not an entry): dropped
    }
    // Issues of the inputs (the CSV files, source files skipped) are
    // reported again by this run, which reads the same inputs.
    if (outcome == "input_issue") return Status::Ok();
    if (carried_ > 0) out += ",\n";
    constexpr std::string_view kMark = "{\"from_interrupted_run\":true,";
    if (line.substr(0, kMark.size()) != kMark) {  // (carried once already: marked)
      out += kMark;
      line.remove_prefix(1);
    }
    out.append(line);
    ++carried_;
    if (out.size() > (1u << 16)) {
      WXA_RETURN_IF_ERROR(env_->WriteAll(to, out, to_path));
      out.clear();
    }
    return Status::Ok();
  };
  WXA_RETURN_IF_ERROR(ForEachChunk(in, stale, [&](std::string_view chunk) -> Status {
    pending.append(chunk);
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      WXA_RETURN_IF_ERROR(take(std::string_view(pending).substr(start, nl - start)));
    }
    pending.erase(0, start);
    return Status::Ok();
  }));
  WXA_RETURN_IF_ERROR(take(pending));
  entries_ = carried_;
  return env_->WriteAll(to, out, to_path);
}

// A run that ends without Finish (an error on the way) leaves its entries
// for the next run to carry over; an empty side file goes.
ReportWriter::~ReportWriter() {
  if (entries_fd_.valid() && lock_fd_.valid()) {
    (void)Flush();
    entries_fd_.Reset();
    if (entries_ == 0) (void)env_->Remove(entries_path_);
  }
  Unlock();
}

// Removed while still held: a run that opened it meanwhile finds, once it
// has the lock, that it is no longer at the path, and looks again.
void ReportWriter::Unlock() {
  if (!lock_fd_.valid()) return;
  const std::string lock_path = path_ + ".lock";
  if (StillAt(lock_fd_.get(), lock_path)) (void)::unlink(lock_path.c_str());
  lock_fd_.Reset();
}

Status ReportWriter::Flush(bool durable) {
  if (!entries_fd_.valid()) return Status::Ok();
  if (!write_error_.ok()) return write_error_;  // nothing more after a torn write
  if (!buf_.empty()) {
    Status s = env_->WriteAll(entries_fd_.get(), buf_, entries_path_);
    buf_.clear();
    unsynced_ = true;
    if (!s.ok()) {
      write_error_ = s;
      return s;
    }
  }
  if (!durable || !unsynced_) return Status::Ok();
  Status s = env_->Sync(entries_fd_.get(), entries_path_);
  if (s.ok() && !dir_synced_) {
    // Open created the file (or renamed the carried-over copy into place):
    // that name must survive the cut too.
    s = SyncDirIfPossible(env_, DirOf(entries_path_));
    if (s.ok()) dir_synced_ = true;
  }
  if (!s.ok()) {
    // Unknown what reached the disk: treated as a torn write.
    write_error_ = s;
    return s;
  }
  unsynced_ = false;
  return Status::Ok();
}

Status ReportWriter::Add(const ReportEntry& e) {
  ++entries_;
  if (!entries_fd_.valid()) return Status::Ok();
  if (!write_error_.ok()) return write_error_;  // nothing is written after it: not held in memory either
  if (entries_ > 1) buf_ += ",\n";
  core::JsonWriter j(&buf_);
  j.BeginObject();
  j.Field("outcome", OutcomeName(e.outcome));
  j.Field("reason", e.reason);
  if (!e.pos.file.empty()) {
    j.Field("file", e.pos.file);
    j.Field("offset", e.pos.offset);
    j.Field("line", e.pos.line);
  }
  if (!e.input.empty()) {
    j.Field("input", e.input);
    if (e.pos.line > 0) j.Field("line", e.pos.line);
  }
  if (!e.msgid.empty()) j.Field("msgid", e.msgid);
  if (!e.msgtype.empty()) j.Field("msgtype", e.msgtype);
  if (!e.item_key.empty()) j.Field("item_key", e.item_key);
  if (e.size > 0) j.Field("size", e.size);
  if (!e.participants.empty()) {
    j.Key("participants").BeginArray();
    for (const auto& p : e.participants) j.String(p);
    j.EndArray();
  }
  j.EndObject();
  if (buf_.size() > (1u << 16)) return Flush();
  return Status::Ok();
}

Status ReportWriter::Finish(const std::string& summary_json) {
  Status s = FinishLocked(summary_json);
  // The run's report is done with, whatever became of it: nothing touches
  // the side file after the lock goes (another run may have it then).
  entries_fd_.Reset();
  buf_.clear();
  Unlock();
  return s;
}

Status ReportWriter::FinishLocked(const std::string& summary_json) {
  if (path_.empty()) return Status::Ok();
  if (!lock_fd_.valid()) return Status::InvalidArgument(fmt::format("report {}: finished already", path_));
  if (!write_error_.ok()) {
    // The side file may end in a torn entry: no report from it. It stays
    // for the next run, which carries its complete entries over.
    return write_error_;
  }
  const std::string tmp = path_ + ".tmp";
  Status s = WriteWhole(summary_json, tmp);
  // The report is whole or absent; absent, its entries stay in the side
  // file for the next run to carry over.
  if (!s.ok()) {
    (void)env_->Remove(tmp);
    if (entries_ == 0) (void)env_->Remove(entries_path_);
    return s;
  }
  // The report's name is made durable before the side file goes: a power
  // cut between them must not leave neither.
  s = SyncDirIfPossible(env_, DirOf(path_));
  if (!s.ok()) {
    // Not known to be durable: the report goes (it names this run, and
    // would make the next run drop the side file), and the entries stay in
    // the side file for the next run to carry over, as said.
    (void)env_->Remove(path_);
    return s.WithContext("sync the report's directory (the entries stay in the side file)");
  }
  // Its removal durable too (best effort): else a power cut could bring the
  // side file back, and the next report would repeat its entries.
  if (env_->Remove(entries_path_).ok()) (void)SyncDirIfPossible(env_, DirOf(path_));
  return s;
}

Status ReportWriter::WriteWhole(const std::string& summary_json, const std::string& tmp) {
  WXA_RETURN_IF_ERROR(Flush());
  // (The report path stays locked until Finish has removed the side file.)
  core::Env* env = env_;
  WXA_ASSIGN_OR_RETURN(core::UniqueFd out, CreateFresh(env, tmp));
  std::string head = ReportStart(run_id_) + summary_json + (summary_json.empty() ? "" : ",\n");
  if (carried_ > 0) head += fmt::format("\"entries_from_interrupted_run\":{},\n", carried_);
  head += "\"entries\":[\n";
  WXA_RETURN_IF_ERROR(env->WriteAll(out.get(), head, tmp));
  {
    core::UniqueFd in(::open(entries_path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in.valid()) return Status::FromErrno("open", entries_path_, errno);
    // Past the run's line: the entries follow it.
    if (::lseek(in.get(), static_cast<off_t>(kRunLineLen), SEEK_SET) < 0) {
      return Status::FromErrno("lseek", entries_path_, errno);
    }
    WXA_RETURN_IF_ERROR(ForEachChunk(in.get(), entries_path_, [&](std::string_view chunk) {
      return env->WriteAll(out.get(), chunk, tmp);
    }));
  }
  WXA_RETURN_IF_ERROR(env->WriteAll(out.get(), "\n]}\n", tmp));
  WXA_RETURN_IF_ERROR(env->Sync(out.get(), tmp));
  out.Reset();
  return env->Rename(tmp, path_);
}

}  // namespace wxa::pipeline
