#include "engine/pipeline/import.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <chrono>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/global_control.h>
#include <tbb/parallel_pipeline.h>

#include "engine/index/index.h"
#include "engine/mapping/mapper.h"
#include "engine/sinks/local_sinks.h"
#include "formats/core/hash.h"
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

// One record's way through the stages. The parallel stages fill it; the
// serial stages read it in source order.
struct RecordWork {
  enum class Kind : uint8_t { kSkipped, kItem, kSwitch, kMalformed } kind = Kind::kSkipped;
  std::optional<core::Item> item;              // kept while deliveries are pending
  std::vector<std::string> needed;             // mailboxes without a done delivery (plan)
  std::vector<std::string> claimed;            // mailboxes this run must deliver (claim)
  std::vector<std::string> staged;             // written to temp files, published per batch
  std::vector<std::string> delivered;          // published, or found on disk (deliver)
  std::vector<std::string> released;           // claimed but not delivered (oversize, failure)
  std::optional<index::ItemRecord> item_record;  // what the index learns about the item
  bool settled = false;                        // nothing left to do for this record
  bool imported = false;
  uint64_t deliveries_new = 0;
  uint64_t deliveries_present = 0;
  uint64_t bytes_written = 0;
  bool rendered = false;                       // the renderer ran (or measured) for it
  std::vector<std::pair<std::string, std::string>> unmapped;  // participant id, why
  std::vector<ReportEntry> entries;
};

struct Batch {
  std::vector<wecom::RawRecord> records;
  std::vector<RecordWork> work;
  std::vector<wecom::FileIssue> file_issues;  // source files skipped while reading this batch
};

// Per-thread heavy contexts (STYLE rule 5).
struct Worker {
  explicit Worker(const wecom::ParseOptions& o) : parser(o) {}
  wecom::RecordParser parser;
  mime::Renderer renderer;
};

ReportEntry EntryFor(const core::Item& item, Outcome o, std::string reason) {
  ReportEntry e;
  e.outcome = o;
  e.reason = std::move(reason);
  e.pos = item.pos;
  e.msgid = item.msgid;
  e.msgtype = item.msgtype;
  e.item_key = item.key.Hex();
  return e;
}

class ImportRun {
 public:
  ImportRun(const ImportOptions& o, const mapping::Mapper& mapper, wecom::MediaStore& media,
            sinks::LocalSink& sink, index::Index& idx, uint16_t sink_id,
            const std::vector<std::string>& files, const std::vector<uint32_t>& file_ids)
      : o_(o), mapper_(mapper), media_(media), sink_(sink), idx_(idx), sink_id_(sink_id),
        files_(files), file_ids_(file_ids) {}

  bool failed() const { return failed_.load(); }
  Status fatal() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fatal_;
  }
  void Fail(const Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fatal_.ok()) fatal_ = s;
    failed_ = true;
  }

  // Stage 2 (parallel): parse, map, and ask the index what is left to do.
  // Nothing is rendered here: a record whose deliveries are all done costs a
  // parse, a few hash lookups and an LMDB read.
  void Plan(Worker& w, Batch& b) {
    b.work.resize(b.records.size());
    std::vector<index::DeliveryKey> keys;
    std::vector<std::pair<size_t, size_t>> owner;  // (record, index in its mailboxes)
    std::vector<std::vector<std::string>> mailboxes(b.records.size());
    for (size_t i = 0; i < b.records.size(); ++i) {
      if (failed()) return;
      PlanRecord(w, b.records[i], b.work[i], &mailboxes[i]);
      for (size_t m = 0; m < mailboxes[i].size(); ++m) {
        keys.push_back({sink_id_, mailboxes[i][m], b.work[i].item->key, 0});
        owner.emplace_back(i, m);
      }
    }
    std::vector<std::optional<index::DeliveryState>> states;
    Status s = idx_.GetDeliveries(keys, &states);
    if (!s.ok()) {
      Fail(s.WithContext("reading the index"));
      return;
    }
    for (size_t k = 0; k < keys.size(); ++k) {
      RecordWork& rw = b.work[owner[k].first];
      if (states[k] == index::DeliveryState::kDone) {
        ++rw.deliveries_present;
      } else {
        rw.needed.push_back(keys[k].mailbox);
      }
    }
    // Every delivery done before: skipped without rendering. The item itself
    // is recorded done if a stopped run could not say so (its deliveries were
    // settled from in-doubt intents).
    std::vector<core::ItemKey> done_items;
    std::vector<RecordWork*> done_work;
    for (auto& rw : b.work) {
      if (rw.kind == RecordWork::Kind::kItem && rw.item && !rw.item_record && rw.needed.empty()) {
        rw.settled = true;
        done_items.push_back(rw.item->key);
        done_work.push_back(&rw);
      }
    }
    std::vector<std::optional<index::ItemState>> item_states;
    s = idx_.GetItemStates(done_items, &item_states);
    if (!s.ok()) {
      Fail(s.WithContext("reading the index"));
      return;
    }
    for (size_t i = 0; i < done_work.size(); ++i) {
      RecordWork& rw = *done_work[i];
      if (item_states[i] == index::ItemState::kDone) {
        rw.item.reset();
      } else {
        rw.item_record = RecordFor(*rw.item, index::ItemState::kDone, "");
      }
    }
  }

  // Stage 3 (serial): claim the needed deliveries durably before writing any.
  void Claim(Batch& b) {
    if (failed()) return;
    index::WriteBatch wb;
    std::vector<std::pair<RecordWork*, const std::string*>> owner;  // parallel to wb.claims
    for (auto& rw : b.work) {
      for (const auto& mb : rw.needed) {
        wb.claims.push_back({sink_id_, mb, rw.item->key, rw.item->msgtime_ms});
        owner.emplace_back(&rw, &mb);
      }
    }
    if (wb.claims.empty()) return;
    auto r = idx_.Write(std::move(wb));
    if (!r.ok()) {
      Fail(r.status().WithContext("recording intents in the index"));
      return;
    }
    for (size_t k = 0; k < owner.size(); ++k) {
      RecordWork& rw = *owner[k].first;
      switch (r->claims[k]) {
        case index::ClaimResult::kClaimed: rw.claimed.push_back(*owner[k].second); break;
        // Done or in flight: another record with the same msgid got there
        // first (overlapping exports). One delivery per mailbox, whatever.
        case index::ClaimResult::kDone:
        case index::ClaimResult::kInFlight: ++rw.deliveries_present; break;
      }
    }
    for (auto& rw : b.work) {
      if (rw.kind == RecordWork::Kind::kItem && rw.item && !rw.item_record && rw.claimed.empty()) {
        // Another record with the same msgid delivers it (or did): it records the item.
        rw.settled = true;
        rw.item.reset();
      }
    }
  }

  // Stage 4 (parallel): render once, stage each claimed delivery, then
  // publish the batch (one durable file-system commit for all of it).
  void Deliver(Worker& w, Batch& b) {
    std::vector<sinks::StagedDelivery> staged;
    for (auto& rw : b.work) {
      if (rw.claimed.empty()) continue;
      if (failed()) {
        rw.released = std::move(rw.claimed);  // never written: give the claim back
        rw.claimed.clear();
        continue;
      }
      DeliverRecord(w, rw, &staged);
    }
    Status s = failed() ? Status::Aborted("run failed") : sink_.Publish(&staged);
    if (!s.ok()) {
      if (!failed()) Fail(s.WithContext("publishing deliveries"));
      sink_.Discard(&staged);
      // Nothing staged in this batch counts as delivered.
      for (auto& rw : b.work) {
        if (rw.staged.empty()) continue;
        rw.released.insert(rw.released.end(), rw.staged.begin(), rw.staged.end());
        rw.staged.clear();
        rw.item_record.reset();
        rw.entries.clear();
        rw.imported = false;
        rw.deliveries_new = 0;
        rw.bytes_written = 0;
        rw.settled = false;
      }
      return;
    }
    for (auto& rw : b.work) {
      rw.delivered.insert(rw.delivered.end(), rw.staged.begin(), rw.staged.end());
      rw.staged.clear();
    }
  }

  // Stage 5 (serial, in order) builds the index write for a batch: done
  // marks, released intents, item states and the cursor, in one transaction.
  // The cursor moves only past records that are fully settled.
  index::WriteBatch Commit(Batch& b, bool* cursor_ok) {
    index::WriteBatch wb;
    for (auto& rw : b.work) {
      if (!rw.item) continue;
      const core::Item& item = *rw.item;
      for (const auto& mb : rw.delivered) wb.done.push_back({sink_id_, mb, item.key, item.msgtime_ms});
      for (const auto& mb : rw.released) wb.released.push_back({sink_id_, mb, item.key, item.msgtime_ms});
      if (rw.item_record) wb.items.emplace_back(item.key, *rw.item_record);
    }
    // Cursor: the end of the last record of each file, if every record of
    // the batch is settled (a failed run leaves it where it was).
    bool all_settled = !failed();
    for (const auto& rw : b.work) all_settled = all_settled && rw.settled;
    *cursor_ok = all_settled;
    if (all_settled) {
      std::map<uint32_t, const wecom::RawRecord*> last;
      for (const auto& rec : b.records) last[rec.file_index] = &rec;
      for (const auto& [fi, rec] : last) {
        index::Cursor c = cursor_template_[fi];
        c.offset = rec->next_offset;
        c.line = rec->line;
        if (rec->unterminated) {
          // A last line without its newline may be an export still being
          // written: read it again next time rather than lose its rest.
          c.offset = rec->offset;
          c.line = rec->line - 1;
        }
        wb.cursors.emplace_back(CursorKey(sink_id_, files_[fi]), c);
      }
    }
    return wb;
  }

  void SetCursorTemplates(std::vector<index::Cursor> t) { cursor_template_ = std::move(t); }
  static std::string CursorKey(uint16_t sink, const std::string& file) {
    return fmt::format("{}/{}", sink, file);
  }

 private:
  index::ItemRecord RecordFor(const core::Item& item, index::ItemState st, std::string reason) const {
    index::ItemRecord r;
    r.state = st;
    r.msgtime_ms = item.msgtime_ms;
    r.file_id = file_ids_.at(FileIndexOf(item.pos.file));
    r.offset = item.pos.offset;
    r.line = item.pos.line;
    r.reason = std::move(reason);
    return r;
  }
  size_t FileIndexOf(const std::string& file) const {
    return static_cast<size_t>(std::find(files_.begin(), files_.end(), file) - files_.begin());
  }

  void PlanRecord(Worker& w, const wecom::RawRecord& rec, RecordWork& out,
                  std::vector<std::string>* mailboxes) {
    auto parsed = w.parser.Parse(rec, files_[rec.file_index]);
    if (!parsed.ok()) {
      out.kind = RecordWork::Kind::kMalformed;
      out.settled = true;
      ReportEntry e;
      e.outcome = Outcome::kMalformed;
      e.reason = parsed.status().message();
      e.pos = {files_[rec.file_index], rec.offset, rec.line};
      out.entries.push_back(std::move(e));
      return;
    }
    if (parsed->kind == wecom::Parsed::Kind::kSwitch) {
      out.kind = RecordWork::Kind::kSwitch;
      out.settled = true;
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
    out.kind = RecordWork::Kind::kItem;
    out.item = std::move(parsed->item);
    const core::Item& item = *out.item;
    std::vector<std::string> why;
    for (const auto& id : item.Participants()) {
      mapping::Resolution r = mapper_.Resolve(id);
      if (r.mapped()) {
        if (std::find(mailboxes->begin(), mailboxes->end(), r.mailbox) == mailboxes->end()) {
          mailboxes->push_back(r.mailbox);
        }
      } else {
        why.push_back(fmt::format("{}: {}", id, r.why_not));
        out.unmapped.emplace_back(id, r.why_not);
      }
    }
    if (mailboxes->empty()) {
      std::string reason = why.empty() ? "the record names no participant"
                                       : fmt::format("no participant maps to a mailbox ({})",
                                                     fmt::join(why, "; "));
      ReportEntry e = EntryFor(item, Outcome::kUnmapped, reason);
      e.participants = item.Participants();
      out.entries.push_back(std::move(e));
      out.item_record = RecordFor(item, index::ItemState::kUnmapped, reason);
      out.settled = true;
    }
  }

  void DeliverRecord(Worker& w, RecordWork& rw, std::vector<sinks::StagedDelivery>* staged) {
    core::Item& item = *rw.item;
    // What a crashed run wrote but could not mark done is adopted, not rewritten.
    std::vector<std::string> to_write;
    for (const auto& mb : rw.claimed) {
      auto exists = sink_.Exists(mb, item.key, item.msgtime_ms);
      if (!exists.ok()) {
        Fail(exists.status());
        rw.released = rw.claimed;
        return;
      }
      if (*exists) {
        rw.delivered.push_back(mb);
        ++rw.deliveries_present;
      } else {
        to_write.push_back(mb);
      }
    }
    if (to_write.empty()) {
      rw.item_record = RecordFor(item, index::ItemState::kDone, "");
      rw.settled = true;
      return;
    }

    for (auto& m : item.media) media_.Resolve(m);
    mime::RenderInput in = mapper_.RenderInputFor(item);
    const uint64_t limit = o_.limit.max_bytes;
    auto reject = [&](uint64_t size, bool estimated) {
      ReportEntry e = EntryFor(item, Outcome::kOversize, limits::OversizeReason(o_.limit, size, estimated));
      e.size = size;
      rw.entries.push_back(std::move(e));
      rw.item_record = RecordFor(item, index::ItemState::kRejected, rw.entries.back().reason);
      rw.item_record->size = size;
      rw.released = to_write;
      rw.settled = true;
      for (auto& m : item.media) std::string().swap(m.bytes);
    };
    // Over the limit by the media sizes alone: rejected before any byte of
    // them is read or hashed, so memory per record stays bounded by the limit.
    const uint64_t estimate = mime::RenderedSizeLowerBound(item);
    if (estimate > limit) {
      reject(estimate, true);
      return;
    }
    for (auto& m : item.media) {
      Status ls = media_.Load(m, limit);
      if (ls.code() == Status::Code::kTooLarge) {  // grew past the limit since it was found
        reject(std::max(mime::RenderedSizeLowerBound(item), limit + 1), true);
        return;
      }
    }
    rw.rendered = true;
    auto bytes = w.renderer.Render(in);
    // The media bytes are in the rendering now; a batch holds many records.
    for (auto& m : item.media) std::string().swap(m.bytes);
    if (!bytes.ok()) {
      rw.entries.push_back(EntryFor(item, Outcome::kFailed, bytes.status().ToString()));
      rw.item_record = RecordFor(item, index::ItemState::kFailed, bytes.status().ToString());
      rw.released = to_write;
      rw.settled = true;
      return;
    }
    if (bytes->size() > limit) {
      reject(bytes->size(), false);
      return;
    }
    for (size_t i = 0; i < to_write.size(); ++i) {
      const std::string& mb = to_write[i];
      Status s = sink_.Stage(mb, item.key, item.msgtime_ms, *bytes, staged);
      if (!s.ok()) {
        // Disk full, I/O error, permissions: the sink cannot go on. Stop; the
        // claims not written are given back (the batch's staged ones too), and
        // a rerun does them.
        Fail(s.WithContext(fmt::format("writing to mailbox {}", mb)));
        rw.released.insert(rw.released.end(), to_write.begin() + static_cast<long>(i), to_write.end());
        return;
      }
      rw.staged.push_back(mb);
    }
    rw.imported = true;
    rw.deliveries_new = to_write.size();
    rw.bytes_written = bytes->size() * to_write.size();
    index::ItemRecord rec = RecordFor(item, index::ItemState::kDone, "");
    rec.size = bytes->size();
    core::Sha256Digest h = core::Sha256(*bytes);
    rec.content_hash.assign(reinterpret_cast<const char*>(h.data()), 16);
    rw.item_record = std::move(rec);
    rw.settled = true;

    // Imported, with warnings where something was not right.
    for (const auto& m : item.media) {
      if (m.state == core::MediaState::kMissing) {
        rw.entries.push_back(EntryFor(item, Outcome::kMissingMedia,
                                      fmt::format("{} '{}': {}", m.role, m.filename, m.problem)));
      } else if (m.state == core::MediaState::kCorrupt) {
        rw.entries.push_back(EntryFor(item, Outcome::kCorruptMedia,
                                      fmt::format("{} '{}': {}", m.role, m.filename, m.problem)));
      }
    }
    if (item.kind == core::ItemKind::kUnknown) {
      rw.entries.push_back(EntryFor(
          item, Outcome::kUnknownType,
          fmt::format("unknown msgtype '{}': imported generically with the record attached",
                      item.msgtype)));
    } else if (!item.notes.empty()) {
      rw.entries.push_back(EntryFor(item, Outcome::kRepaired, fmt::format("{}", fmt::join(item.notes, "; "))));
    }
  }

  const ImportOptions& o_;
  const mapping::Mapper& mapper_;
  wecom::MediaStore& media_;
  sinks::LocalSink& sink_;
  index::Index& idx_;
  const uint16_t sink_id_;
  const std::vector<std::string>& files_;
  const std::vector<uint32_t>& file_ids_;
  std::vector<index::Cursor> cursor_template_;
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

// Memory figures from /proc/self/status (Linux), in bytes: the peak resident
// set and, at report time, how much of it is anonymous (heap, stacks) versus
// file-backed (mostly the LMDB map, which the kernel can drop at will).
struct ProcessMemory {
  uint64_t peak_rss = 0, rss_anon = 0, rss_file = 0;
};

ProcessMemory ReadProcessMemory() {
  ProcessMemory m;
  auto text = core::ReadWholeFile("/proc/self/status");
  if (!text.ok()) return m;
  std::string_view s = *text;
  auto field = [&](std::string_view name) -> uint64_t {
    size_t at = s.find(name);
    if (at == std::string_view::npos) return 0;
    at += name.size();
    while (at < s.size() && (s[at] == ' ' || s[at] == '\t')) ++at;
    uint64_t kb = 0;
    std::from_chars(s.data() + at, s.data() + s.size(), kb);
    return kb * 1024;
  };
  m.peak_rss = field("VmHWM:");
  m.rss_anon = field("RssAnon:");
  m.rss_file = field("RssFile:");
  return m;
}

std::string SummaryJson(const ImportOptions& o, const ImportSummary& s) {
  std::string out;
  core::JsonWriter j(&out);
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
  j.Field("corrupt_media", c.corrupt_media).Field("repaired", c.repaired).Field("rendered", c.rendered);
  j.Field("unknown_type", c.unknown_type).Field("input_issues", c.input_issues);
  j.Field("source_bytes", c.source_bytes);
  j.EndObject();
  const IndexSummary& x = s.index;
  j.Key("index").BeginObject();
  j.Field("dir", x.dir);
  j.Field("settled_done", x.settled_done).Field("settled_redo", x.settled_redo);
  j.Field("files_resumed", static_cast<uint64_t>(x.files_resumed));
  j.Field("files_complete", static_cast<uint64_t>(x.files_complete));
  j.Field("files_restarted", static_cast<uint64_t>(x.files_restarted));
  if (!x.rescan_reason.empty()) j.Field("rescan_reason", x.rescan_reason);
  j.Field("items_done", x.items_done).Field("items_unmapped", x.items_unmapped);
  j.Field("items_rejected", x.items_rejected).Field("deliveries_done", x.deliveries_done);
  j.Field("deliveries_in_doubt", x.deliveries_in_doubt).Field("commits", x.commits);
  j.EndObject();
  const ProcessMemory mem = ReadProcessMemory();
  j.Key("process").BeginObject();
  j.Field("peak_rss_bytes", mem.peak_rss).Field("rss_anon_bytes", mem.rss_anon);
  j.Field("rss_file_bytes", mem.rss_file);
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
  return out.substr(1, out.size() - 2);  // members only: Finish adds "entries"
}

// A fingerprint of everything the mapping depends on.
Result<std::string> MappingFingerprint(const ImportOptions& o) {
  core::Sha256Stream h;
  for (const std::string& path : {o.directory_csv, o.mapping_csv, o.mailboxes_file}) {
    h.Update(path.empty() ? std::string_view("-") : std::string_view("+"));
    if (!path.empty()) {
      WXA_ASSIGN_OR_RETURN(std::string bytes, core::ReadWholeFile(path));
      h.Update(core::ToHex(core::Sha256(bytes)));
    }
  }
  h.Update(o.default_region);
  return core::ToHex(h.Finish()).substr(0, 32);
}

std::string CanonicalTarget(const std::string& target) {
  size_t colon = target.find(':');
  std::string dir = target.substr(colon + 1);
  char buf[PATH_MAX];
  if (::realpath(dir.c_str(), buf) != nullptr) dir = buf;
  return target.substr(0, colon) + ":" + dir;
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
                       wecom::MediaStore::Open(o.source_dir));
  WXA_ASSIGN_OR_RETURN(std::unique_ptr<sinks::LocalSink> sink,
                       sinks::MakeLocalSink(o.target, o.folder, env, o.sync_mode));
  mime::InitGMime();

  // ---- the index: identity, sink, settling, cursors ----
  ImportSummary summary;
  IndexSummary& xs = summary.index;
  xs.dir = !o.index_dir.empty() ? o.index_dir : index::DefaultIndexDir(o.target);
  index::IndexOptions iopts;
  if (o.index_map_size != 0) iopts.initial_map_size = o.index_map_size;
  WXA_ASSIGN_OR_RETURN(std::unique_ptr<index::Index> idx, index::Index::Open(xs.dir, iopts));
  WXA_RETURN_IF_ERROR(idx->BindCorp(o.corp));
  WXA_ASSIGN_OR_RETURN(uint16_t sink_id, idx->SinkId(CanonicalTarget(o.target)));

  // Deliveries a crash left in doubt: the file is there (complete: it was
  // renamed into place) or it is not (delivered again when its record is read).
  {
    WXA_ASSIGN_OR_RETURN(auto pending, idx->PendingDeliveries());
    index::WriteBatch wb;
    std::set<std::string> cleaned;
    for (auto& [k, rec] : pending) {
      if (k.sink != sink_id) continue;
      // The stopped run may have left temp files there; none of its renames
      // can happen any more, so they are garbage.
      if (cleaned.insert(k.mailbox).second) {
        auto n = sink->CleanTemp(k.mailbox);
        if (!n.ok()) return n.status();
      }
      WXA_ASSIGN_OR_RETURN(bool there, sink->Exists(k.mailbox, k.item, k.msgtime_ms));
      if (there) {
        wb.done.push_back(k);
        ++xs.settled_done;
      } else {
        wb.released.push_back(k);
        ++xs.settled_redo;
      }
    }
    if (wb.ops() > 0) {
      auto settled = idx->Write(std::move(wb));
      if (!settled.ok()) return settled.status();
    }
  }

  // Mapping or limit changed since the last run: read everything again, so
  // items recorded unmapped or rejected are retried (and newly mapped
  // participants of delivered items get theirs).
  const std::string cfg_prefix = fmt::format("config/{}/", sink_id);
  WXA_ASSIGN_OR_RETURN(std::string mapping_fp, MappingFingerprint(o));
  const std::string limit_fp = fmt::format("{}:{}", o.limit.max_bytes, limits::PolicyName(o.limit.policy));
  bool rescan = o.rescan;
  if (rescan) xs.rescan_reason = "--rescan";
  auto old_mapping = idx->GetMeta(cfg_prefix + "mapping");
  auto old_limit = idx->GetMeta(cfg_prefix + "limit");
  if (old_mapping.ok() && *old_mapping != mapping_fp) {
    rescan = true;
    xs.rescan_reason = "the directory, mapping or mailbox list changed since the last run";
  } else if (old_limit.ok() && *old_limit != limit_fp) {
    rescan = true;
    xs.rescan_reason = "the item size limit changed since the last run";
  }

  // File ids, and cursors (validated against the file's first bytes).
  const auto& files = reader.files();
  std::vector<uint32_t> file_ids;
  std::vector<index::Cursor> templates(files.size());
  {
    index::WriteBatch wb;
    wb.files = files;
    wb.meta.emplace_back(cfg_prefix + "mapping", mapping_fp);
    wb.meta.emplace_back(cfg_prefix + "limit", limit_fp);
    for (size_t i = 0; i < files.size(); ++i) {
      index::Cursor& t = templates[i];
      t.prefix_len = static_cast<uint32_t>(std::min<uint64_t>(4096, reader.FileSize(static_cast<uint32_t>(i))));
      WXA_ASSIGN_OR_RETURN(t.prefix_hash, reader.PrefixHash(static_cast<uint32_t>(i), t.prefix_len));
      WXA_ASSIGN_OR_RETURN(auto cur, idx->GetCursor(ImportRun::CursorKey(sink_id, files[i])));
      if (rescan) {
        // Reset in the same transaction as the new fingerprints, so a crash
        // during the rescan resumes the rescan rather than forgetting it.
        index::Cursor zero = t;
        wb.cursors.emplace_back(ImportRun::CursorKey(sink_id, files[i]), zero);
        continue;
      }
      if (!cur) continue;
      bool same_file = false;
      if (cur->prefix_len <= reader.FileSize(static_cast<uint32_t>(i)) && cur->offset <= reader.FileSize(static_cast<uint32_t>(i))) {
        WXA_ASSIGN_OR_RETURN(std::string h, reader.PrefixHash(static_cast<uint32_t>(i), cur->prefix_len));
        same_file = h == cur->prefix_hash;
      }
      if (!same_file) {
        ++xs.files_restarted;  // replaced or truncated: read it all (done items are skipped)
        continue;
      }
      if (cur->offset == reader.FileSize(static_cast<uint32_t>(i))) {
        ++xs.files_complete;
      } else if (cur->offset > 0) {
        ++xs.files_resumed;
      }
      reader.SetStart(static_cast<uint32_t>(i), {cur->offset, cur->line});
    }
    WXA_ASSIGN_OR_RETURN(auto r, idx->Write(std::move(wb)));
    file_ids = r.file_ids;
    for (size_t i = 0; i < files.size(); ++i) templates[i].file_id = file_ids[i];
  }

  WXA_ASSIGN_OR_RETURN(ReportWriter report, ReportWriter::Open(o.report_path));
  summary.source_files = files.size();
  summary.report_path = o.report_path;
  Counts& counts = summary.counts;

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
  auto add_file_issues = [&](const std::vector<wecom::FileIssue>& issues) -> Status {
    for (const auto& fi : issues) {
      ReportEntry e;
      e.outcome = Outcome::kInputIssue;
      e.reason = fmt::format("source file not read: {}", fi.reason);
      e.input = core::JoinPath(o.source_dir, fi.file);
      AddCounts(counts, e.outcome);
      WXA_RETURN_IF_ERROR(report.Add(e));
    }
    return Status::Ok();
  };
  WXA_RETURN_IF_ERROR(add_file_issues(reader.TakeNewIssues()));
  if (files.empty()) {
    WXA_RETURN_IF_ERROR(add_issues(
        {{0, "the source directory holds no *.jsonl files: nothing to import"}}, o.source_dir));
  }

  size_t threads = o.threads != 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  summary.threads = threads;
  tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
  const size_t tokens = o.max_batches_in_flight != 0 ? o.max_batches_in_flight : 2 * threads + 2;

  ImportRun run(o, mapper, media, *sink, *idx, sink_id, files, file_ids);
  run.SetCursorTemplates(templates);
  wecom::ParseOptions popts;
  popts.corp = o.corp;
  tbb::enumerable_thread_specific<std::unique_ptr<Worker>> workers(
      [&popts] { return std::make_unique<Worker>(popts); });
  Status stage_error;
  auto last_progress = Clock::now();
  std::set<std::string> mailboxes_touched;
  std::deque<std::future<Result<index::WriteResult>>> commits;  // in flight, oldest first
  auto reap = [&](bool wait) {
    while (!commits.empty() &&
           (wait || commits.front().wait_for(std::chrono::seconds(0)) == std::future_status::ready)) {
      auto r = commits.front().get();
      commits.pop_front();
      if (!r.ok()) run.Fail(r.status().WithContext("committing to the index"));
    }
  };

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
                run.Fail(more.status());
                fc.stop();
                return nullptr;
              }
              b->file_issues = reader.TakeNewIssues();
              if (!*more) {
                if (!b->file_issues.empty()) return b.release();  // report them, then stop
                fc.stop();
                return nullptr;
              }
              return b.release();
            }) &
            tbb::make_filter<Batch*, Batch*>(tbb::filter_mode::parallel,
                                             [&](Batch* b) -> Batch* {
                                               run.Plan(*workers.local(), *b);
                                               return b;
                                             }) &
            tbb::make_filter<Batch*, Batch*>(tbb::filter_mode::serial_in_order,
                                             [&](Batch* b) -> Batch* {
                                               run.Claim(*b);
                                               return b;
                                             }) &
            tbb::make_filter<Batch*, Batch*>(tbb::filter_mode::parallel,
                                             [&](Batch* b) -> Batch* {
                                               run.Deliver(*workers.local(), *b);
                                               return b;
                                             }) &
            tbb::make_filter<Batch*, void>(
                tbb::filter_mode::serial_in_order, [&](Batch* raw) {
                  std::unique_ptr<Batch> b(raw);
                  if (Status fs = add_file_issues(b->file_issues); !fs.ok() && stage_error.ok()) {
                    stage_error = fs;
                  }
                  bool cursor_ok = false;
                  index::WriteBatch wb = run.Commit(*b, &cursor_ok);
                  if (wb.ops() > 0) commits.push_back(idx->Submit(std::move(wb)));
                  reap(false);
                  for (const RecordWork& r : b->work) {
                    if (r.kind == RecordWork::Kind::kSkipped) continue;  // run failed first
                    ++counts.records;
                    if (r.kind == RecordWork::Kind::kItem) ++counts.items;
                    if (r.imported) ++counts.imported;
                    if (r.kind == RecordWork::Kind::kItem && !r.imported && r.settled &&
                        r.deliveries_present > 0 && r.entries.empty()) {
                      ++counts.already_present;
                    }
                    counts.deliveries += r.deliveries_new;
                    counts.deliveries_present += r.deliveries_present;
                    counts.bytes_written += r.bytes_written;
                    counts.rendered += r.rendered;
                    if (r.imported) {
                      for (const auto& mb : r.delivered) {
                        ++summary.deliveries_by_mailbox[mb];
                        mailboxes_touched.insert(mb);
                      }
                    }
                    for (const auto& [id, why] : r.unmapped) {
                      auto& u = summary.unmapped_participants[id];
                      ++u.first;
                      if (u.second.empty()) u.second = why;
                    }
                    for (const auto& e : r.entries) {
                      AddCounts(counts, e.outcome);
                      Status s = report.Add(e);
                      if (!s.ok() && stage_error.ok()) stage_error = s;
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
    stage_error = Status::Aborted(fmt::format("pipeline stopped: {}", e.what()));
  }
  reap(true);

  summary.fatal = !run.fatal().ok() ? run.fatal() : stage_error;
  summary.interrupted = o.stop != nullptr && o.stop->load();
  summary.mailboxes_touched = mailboxes_touched.size();
  counts.source_bytes = reader.bytes_read();
  if (auto c = idx->GetCounters(); c.ok()) {
    xs.items_done = c->items[static_cast<int>(index::ItemState::kDone)];
    xs.items_unmapped = c->items[static_cast<int>(index::ItemState::kUnmapped)];
    xs.items_rejected = c->items[static_cast<int>(index::ItemState::kRejected)];
    xs.deliveries_done = c->deliveries[static_cast<int>(index::DeliveryState::kDone)];
    xs.deliveries_in_doubt = c->deliveries[static_cast<int>(index::DeliveryState::kIntent)];
  }
  xs.commits = idx->commits();
  summary.elapsed_s = std::chrono::duration<double>(Clock::now() - started).count();
  Status fin = report.Finish(SummaryJson(o, summary));
  if (!fin.ok() && summary.fatal.ok()) summary.fatal = fin.WithContext("writing the report");
  return summary;
}

}  // namespace wxa::pipeline
