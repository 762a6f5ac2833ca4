#include "engine/pipeline/report.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

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
  }
  return "?";
}

bool IsNotImported(Outcome o) {
  return o == Outcome::kUnmapped || o == Outcome::kOversize || o == Outcome::kMalformed ||
         o == Outcome::kFailed || o == Outcome::kConflict;
}

// A fresh file at `path` (a stale one from a stopped run is replaced).
static Result<core::UniqueFd> CreateFresh(core::Env* env, const std::string& path) {
  Status rm = env->Remove(path);
  if (!rm.ok() && !rm.IsNotFound()) return rm.WithContext("create report");
  auto fd = env->CreateExclusive(path);
  if (!fd.ok()) return fd.status().WithContext("create report");
  return std::move(*fd);
}

Result<ReportWriter> ReportWriter::Open(const std::string& path, core::Env* env) {
  ReportWriter w;
  w.env_ = env != nullptr ? env : core::Env::Default();
  if (path.empty()) return w;
  w.path_ = path;
  w.entries_path_ = path + ".entries.tmp";
  WXA_ASSIGN_OR_RETURN(w.entries_fd_, CreateFresh(w.env_, w.entries_path_));
  return w;
}

ReportWriter::~ReportWriter() {
  if (entries_fd_.valid()) {
    entries_fd_.Reset();
    (void)env_->Remove(entries_path_);
  }
}

Status ReportWriter::Flush() {
  if (!entries_fd_.valid() || buf_.empty()) return Status::Ok();
  Status s = env_->WriteAll(entries_fd_.get(), buf_, entries_path_);
  buf_.clear();
  return s;
}

Status ReportWriter::Add(const ReportEntry& e) {
  ++entries_;
  if (!entries_fd_.valid()) return Status::Ok();
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
  if (path_.empty()) return Status::Ok();
  const std::string tmp = path_ + ".tmp";
  Status s = WriteWhole(summary_json, tmp);
  // Whatever happened, no temp file stays: the report is whole or absent.
  if (!s.ok()) (void)env_->Remove(tmp);
  (void)env_->Remove(entries_path_);
  return s;
}

Status ReportWriter::WriteWhole(const std::string& summary_json, const std::string& tmp) {
  WXA_RETURN_IF_ERROR(Flush());
  entries_fd_.Reset();
  core::Env* env = env_;
  WXA_ASSIGN_OR_RETURN(core::UniqueFd out, CreateFresh(env, tmp));
  std::string head = "{" + summary_json + (summary_json.empty() ? "" : ",\n") + "\"entries\":[\n";
  WXA_RETURN_IF_ERROR(env->WriteAll(out.get(), head, tmp));
  {
    core::UniqueFd in(::open(entries_path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in.valid()) return Status::FromErrno("open", entries_path_, errno);
    char buf[1 << 16];
    while (true) {
      ssize_t n = ::read(in.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno("read", entries_path_, errno);
      if (n == 0) break;
      WXA_RETURN_IF_ERROR(env->WriteAll(out.get(), std::string_view(buf, static_cast<size_t>(n)), tmp));
    }
  }
  WXA_RETURN_IF_ERROR(env->WriteAll(out.get(), "\n]}\n", tmp));
  WXA_RETURN_IF_ERROR(env->Sync(out.get(), tmp));
  out.Reset();
  return env->Rename(tmp, path_);
}

}  // namespace wxa::pipeline
