#include "engine/pipeline/import.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/global_control.h>
#include <tbb/parallel_pipeline.h>

#include "engine/mapping/mapper.h"
#include "engine/sinks/local_sinks.h"
#include "formats/core/json_writer.h"
#include "formats/core/text.h"
#include "formats/mime/renderer.h"
#include "formats/wecom/directory.h"
#include "formats/wecom/media_store.h"
#include "formats/wecom/parser.h"
#include "formats/wecom/record_reader.h"

namespace wxa::pipeline {

namespace {

using Clock = std::chrono::steady_clock;

// What the parallel stage learned about one record; folded into the counts
// by the serial stage, in source order.
struct RecordResult {
  enum class Kind : uint8_t { kSkipped, kItem, kSwitch, kMalformed } kind = Kind::kSkipped;
  bool imported = false;          // at least one new delivery
  bool all_present = false;       // every delivery existed already
  uint64_t deliveries_new = 0;
  uint64_t deliveries_present = 0;
  uint64_t bytes_written = 0;
  std::vector<std::string> new_mailboxes;
  std::vector<std::pair<std::string, std::string>> unmapped;  // participant id, why
  std::vector<ReportEntry> entries;
};

struct Batch {
  std::vector<wecom::RawRecord> records;
  std::vector<RecordResult> results;
};

// Per-thread heavy contexts (STYLE rule 5).
struct Worker {
  explicit Worker(const wecom::ParseOptions& o) : parser(o) {}
  wecom::RecordParser parser;
  mime::Renderer renderer;
};

class ImportRun {
 public:
  ImportRun(const ImportOptions& o, const wecom::Directory& dir, const mapping::Mapper& mapper,
            wecom::MediaStore& media, sinks::LocalSink& sink, const std::vector<std::string>& files)
      : o_(o), dir_(dir), mapper_(mapper), media_(media), sink_(sink), files_(files) {}

  void ProcessBatch(Worker& w, Batch& b) {
    b.results.resize(b.records.size());
    std::set<std::string> touched;
    for (size_t i = 0; i < b.records.size(); ++i) {
      if (failed_.load(std::memory_order_relaxed)) return;
      ProcessRecord(w, b.records[i], b.results[i], touched);
    }
    // One directory fsync per mailbox per batch makes all its renames durable
    // before the serial stage counts them (group commit for local sinks).
    for (const auto& mb : touched) {
      Status s = sink_.Sync(mb);
      if (!s.ok()) {
        Fail(s);
        // Nothing of this batch may count as delivered.
        for (auto& r : b.results) r = RecordResult{};
        return;
      }
    }
  }

  bool failed() const { return failed_.load(); }
  Status fatal() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fatal_;
  }

 private:
  void Fail(const Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fatal_.ok()) fatal_ = s;
    failed_ = true;
  }

  static ReportEntry EntryFor(const core::Item& item, Outcome o, std::string reason) {
    ReportEntry e;
    e.outcome = o;
    e.reason = std::move(reason);
    e.pos = item.pos;
    e.msgid = item.msgid;
    e.msgtype = item.msgtype;
    e.item_key = item.key.Hex();
    return e;
  }

  void ProcessRecord(Worker& w, const wecom::RawRecord& rec, RecordResult& out,
                     std::set<std::string>& touched) {
    auto parsed = w.parser.Parse(rec, files_[rec.file_index]);
    if (!parsed.ok()) {
      out.kind = RecordResult::Kind::kMalformed;
      ReportEntry e;
      e.outcome = Outcome::kMalformed;
      e.reason = parsed.status().message();
      e.pos = {files_[rec.file_index], rec.offset, rec.line};
      out.entries.push_back(std::move(e));
      return;
    }
    if (parsed->kind == wecom::Parsed::Kind::kSwitch) {
      out.kind = RecordResult::Kind::kSwitch;
      const auto& sw = parsed->sw;
      ReportEntry e;
      e.outcome = Outcome::kSwitch;
      e.reason = fmt::format("user '{}' switched enterprise at {} (not a message)", sw.user,
                             core::FormatUtcMillis(sw.time_ms));
      e.pos = {files_[rec.file_index], rec.offset, rec.line};
      e.msgid = sw.msgid;
      out.entries.push_back(std::move(e));
      return;
    }
    out.kind = RecordResult::Kind::kItem;
    core::Item& item = parsed->item;

    // Map: one delivery per distinct mailbox of the participants.
    std::vector<std::string> mailboxes;
    std::vector<std::string> why;
    for (const auto& id : item.Participants()) {
      mapping::Resolution r = mapper_.Resolve(id);
      if (r.mapped()) {
        if (std::find(mailboxes.begin(), mailboxes.end(), r.mailbox) == mailboxes.end()) {
          mailboxes.push_back(r.mailbox);
        }
      } else {
        why.push_back(fmt::format("{}: {}", id, r.why_not));
        out.unmapped.emplace_back(id, r.why_not);
      }
    }
    if (mailboxes.empty()) {
      ReportEntry e = EntryFor(item, Outcome::kUnmapped,
                               why.empty() ? "the record names no participant"
                                           : fmt::format("no participant maps to a mailbox ({})",
                                                         fmt::join(why, "; ")));
      e.participants = item.Participants();
      out.entries.push_back(std::move(e));
      return;
    }

    // Skip what is already delivered, before any rendering I/O.
    std::vector<std::string> todo;
    for (const auto& mb : mailboxes) {
      auto exists = sink_.Exists(mb, item.key, item.msgtime_ms);
      if (!exists.ok()) {
        Fail(exists.status());
        return;
      }
      if (*exists) {
        ++out.deliveries_present;
      } else {
        todo.push_back(mb);
      }
    }
    if (todo.empty()) {
      out.all_present = true;
      return;
    }

    for (auto& m : item.media) media_.Resolve(m);
    mime::RenderInput in = mapper_.RenderInputFor(item);

    // Size first when the attachments alone are over the limit: measured
    // exactly, never held in memory.
    const uint64_t limit = o_.limit.max_bytes;
    if (mime::RenderedSizeLowerBound(item) > limit) {
      auto size = w.renderer.MeasureSize(in);
      if (!size.ok()) {
        out.entries.push_back(EntryFor(item, Outcome::kFailed, size.status().ToString()));
        return;
      }
      ReportEntry e = EntryFor(item, Outcome::kOversize, limits::OversizeReason(o_.limit, *size));
      e.size = *size;
      out.entries.push_back(std::move(e));
      return;
    }
    auto bytes = w.renderer.Render(in);
    if (!bytes.ok()) {
      out.entries.push_back(EntryFor(item, Outcome::kFailed, bytes.status().ToString()));
      return;
    }
    if (bytes->size() > limit) {
      ReportEntry e = EntryFor(item, Outcome::kOversize, limits::OversizeReason(o_.limit, bytes->size()));
      e.size = bytes->size();
      out.entries.push_back(std::move(e));
      return;
    }

    for (const auto& mb : todo) {
      Status s = sink_.Deliver(mb, item.key, item.msgtime_ms, *bytes);
      if (!s.ok()) {
        // Disk full, I/O error, permissions: the sink cannot go on. Stop the
        // run; what was not synced is not counted, and a rerun redoes it.
        Fail(s.WithContext(fmt::format("writing to mailbox {}", mb)));
        out = RecordResult{};
        return;
      }
      touched.insert(mb);
    }
    out.imported = true;
    out.deliveries_new = todo.size();
    out.bytes_written = bytes->size() * todo.size();
    out.new_mailboxes = std::move(todo);

    // Imported, with warnings where something was not right.
    for (const auto& m : item.media) {
      if (m.state == core::MediaState::kMissing) {
        out.entries.push_back(EntryFor(item, Outcome::kMissingMedia,
                                       fmt::format("{} '{}': {}", m.role, m.filename, m.problem)));
      } else if (m.state == core::MediaState::kCorrupt) {
        out.entries.push_back(EntryFor(item, Outcome::kCorruptMedia,
                                       fmt::format("{} '{}': {}", m.role, m.filename, m.problem)));
      }
    }
    if (item.kind == core::ItemKind::kUnknown) {
      out.entries.push_back(EntryFor(
          item, Outcome::kUnknownType,
          fmt::format("unknown msgtype '{}': imported generically with the record attached",
                      item.msgtype)));
    } else if (!item.notes.empty()) {
      out.entries.push_back(EntryFor(item, Outcome::kRepaired, fmt::format("{}", fmt::join(item.notes, "; "))));
    }
  }

  const ImportOptions& o_;
  const wecom::Directory& dir_;
  const mapping::Mapper& mapper_;
  wecom::MediaStore& media_;
  sinks::LocalSink& sink_;
  const std::vector<std::string>& files_;
  mutable std::mutex mu_;
  Status fatal_;  // GUARDED_BY(mu_)
  std::atomic<bool> failed_{false};
};

void AddCounts(Counts& c, Outcome o) {
  switch (o) {
    case Outcome::kUnmapped: ++c.unmapped; break;
    case Outcome::kOversize: ++c.oversize; break;
    case Outcome::kMalformed: ++c.malformed; break;
    case Outcome::kFailed: ++c.failed; break;
    case Outcome::kSwitch: ++c.switches; break;
    case Outcome::kMissingMedia: ++c.missing_media; break;
    case Outcome::kCorruptMedia: ++c.corrupt_media; break;
    case Outcome::kRepaired: ++c.repaired; break;
    case Outcome::kUnknownType: ++c.unknown_type; break;
    case Outcome::kInputIssue: ++c.input_issues; break;
  }
}

std::string SummaryJson(const ImportOptions& o, const ImportSummary& s) {
  std::string out;
  core::JsonWriter j(&out);
  // Members only: the caller wraps them in the report object.
  j.BeginObject();
  j.Field("tool", "wxarchiver");
  j.Field("command", "import");
  j.Field("source", o.source_dir);
  j.Field("target", o.target);
  j.Field("folder", o.folder);
  j.Field("max_item_size", static_cast<uint64_t>(o.limit.max_bytes));
  j.Field("oversize_policy", limits::PolicyName(o.limit.policy));
  j.Field("complete", !s.interrupted && s.fatal.ok());
  j.Field("interrupted", s.interrupted);
  if (!s.fatal.ok()) j.Field("fatal_error", s.fatal.ToString());
  j.Field("elapsed_s", s.elapsed_s);
  j.Field("threads", static_cast<uint64_t>(s.threads));
  const Counts& c = s.counts;
  j.Key("counts").BeginObject();
  j.Field("records", c.records).Field("items", c.items).Field("imported", c.imported);
  j.Field("already_present", c.already_present).Field("deliveries", c.deliveries);
  j.Field("deliveries_present", c.deliveries_present).Field("bytes_written", c.bytes_written);
  j.Field("unmapped", c.unmapped).Field("oversize", c.oversize).Field("malformed", c.malformed);
  j.Field("failed", c.failed).Field("switch", c.switches).Field("missing_media", c.missing_media);
  j.Field("corrupt_media", c.corrupt_media).Field("repaired", c.repaired);
  j.Field("unknown_type", c.unknown_type).Field("input_issues", c.input_issues);
  j.Field("source_bytes", c.source_bytes);
  j.EndObject();
  j.Key("deliveries_by_mailbox").BeginObject();
  for (const auto& [mb, n] : s.deliveries_by_mailbox) j.Field(mb, n);
  j.EndObject();
  j.Key("unmapped_participants").BeginObject();
  for (const auto& [id, v] : s.unmapped_participants) {
    j.Key(id).BeginObject().Field("items", v.first).Field("reason", v.second).EndObject();
  }
  j.EndObject();
  j.EndObject();
  // Strip the braces: ReportWriter::Finish adds "entries" inside the same object.
  return out.substr(1, out.size() - 2);
}

}  // namespace

Result<ImportSummary> RunImport(const ImportOptions& o) {
  const auto started = Clock::now();
  core::Env* env = o.env != nullptr ? o.env : core::Env::Default();
  if (o.source_dir.empty()) return Status::InvalidArgument("no source directory given (--source)");
  if (!core::IsDirectory(o.source_dir)) {
    return Status::InvalidArgument(fmt::format("source directory {} does not exist", o.source_dir));
  }
  WXA_ASSIGN_OR_RETURN(wecom::RecordReader reader, wecom::RecordReader::Open(o.source_dir));
  if (o.directory_csv.empty()) return Status::InvalidArgument("no user directory given (--directory)");
  WXA_ASSIGN_OR_RETURN(wecom::Directory directory, wecom::Directory::Load(o.directory_csv));
  WXA_ASSIGN_OR_RETURN(mapping::Mapper mapper,
                       mapping::Mapper::Create(&directory, o.mapping_csv, o.mailboxes_file,
                                               {o.default_region}));
  WXA_ASSIGN_OR_RETURN(wecom::MediaStore media,
                       wecom::MediaStore::Open(core::JoinPath(o.source_dir, "media")));
  WXA_ASSIGN_OR_RETURN(std::unique_ptr<sinks::LocalSink> sink,
                       sinks::MakeLocalSink(o.target, o.folder, env));
  WXA_ASSIGN_OR_RETURN(ReportWriter report, ReportWriter::Open(o.report_path));
  mime::InitGMime();

  ImportSummary summary;
  summary.source_files = reader.files().size();
  summary.report_path = o.report_path;
  Counts& counts = summary.counts;

  // Input CSV rows that were not used are part of the report too.
  auto add_issues = [&](const std::vector<wecom::CsvIssue>& issues, const std::string& input) -> Status {
    for (const auto& i : issues) {
      ReportEntry e;
      e.outcome = Outcome::kInputIssue;
      e.reason = i.reason;
      e.input = input;
      e.pos.line = i.line;
      AddCounts(counts, e.outcome);
      WXA_RETURN_IF_ERROR(report.Add(e));
    }
    return Status::Ok();
  };
  WXA_RETURN_IF_ERROR(add_issues(directory.issues(), o.directory_csv));
  WXA_RETURN_IF_ERROR(add_issues(mapper.issues(), !o.mapping_csv.empty() ? o.mapping_csv : o.mailboxes_file));
  WXA_RETURN_IF_ERROR(add_issues(media.issues(), core::JoinPath(o.source_dir, "media/index.csv")));
  if (reader.files().empty()) {
    WXA_RETURN_IF_ERROR(add_issues(
        {{0, "the source directory holds no *.jsonl files: nothing to import"}}, o.source_dir));
  }

  size_t threads = o.threads != 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  summary.threads = threads;
  tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
  const size_t tokens = o.max_batches_in_flight != 0 ? o.max_batches_in_flight : 2 * threads + 2;

  ImportRun run(o, directory, mapper, media, *sink, reader.files());
  wecom::ParseOptions popts;
  popts.corp = o.corp;
  tbb::enumerable_thread_specific<std::unique_ptr<Worker>> workers(
      [&popts] { return std::make_unique<Worker>(popts); });
  Status read_error;
  auto last_progress = Clock::now();
  std::set<std::string> mailboxes_touched;

  try {
    tbb::parallel_pipeline(
        tokens,
        tbb::make_filter<void, Batch*>(
            tbb::filter_mode::serial_in_order,
            [&](tbb::flow_control& fc) -> Batch* {
              if (run.failed() || (o.stop != nullptr && o.stop->load())) {
                fc.stop();
                return nullptr;
              }
              auto b = std::make_unique<Batch>();
              auto more = reader.NextBatch(o.batch_records, o.batch_bytes, &b->records);
              if (!more.ok()) {
                read_error = more.status();
                fc.stop();
                return nullptr;
              }
              if (!*more) {
                fc.stop();
                return nullptr;
              }
              return b.release();
            }) &
            tbb::make_filter<Batch*, Batch*>(tbb::filter_mode::parallel,
                                             [&](Batch* b) -> Batch* {
                                               run.ProcessBatch(*workers.local(), *b);
                                               return b;
                                             }) &
            tbb::make_filter<Batch*, void>(
                tbb::filter_mode::serial_in_order, [&](Batch* raw) {
                  std::unique_ptr<Batch> b(raw);
                  for (size_t i = 0; i < b->results.size(); ++i) {
                    const RecordResult& r = b->results[i];
                    if (r.kind == RecordResult::Kind::kSkipped) continue;  // run failed first
                    ++counts.records;
                    if (r.kind == RecordResult::Kind::kItem) ++counts.items;
                    if (r.imported) ++counts.imported;
                    if (r.all_present) ++counts.already_present;
                    counts.deliveries += r.deliveries_new;
                    counts.deliveries_present += r.deliveries_present;
                    counts.bytes_written += r.bytes_written;
                    for (const auto& mb : r.new_mailboxes) {
                      ++summary.deliveries_by_mailbox[mb];
                      mailboxes_touched.insert(mb);
                    }
                    for (const auto& [id, why] : r.unmapped) {
                      auto& u = summary.unmapped_participants[id];
                      ++u.first;
                      if (u.second.empty()) u.second = why;
                    }
                    for (const auto& e : r.entries) {
                      AddCounts(counts, e.outcome);
                      Status s = report.Add(e);
                      if (!s.ok() && read_error.ok()) read_error = s;
                    }
                  }
                  counts.source_bytes = reader.bytes_read();
                  if (o.on_progress) {
                    auto now = Clock::now();
                    if (now - last_progress >= std::chrono::milliseconds(o.progress_interval_ms)) {
                      last_progress = now;
                      o.on_progress(counts, std::chrono::duration<double>(now - started).count());
                    }
                  }
                }));
  } catch (const std::exception& e) {
    // TBB and the standard library may throw; nothing escapes this stage edge.
    read_error = Status::Aborted(fmt::format("pipeline stopped: {}", e.what()));
  }

  summary.fatal = !run.fatal().ok() ? run.fatal() : read_error;
  summary.interrupted = o.stop != nullptr && o.stop->load();
  summary.mailboxes_touched = mailboxes_touched.size();
  counts.source_bytes = reader.bytes_read();
  summary.elapsed_s = std::chrono::duration<double>(Clock::now() - started).count();
  Status fin = report.Finish(SummaryJson(o, summary));
  if (!fin.ok() && summary.fatal.ok()) summary.fatal = fin.WithContext("writing the report");
  return summary;
}

}  // namespace wxa::pipeline
