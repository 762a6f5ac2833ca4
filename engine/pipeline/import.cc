#include "engine/pipeline/import.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <filesystem>
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
#include "engine/pipeline/batch.h"
#include "engine/pipeline/tracker.h"
#include "engine/sinks/pst/pst_sink.h"
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

// Per-thread heavy contexts (STYLE rule 5).
struct Worker {
  explicit Worker(const wecom::ParseOptions& o) : parser(o) {}
  wecom::RecordParser parser;
  mime::Renderer renderer;
};

ReportEntry EntryFor(const ItemHead& item, Outcome o, std::string reason) {
  ReportEntry e;
  e.outcome = o;
  e.reason = std::move(reason);
  e.pos = item.pos;
  e.msgid = item.msgid;
  e.msgtype = item.msgtype;
  e.item_key = item.key.Hex();
  return e;
}

// Sealed batches the tracker lets wait for their completions. Completions a
// sink holds until Close() (PST volumes) cannot be waited for batch by batch;
// their bytes are bounded (max_outstanding_bytes).
size_t MaxOutstandingBatches(const ImportOptions& o, const sinks::Capabilities& caps) {
  if (caps.holds_until_close) return SIZE_MAX;
  size_t n = o.max_outstanding_batches;
  if (caps.holds_until_barrier) n = std::min(n, o.max_outstanding_batches_local);
  return std::max<size_t>(1, n);
}

// Everything the stages share. One per run.
class ImportRun {
 public:
  ImportRun(const ImportOptions& o, const mapping::Mapper& mapper, const wecom::MediaStore& media,
            index::Index& idx, uint16_t sink_id, const std::vector<std::string>& files,
            const std::vector<uint32_t>& file_ids)
      : o_(o), mapper_(mapper), media_(media), idx_(idx), sink_id_(sink_id), files_(files),
        file_ids_(file_ids) {}

  void SetTracker(Tracker* t) { tracker_ = t; }
  bool failed() const { return failed_.load(); }
  std::atomic<size_t> unbarriered_{0};   // batches delivered since the last Barrier
  std::atomic<int64_t> last_barrier_{Clock::now().time_since_epoch().count()};
  std::atomic<uint64_t> render_ahead_peak_{0};  // ImportSummary::render_ahead_peak_bytes
  Status fatal() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fatal_;
  }
  void Fail(const Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fatal_.ok()) fatal_ = s;
    failed_ = true;
  }

  index::ItemRecord RecordFor(const ItemHead& item, index::ItemState st, std::string reason) const {
    index::ItemRecord r;
    r.state = st;
    r.msgtime_ms = item.msgtime_ms;
    // The record's own file index; a search (one string compare per source
    // file, per item: a years-long backfill has thousands) only without it.
    size_t fi = item.file_index < files_.size() && files_[item.file_index] == item.pos.file
                    ? item.file_index
                    : static_cast<size_t>(std::find(files_.begin(), files_.end(), item.pos.file) - files_.begin());
    r.file_id = fi < file_ids_.size() ? file_ids_[fi] : 0;
    r.offset = item.pos.offset;
    r.line = item.pos.line;
    r.reason = std::move(reason);
    r.record_hash = item.record_hash;
    return r;
  }

  void SetFileNames(std::unordered_map<uint32_t, std::string> names) { file_names_ = std::move(names); }

  // "file:line" of a recorded item.
  std::string PositionOf(const index::ItemRecord& r) const {
    auto fn = file_names_.find(r.file_id);
    return fmt::format("{}:{}", fn == file_names_.end() ? std::string("?") : fn->second, r.line);
  }

  // A batch is recorded: its items are in the index now (or settled), so
  // the in-run conflict check no longer needs them.
  void Forget(const Batch& b) {
    std::lock_guard<std::mutex> l(claimed_mu_);
    for (const auto& k : b.claimed_keys) claimed_hashes_.erase(k);
  }

  // Stage 2 (parallel): parse, map, and ask the index what is left to do.
  // Nothing is rendered here: a record whose deliveries are all done costs a
  // parse, a few hash lookups and an LMDB read.
  void Plan(Worker& w, Batch& b) {
    b.work.resize(b.records.size());
    std::vector<std::vector<std::string>> mailboxes(b.records.size());
    for (size_t i = 0; i < b.records.size(); ++i) {
      if (failed()) return;
      PlanRecord(w, b.records[i], b.work[i], &mailboxes[i]);
      std::string().swap(b.records[i].bytes);  // the line is parsed: only its position is kept
    }
    // What the index knows of each item and its deliveries (one read): a
    // record that reuses a msgid for other content is a conflict, never
    // delivered under the first one's Message-ID.
    std::vector<core::ItemKey> item_keys;
    std::vector<RecordWork*> item_work;
    std::vector<const std::vector<std::string>*> item_mailboxes;
    for (size_t i = 0; i < b.work.size(); ++i) {
      RecordWork& rw = b.work[i];
      if (rw.kind == RecordWork::Kind::kItem && rw.item) {
        item_keys.push_back(rw.item->key);
        item_work.push_back(&rw);
        item_mailboxes.push_back(&mailboxes[i]);
      }
    }
    std::vector<std::optional<index::ItemRecord>> stored;
    std::vector<std::optional<index::DeliveryState>> states;
    Status s = idx_.GetItemsWithDeliveries(sink_id_, item_keys, item_mailboxes, &stored, &states);
    if (!s.ok()) {
      Fail(s.WithContext("reading the index"));
      return;
    }
    size_t next_state = 0;
    for (size_t i = 0; i < item_work.size(); ++i) {
      RecordWork& rw = *item_work[i];
      for (const std::string& mailbox : *item_mailboxes[i]) {
        const auto& state = states[next_state++];
        if (state == index::DeliveryState::kDone) {
          ++rw.deliveries_present;
        } else {
          rw.needed.push_back(mailbox);
          if (state) rw.needed_unrecorded = false;  // an intent or a failed delivery
        }
      }
      const auto& st = stored[i];
      if (st && !st->record_hash.empty() && st->record_hash != rw.item->record_hash) {
        MarkConflict(rw, PositionOf(*st));
        continue;
      }
      // Every delivery done before: skipped without rendering. The item itself
      // is recorded done if a stopped run could not say so (its deliveries were
      // settled from in-doubt intents).
      if (!rw.item_record && rw.needed.empty()) {
        rw.settled = true;
        if (!st || st->state != index::ItemState::kDone) {
          rw.item_record = std::make_unique<index::ItemRecord>(RecordFor(*rw.item, index::ItemState::kDone, ""));
        }
        rw.full.reset();
      }
    }
  }

  // The record reuses a msgid for other content: reported with both
  // positions, not delivered, the first record's item untouched.
  void MarkConflict(RecordWork& rw, const std::string& first_at) {
    const ItemHead& item = *rw.item;
    ReportEntry e = EntryFor(item, Outcome::kConflict,
                             fmt::format("msgid {} was first seen with other content at {}; this record ({}:{}) "
                                         "is not delivered: check which is right",
                                         item.msgid, first_at, item.pos.file, item.pos.line));
    rw.entries.clear();
    rw.entries.push_back(std::move(e));
    rw.unmapped.clear();
    rw.needed.clear();
    rw.item_record.reset();
    rw.deliveries_present = 0;
    rw.settled = true;
    rw.full.reset();
  }

  // Stage 3 (serial): claim the needed deliveries durably before writing any.
  void Claim(Batch& b) {
    if (failed()) return;
    {
      // Two records of this run with one msgid and different content: the
      // second is a conflict (the first is not in the index yet).
      std::lock_guard<std::mutex> l(claimed_mu_);
      for (auto& rw : b.work) {
        if (rw.needed.empty()) continue;
        auto [it, inserted] = claimed_hashes_.try_emplace(
            rw.item->key, rw.item->record_hash, fmt::format("{}:{}", rw.item->pos.file, rw.item->pos.line));
        if (inserted) {
          b.claimed_keys.push_back(rw.item->key);
        } else if (it->second.first != rw.item->record_hash) {
          MarkConflict(rw, it->second.second + " (earlier in this run)");
        }
      }
    }
    index::WriteBatch wb;
    for (uint32_t r = 0; r < b.work.size(); ++r) {
      const RecordWork& rw = b.work[r];
      for (uint32_t m = 0; m < rw.needed.size(); ++m) {
        wb.claims.push_back({sink_id_, rw.needed[m], rw.item->key, rw.item->msgtime_ms, rw.needed_unrecorded,
                             rw.item->record_hash});
        b.claim_owner.emplace_back(r, m);
      }
    }
    if (wb.claims.empty()) return;
    // Not waited for here: the deliver stage renders while the commit (a
    // durable write) is in flight, and writes nothing before it answers.
    b.claims = idx_.Submit(std::move(wb));
    b.claims_pending = true;
  }

  // The answer to the batch's claims (waits for the commit). Once per batch.
  void ResolveClaims(Batch& b) {
    if (!b.claims_pending) return;
    b.claims_pending = false;
    auto r = b.claims.get();
    if (!r.ok()) {
      Fail(r.status().WithContext("recording intents in the index"));
      return;
    }
    std::vector<uint32_t> conflicts;  // records (index into work)
    for (size_t k = 0; k < b.claim_owner.size(); ++k) {
      RecordWork& rw = b.work[b.claim_owner[k].first];
      std::string& mb = rw.needed[b.claim_owner[k].second];
      std::string why;
      switch (r->claims[k]) {
        case index::ClaimResult::kClaimed: rw.claimed.push_back(std::move(mb)); break;
        case index::ClaimResult::kDone: ++rw.deliveries_present; break;
        case index::ClaimResult::kConflict:
          if (conflicts.empty() || conflicts.back() != b.claim_owner[k].first) {
            conflicts.push_back(b.claim_owner[k].first);
          }
          break;
        case index::ClaimResult::kInFlight:
          // An intent of a stopped run that could not be probed (its mailbox
          // failed at start-up) stays in doubt; otherwise another record
          // with the same msgid delivers it in this run (overlapping exports).
          if (tracker_->MailboxStopped(mb, &why)) {
            tracker_->AddInDoubt(rw, mb, fmt::format("in doubt since a stopped run; not checked: {}", why));
          } else {
            ++rw.deliveries_present;
          }
          break;
      }
    }
    // The item was recorded with other content after this batch read the
    // index (another batch of this run, finalized before these claims):
    // found by the claim itself. Every claim of an item answers alike (one
    // transaction), so none of its intents was recorded.
    for (uint32_t i : conflicts) {
      RecordWork& rw = b.work[i];
      std::string first_at = "?";
      if (auto st = idx_.GetItem(rw.item->key); st.ok() && *st) first_at = PositionOf(**st);
      MarkConflict(rw, first_at);
    }
    // Answered: the plan is spent. A batch waits for its completions holding
    // only what the tracker records (with slow publication, up to
    // max_outstanding_batches_local batches of 2,048 records wait at once).
    std::vector<std::pair<uint32_t, uint32_t>>().swap(b.claim_owner);
    for (auto& rw : b.work) {
      std::vector<std::string>().swap(rw.needed);
      if (rw.kind == RecordWork::Kind::kItem && rw.item && !rw.item_record && rw.claimed.empty() &&
          rw.deliveries.empty()) {
        // Another record with the same msgid delivers it (or did): it records the item.
        rw.settled = true;
        rw.full.reset();
      }
    }
  }

  // Stage 4 (parallel): render each record once, submit its deliveries,
  // then ask the sink to make the batch durable (local trees: one
  // file-system commit for the whole batch). While the batch's intents are
  // being committed (tens of ms on a disk), records that need a delivery are
  // rendered ahead, up to ImportOptions::render_ahead_bytes; nothing
  // reaches the target before the commit answers, and a rendering the
  // answer makes unneeded (delivered by another record meanwhile) is dropped.
  void Deliver(Worker& w, Batch& b, sinks::Sink& sink) {
    const bool want_pst = sink.capabilities().wants_pst_message;
    std::vector<std::pair<RecordWork*, Prepared>> ahead;
    uint64_t ahead_bytes = 0, ahead_peak = 0;
    auto finish_ahead = [&] {
      ResolveClaims(b);
      for (auto& [rw, p] : ahead) Finish(b, *rw, std::move(p));
      ahead.clear();
    };
    for (auto& rw : b.work) {
      if (b.claims_pending) {
        if (rw.needed.empty()) continue;  // no claim: nothing to deliver
        if (ahead_bytes < o_.render_ahead_bytes && !failed() &&
            b.claims.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
          Prepared p = Prepare(w, rw, want_pst);
          ahead_bytes += p.held();
          ahead.emplace_back(&rw, std::move(p));
          ahead_peak = std::max(ahead_peak, ahead_bytes);
          continue;
        }
        finish_ahead();
      }
      if (rw.claimed.empty()) continue;
      if (failed()) {
        Finish(b, rw, Prepared{});
        continue;
      }
      Finish(b, rw, Prepare(w, rw, want_pst));
    }
    finish_ahead();
    uint64_t peak = render_ahead_peak_.load(std::memory_order_relaxed);
    while (ahead_peak > peak && !render_ahead_peak_.compare_exchange_weak(peak, ahead_peak)) {
    }
    if (!BarrierDue(sink)) return;
    Status s = sink.Barrier();
    if (!s.ok()) Fail(s.WithContext("making deliveries durable"));
  }

  // Local targets make staged items durable in a Barrier (a syncfs, or an fsync per item, and
  // the renames): one per batch made a 1-thread Maildir import wait on 392 syncfs calls for
  // 50,000 records. Paced: every barrier_batches batches or barrier_interval_ms, whichever
  // comes first, and after the last batch (RunImport). Completions wait for it, so the paced
  // count stays below the tracker's bound on sealed batches (no deadlock).
  bool BarrierDue(sinks::Sink& sink) {
    if (!sink.capabilities().holds_until_barrier || failed()) return true;
    const size_t every = std::clamp<size_t>(o_.barrier_batches, 1, std::max<size_t>(1, MaxOutstandingBatches(o_, sink.capabilities()) / 4));
    const int64_t now = Clock::now().time_since_epoch().count();
    const int64_t interval = std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::milliseconds(o_.barrier_interval_ms)).count();
    if (unbarriered_.fetch_add(1) + 1 < every && now - last_barrier_.load() < interval) return false;
    unbarriered_.store(0);
    last_barrier_.store(now);
    return true;
  }

 private:
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
    out.full = std::make_unique<core::Item>(std::move(parsed->item));
    out.item = ItemHead::Of(*out.full);
    out.item->file_index = rec.file_index;
    const core::Item& item = *out.full;
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
      ReportEntry e = EntryFor(*out.item, Outcome::kUnmapped, reason);
      e.participants = item.Participants();
      out.entries.push_back(std::move(e));
      out.item_record = std::make_unique<index::ItemRecord>(RecordFor(*out.item, index::ItemState::kUnmapped, reason));
      out.settled = true;
      out.full.reset();
    }
  }

  // A record's rendering, or why it has none, before its claims are known.
  struct Prepared {
    enum class Kind : uint8_t { kNone, kRendered, kRejected, kFailed } kind = Kind::kNone;
    Outcome outcome = Outcome::kFailed;  // kRejected, kFailed
    std::string reason;
    uint64_t size = 0;
    bool rendered = false;  // the renderer ran
    std::shared_ptr<const std::string> bytes;
    std::string content_hash;
    std::shared_ptr<const pst::Message> pst_message;
    std::vector<ReportEntry> warnings;
    uint64_t held() const { return bytes ? bytes->size() : 0; }
  };

  // Oversize policy stub: `m` (found, or read) becomes a small text
  // attachment naming the file, its size, its SHA-256 and where the original
  // is kept; the body's notes say the same. Returns how the file differs
  // from the record (reported as corrupt media), if it does. A file that can
  // no longer be read is missing instead (and reported as such).
  std::string Stub(core::MediaRef& m) {
    std::string sha, corrupt;
    uint64_t size = 0;
    if (m.has_bytes()) {
      sha = core::ToHex(core::Sha256(m.bytes));
      size = m.bytes.size();
      if (m.state == core::MediaState::kCorrupt) corrupt = m.problem;  // Load's words
    } else {
      auto d = media_.Digest(m);
      if (!d.ok()) {
        m.state = core::MediaState::kMissing;
        m.bytes.clear();
        m.problem = fmt::format("media not read: {}", d.status().message());
        return std::string();
      }
      sha = d->sha256_hex;
      size = d->size;
      if (!d->problem.empty()) corrupt = fmt::format("media corrupt ({}): {}", m.path, d->problem);
    }
    // Where the original is: the source's real path (symlinks resolved, so
    // one archive gives the same bytes however its path is spelt).
    std::error_code ec;
    const std::filesystem::path real = std::filesystem::weakly_canonical(o_.source_dir, ec);
    const std::string kept = core::JoinPath(ec ? o_.source_dir : real.string(), m.path);
    // The name from the record on one clean line (it must not forge the
    // stub's own lines), short enough to keep ".stub.txt" in a file name.
    std::string name = !m.filename.empty() ? m.filename : m.path.substr(m.path.rfind('/') + 1);
    if (!core::IsValidUtf8(name)) {
      std::string fixed;
      core::RepairUtf8(name, &fixed);
      name = std::move(fixed);
    }
    name = core::TruncateUtf8(core::OneLine(name), 150);
    const std::string note = corrupt.empty() ? std::string() : fmt::format("; {}", corrupt);
    m.problem = fmt::format(
        "{} '{}' ({}) is not attached: with it the item would be over the {} limit (oversize policy 'stub'); "
        "the original is kept at {}, SHA-256 {}{}",
        m.role, name, limits::DescribeSize(size), limits::DescribeSize(o_.limit.max_bytes), kept, sha, note);
    std::string text = fmt::format(
        "This file is not attached: with it the message would be over the {} item limit\n"
        "(wxarchiver, oversize policy 'stub'). The original is kept in the source archive.\n\n"
        "file: {}\nrole: {}\nsize: {} bytes\nsha256: {}\nkept at: {}\n",
        limits::DescribeSize(o_.limit.max_bytes), name, m.role, size, sha, kept);
    if (!m.md5sum.empty()) text += fmt::format("md5 (as the record gives it): {}\n", core::OneLine(m.md5sum));
    if (!corrupt.empty()) text += fmt::format("note: {}\n", core::OneLine(corrupt));
    m.bytes = std::move(text);
    m.filename = name + ".stub.txt";
    m.extension = "txt";
    m.size = m.bytes.size();
    m.md5sum.clear();
    m.declared_size.reset();
    m.state = core::MediaState::kOk;
    m.stubbed = true;
    return corrupt;
  }

  // Renders one record whose deliveries are needed. Changes nothing in rw
  // (its item's media are resolved and loaded): Finish applies the result.
  Prepared Prepare(Worker& w, RecordWork& rw, bool want_pst) {
    Prepared p;
    if (!rw.full) {  // released as settled: never asked for (Deliver skips records without claims)
      p.kind = Prepared::Kind::kFailed;
      p.reason = "internal error: the item was released before it was rendered";
      return p;
    }
    core::Item& item = *rw.full;
    const ItemHead& head = *rw.item;
    for (auto& m : item.media) media_.Resolve(m);
    const uint64_t limit = o_.limit.max_bytes;
    auto reject = [&](Prepared::Kind kind, Outcome o, std::string reason, uint64_t size) {
      p.kind = kind;
      p.outcome = o;
      p.reason = std::move(reason);
      p.size = size;
      p.bytes.reset();
      p.pst_message.reset();
      return std::move(p);
    };
    // Oversize policy stub: the largest attachments are replaced by their
    // stubs (Stub) until the excess is covered, then the item is rendered
    // again (once, or a few times: not once per attachment). Files not much
    // bigger than a stub are left: replacing them would not help.
    const bool stub = o_.limit.policy == limits::OversizePolicy::kStub;
    constexpr uint64_t kStubSaves = 2048;  // a stub is about 600 bytes of base64; it must save more than that
    std::vector<std::string> stubbed;
    auto stub_one = [&](core::MediaRef& m) {
      std::string corrupt = Stub(m);
      if (m.stubbed) stubbed.push_back(m.problem);
      if (!corrupt.empty()) p.warnings.push_back(EntryFor(head, Outcome::kCorruptMedia, std::move(corrupt)));
    };
    auto b64 = [](uint64_t n) { return (n + 2) / 3 * 4 + (n + 56) / 57 * 2; };
    auto stub_for = [&](uint64_t excess) {
      std::vector<core::MediaRef*> order;
      for (auto& m : item.media) {
        if (m.found() && !m.stubbed && b64(m.size) > kStubSaves) order.push_back(&m);
      }
      std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->size > b->size; });
      uint64_t saved = 0;
      for (core::MediaRef* m : order) {
        if (saved >= excess) break;
        saved += b64(m->size) - kStubSaves;
        stub_one(*m);
      }
      return saved > 0;
    };
    // Over the limit by the media sizes alone: rejected (or stubbed) before
    // any byte of them is read or hashed, so memory per record stays
    // bounded by the limit (a stub hashes its file in pieces). A rejection
    // gives the size without stubs.
    uint64_t estimate = mime::RenderedSizeLowerBound(item);
    const uint64_t unstubbed_estimate = estimate;
    while (stub && estimate > limit && stub_for(estimate - limit)) estimate = mime::RenderedSizeLowerBound(item);
    if (estimate > limit) {
      return reject(Prepared::Kind::kRejected, Outcome::kOversize,
                    limits::OversizeReason(o_.limit, unstubbed_estimate, true), unstubbed_estimate);
    }
    for (auto& m : item.media) {
      Status ls = media_.Load(m, limit);
      if (ls.code() == Status::Code::kTooLarge) {  // grew past the limit since it was found
        if (stub) {
          stub_one(m);
          continue;
        }
        uint64_t size = std::max(mime::RenderedSizeLowerBound(item), limit + 1);
        return reject(Prepared::Kind::kRejected, Outcome::kOversize, limits::OversizeReason(o_.limit, size, true),
                      size);
      }
    }
    p.rendered = true;
    core::Participants who = mapper_.ParticipantsFor(item);
    mime::RenderInput in{&item, std::move(who.from), std::move(who.to)};
    auto bytes = w.renderer.Render(in);
    // Headers, text and MIME structure come on top of the attachments.
    const uint64_t first_size = bytes.ok() ? bytes->size() : 0;
    while (stub && bytes.ok() && bytes->size() > limit && stub_for(bytes->size() - limit)) {
      bytes = w.renderer.Render(in);
    }
    if (!bytes.ok()) return reject(Prepared::Kind::kFailed, Outcome::kFailed, bytes.status().ToString(), 0);
    if (bytes->size() > limit) {
      // The size without stubs (or with those the media sizes forced).
      const uint64_t size = std::max(first_size, unstubbed_estimate);
      return reject(Prepared::Kind::kRejected, Outcome::kOversize,
                    limits::OversizeReason(o_.limit, size, /*estimated=*/first_size < unstubbed_estimate), size);
    }
    p.kind = Prepared::Kind::kRendered;
    p.size = bytes->size();
    core::Sha256Digest h = core::Sha256(*bytes);
    p.content_hash.assign(reinterpret_cast<const char*>(h.data()), 16);
    p.bytes = std::make_shared<const std::string>(std::move(*bytes));

    // Warnings, reported if the item is imported.
    for (const auto& m : item.media) {
      if (m.state == core::MediaState::kMissing) {
        p.warnings.push_back(EntryFor(head, Outcome::kMissingMedia,
                                      fmt::format("{} '{}': {}", m.role, m.filename, m.problem)));
      } else if (m.state == core::MediaState::kCorrupt) {
        p.warnings.push_back(EntryFor(head, Outcome::kCorruptMedia,
                                      fmt::format("{} '{}': {}", m.role, m.filename, m.problem)));
      }
    }
    if (!stubbed.empty()) p.warnings.push_back(EntryFor(head, Outcome::kStubbed, fmt::format("{}", fmt::join(stubbed, "; "))));
    if (item.kind == core::ItemKind::kUnknown) {
      p.warnings.push_back(EntryFor(
          head, Outcome::kUnknownType,
          fmt::format("unknown msgtype '{}': imported generically with the record attached", item.msgtype)));
    } else if (!item.notes.empty()) {
      p.warnings.push_back(EntryFor(head, Outcome::kRepaired, fmt::format("{}", fmt::join(item.notes, "; "))));
    }
    // PST volumes: the composed item as PST properties, built while its
    // attachment bytes (pointers into the item) are still there.
    if (want_pst) p.pst_message = sinks::PstMessageFor(w.renderer.composed(), *p.bytes, item.msgtime_ms);
    return p;
  }

  // Applies a record's preparation once its claims are known: submits its
  // claimed deliveries, or gives the claims back with the reason.
  void Finish(Batch& b, RecordWork& rw, Prepared p) {
    if (rw.claimed.empty()) return;  // nothing of it to deliver (rendered ahead for nothing)
    const ItemHead& item = *rw.item;
    auto give_back = [&](index::ItemState st, Outcome o, std::string reason, uint64_t size) {
      ReportEntry e = EntryFor(item, o, reason);
      e.size = size;
      rw.entries.push_back(std::move(e));
      rw.item_record = std::make_unique<index::ItemRecord>(RecordFor(item, st, std::move(reason)));
      rw.item_record->size = size;
      rw.released = std::move(rw.claimed);
      rw.claimed.clear();
      rw.settled = true;
      rw.full.reset();
    };
    if (failed() || p.kind == Prepared::Kind::kNone) {
      rw.released = std::move(rw.claimed);  // never written: give the claim back
      rw.claimed.clear();
      return;
    }
    rw.rendered = p.rendered;
    switch (p.kind) {
      case Prepared::Kind::kRejected:
        give_back(index::ItemState::kRejected, p.outcome, std::move(p.reason), p.size);
        return;
      case Prepared::Kind::kFailed:
        give_back(index::ItemState::kFailed, p.outcome, std::move(p.reason), p.size);
        return;
      default:
        break;
    }
    rw.size = p.size;
    rw.content_hash = std::move(p.content_hash);
    rw.bytes = std::move(p.bytes);
    for (auto& e : p.warnings) rw.warnings.push_back(std::move(e));
    rw.full.reset();  // the rendering holds everything now
    tracker_->SubmitRecord(b, rw, std::move(p.pst_message));
  }

  const ImportOptions& o_;
  const mapping::Mapper& mapper_;
  const wecom::MediaStore& media_;
  index::Index& idx_;
  const uint16_t sink_id_;
  const std::vector<std::string>& files_;
  const std::vector<uint32_t>& file_ids_;
  Tracker* tracker_ = nullptr;
  std::unordered_map<uint32_t, std::string> file_names_;  // file id -> name (positions)
  std::mutex claimed_mu_;
  // Claimed, not yet recorded: key -> (record hash, "file:line").
  std::map<core::ItemKey, std::pair<std::string, std::string>> claimed_hashes_;  // GUARDED_BY(claimed_mu_)
  mutable std::mutex mu_;
  Status fatal_;  // GUARDED_BY(mu_)
  std::atomic<bool> failed_{false};
};

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
  j.Field("target_kind", s.target_kind);
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
  j.Field("deliveries_present", c.deliveries_present).Field("deliveries_failed", c.deliveries_failed);
  j.Field("retries", c.retries).Field("bytes_written", c.bytes_written);
  j.Field("unmapped", c.unmapped).Field("oversize", c.oversize).Field("malformed", c.malformed);
  j.Field("failed", c.failed).Field("switch", c.switches).Field("missing_media", c.missing_media);
  j.Field("corrupt_media", c.corrupt_media).Field("repaired", c.repaired).Field("stubbed", c.stubbed).Field("rendered", c.rendered);
  j.Field("unknown_type", c.unknown_type).Field("input_issues", c.input_issues);
  j.Field("conflicts", c.conflicts);
  j.Field("source_bytes", c.source_bytes);
  j.EndObject();
  const IndexSummary& x = s.index;
  j.Key("index").BeginObject();
  j.Field("dir", x.dir);
  j.Field("settled_done", x.settled_done).Field("settled_redo", x.settled_redo);
  j.Field("settled_unknown", x.settled_unknown);
  j.Field("files_resumed", static_cast<uint64_t>(x.files_resumed));
  j.Field("files_complete", static_cast<uint64_t>(x.files_complete));
  j.Field("files_restarted", static_cast<uint64_t>(x.files_restarted));
  if (!x.rescan_reason.empty()) j.Field("rescan_reason", x.rescan_reason);
  j.Field("items_done", x.items_done).Field("items_unmapped", x.items_unmapped);
  j.Field("items_rejected", x.items_rejected).Field("deliveries_done", x.deliveries_done);
  j.Field("deliveries_in_doubt", x.deliveries_in_doubt).Field("deliveries_failed", x.deliveries_failed);
  j.Field("commits", x.commits).Field("map_trims", x.map_trims);
  j.EndObject();
  const ProcessMemory mem = ReadProcessMemory();
  j.Key("process").BeginObject();
  j.Field("peak_rss_bytes", mem.peak_rss).Field("rss_anon_bytes", mem.rss_anon);
  j.Field("rss_file_bytes", mem.rss_file);
  j.Field("render_ahead_peak_bytes", s.render_ahead_peak_bytes);
  j.EndObject();
  j.Key("deliveries_by_mailbox").BeginObject();
  for (const auto& [mb, n] : s.deliveries_by_mailbox) j.Field(mb, n);
  j.EndObject();
  j.Key("mailboxes_failed").BeginObject();
  for (const auto& [mb, why] : s.mailboxes_failed) j.Field(mb, why);
  j.EndObject();
  j.Key("unmapped_participants").BeginObject();
  for (const auto& [id, v] : s.unmapped_participants) {
    j.Key(id).BeginObject().Field("items", v.first).Field("reason", v.second).EndObject();
  }
  j.EndObject();
  j.EndObject();
  return out.substr(1, out.size() - 2);  // members only: Finish adds "entries"
}

// The files the mapping depends on, each read once (through the Env), and a
// fingerprint of exactly the bytes parsed: a file rewritten during start-up
// cannot be parsed as one version and fingerprinted as another.
struct MappingFiles {
  std::string directory;
  mapping::Mapper::Inputs mapper;
  std::string fingerprint;
};

Result<MappingFiles> ReadMappingFiles(const ImportOptions& o, core::Env* env) {
  MappingFiles f;
  auto read = [&](const std::string& path, const char* what, std::string* out) -> Status {
    if (path.empty()) return Status::Ok();
    auto text = core::ReadUserFile(env, path);
    if (!text.ok()) return text.status().WithContext(what);
    *out = std::move(*text);
    return Status::Ok();
  };
  WXA_RETURN_IF_ERROR(read(o.directory_csv, "user directory", &f.directory));
  WXA_RETURN_IF_ERROR(read(o.mailboxes_file, "mailbox list", &f.mapper.mailbox_list));
  WXA_RETURN_IF_ERROR(read(o.mapping_csv, "mapping CSV", &f.mapper.mapping_csv));
  f.mapper.mailbox_list_name = o.mailboxes_file;
  f.mapper.mapping_csv_name = o.mapping_csv;
  core::Sha256Stream h;
  for (const auto& [path, bytes] : {std::pair<const std::string&, const std::string&>{o.directory_csv, f.directory},
                                    {o.mapping_csv, f.mapper.mapping_csv},
                                    {o.mailboxes_file, f.mapper.mailbox_list}}) {
    h.Update(path.empty() ? std::string_view("-") : std::string_view("+"));
    if (!path.empty()) h.Update(core::ToHex(core::Sha256(bytes)));
  }
  h.Update(o.default_region);
  f.fingerprint = core::ToHex(h.Finish()).substr(0, 32);
  return f;
}


// ---- phases ----------------------------------------------------------------

// Inputs, target and index: everything that can refuse to start.
struct Opened {
  std::optional<wecom::RecordReader> reader;
  std::unique_ptr<wecom::Directory> directory;
  std::optional<mapping::Mapper> mapper;
  std::optional<wecom::MediaStore> media;
  sinks::Target target;
  std::unique_ptr<sinks::Sink> sink;
  std::unique_ptr<index::Index> idx;
  uint16_t sink_id = 0;
  std::string mapping_fp;  // MappingFiles::fingerprint
};

Result<std::unique_ptr<sinks::Sink>> DefaultMakeSink(const ImportOptions& o, core::Env* env,
                                                     const sinks::Target& t) {
  sinks::LocalSinkOptions lo;
  lo.folder = o.folder;
  lo.sync_mode = o.sync_mode;
  lo.link_copies = o.link_copies;
  lo.max_open_folders = o.max_open_folders;
  // One worker, one publication thread: --threads 1 keeps a single order of
  // file-system steps.
  const size_t workers = o.threads != 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  lo.publish_threads = std::clamp<size_t>(workers, 1, 2);
  lo.env = env;
  return sinks::MakeLocalSink(t, lo);
}

// Which candidate mailboxes the target knows, where it can tell.
Status CheckMailboxesWithTarget(sinks::Sink& sink, mapping::Mapper& mapper) {
  if (!sink.capabilities().checks_mailboxes) return Status::Ok();
  std::vector<std::string> candidates = mapper.CandidateMailboxes();
  if (candidates.empty()) return Status::Ok();
  std::mutex mu;
  std::condition_variable cv;
  bool answered = false;
  std::vector<std::string> unknown;
  sink.CheckMailboxes(candidates, [&](std::vector<std::pair<std::string, sinks::MailboxVerdict>> v) {
    std::lock_guard<std::mutex> l(mu);
    for (auto& [mb, verdict] : v) {
      if (verdict == sinks::MailboxVerdict::kUnknown) unknown.push_back(mb);
    }
    answered = true;
    cv.notify_all();
  });
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return answered; });
  mapper.SetUnknownToTarget(std::move(unknown));
  return Status::Ok();
}

Result<Opened> OpenPhase(const ImportOptions& o, core::Env* env, IndexSummary* xs) {
  Opened op;
  if (o.source_dir.empty()) return Status::InvalidArgument("no source directory given (--source)");
  if (!core::IsDirectory(o.source_dir)) {
    return Status::InvalidArgument(fmt::format("source directory {} does not exist", o.source_dir));
  }
  WXA_ASSIGN_OR_RETURN(op.target, sinks::ParseTarget(o.target));
  if (o.directory_csv.empty()) return Status::InvalidArgument("no user directory given (--directory)");
  if (op.target.remote() && o.index_dir.empty()) {
    return Status::InvalidArgument(fmt::format(
        "{}: targets need --index DIR: the index is what makes a rerun exactly-once", sinks::TargetKindName(op.target.kind)));
  }
  WXA_ASSIGN_OR_RETURN(wecom::RecordReader reader, wecom::RecordReader::Open(o.source_dir, env));
  op.reader.emplace(std::move(reader));
  WXA_ASSIGN_OR_RETURN(MappingFiles files, ReadMappingFiles(o, env));
  op.mapping_fp = files.fingerprint;
  WXA_ASSIGN_OR_RETURN(wecom::Directory directory, wecom::Directory::Parse(files.directory, o.directory_csv));
  op.directory = std::make_unique<wecom::Directory>(std::move(directory));
  WXA_ASSIGN_OR_RETURN(mapping::Mapper mapper,
                       mapping::Mapper::Parse(op.directory.get(), files.mapper, {o.default_region}));
  op.mapper.emplace(std::move(mapper));
  WXA_ASSIGN_OR_RETURN(wecom::MediaStore media, wecom::MediaStore::Open(o.source_dir, env));
  op.media.emplace(std::move(media));
  auto made = o.make_sink ? o.make_sink(op.target) : DefaultMakeSink(o, env, op.target);
  if (!made.ok()) return made.status();
  op.sink = std::move(*made);
  WXA_RETURN_IF_ERROR(op.sink->Open());
  mime::InitGMime();

  xs->dir = !o.index_dir.empty() ? o.index_dir
                                 : op.target.kind == sinks::Target::Kind::kNull
                                       ? std::string()
                                       : index::DefaultIndexDir(o.target);
  if (xs->dir.empty()) return Status::InvalidArgument("the null: target needs --index DIR");
  index::IndexOptions iopts;
  if (o.index_map_size != 0) iopts.initial_map_size = o.index_map_size;
  if (o.index_commit_delay_us != 0) iopts.max_commit_delay_us = o.index_commit_delay_us;
  WXA_ASSIGN_OR_RETURN(op.idx, index::Index::Open(xs->dir, iopts));
  WXA_RETURN_IF_ERROR(op.idx->BindCorp(o.corp));
  WXA_ASSIGN_OR_RETURN(op.sink_id, op.idx->SinkId(op.target.Canonical()));
  WXA_RETURN_IF_ERROR(CheckMailboxesWithTarget(*op.sink, *op.mapper));
  return op;
}

// Deliveries a stopped run left in doubt: the target says whether each is
// there (complete: local files are renamed into place only when whole) or
// not (delivered again when its record is read). One whose mailbox cannot
// be checked stays in doubt, and that mailbox is stopped for this run.
Status SettlePhase(Opened& op, IndexSummary* xs, std::map<std::string, std::string>* stopped) {
  WXA_ASSIGN_OR_RETURN(auto pending, op.idx->PendingDeliveries());
  std::vector<std::pair<index::DeliveryKey, index::DeliveryRecord>> mine;
  for (auto& p : pending) {
    if (p.first.sink == op.sink_id) mine.push_back(std::move(p));
  }
  if (mine.empty()) return Status::Ok();
  std::mutex mu;
  std::condition_variable cv;
  size_t answered = 0;
  std::vector<sinks::ProbeResult> results(mine.size());
  for (size_t i = 0; i < mine.size(); ++i) {
    sinks::Delivery d;
    d.id = i;
    d.mailbox = mine[i].first.mailbox;
    d.key = mine[i].first.item;
    d.msgtime_ms = mine[i].first.msgtime_ms;
    d.message_id = mime::MessageIdFor(d.key);
    op.sink->Probe(d, [&](uint64_t id, sinks::ProbeResult r) {
      std::lock_guard<std::mutex> l(mu);
      results[id] = std::move(r);
      ++answered;
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return answered == mine.size(); });
  }
  index::WriteBatch wb;
  for (size_t i = 0; i < mine.size(); ++i) {
    const auto& r = results[i];
    switch (r.kind) {
      case sinks::ProbeResult::Kind::kPresent:
        wb.done.push_back({mine[i].first, r.remote_ref, {}});
        ++xs->settled_done;
        break;
      case sinks::ProbeResult::Kind::kAbsent:
        wb.released.push_back(mine[i].first);
        ++xs->settled_redo;
        break;
      case sinks::ProbeResult::Kind::kFailed:
        ++xs->settled_unknown;
        if (!r.mailbox_bad) {
          return r.error.WithContext("settling deliveries a stopped run left in doubt");
        }
        stopped->emplace(mine[i].first.mailbox, r.error.ToString());
        break;
    }
  }
  if (wb.ops() > 0) {
    auto settled = op.idx->Write(std::move(wb));
    if (!settled.ok()) return settled.status();
  }
  return Status::Ok();
}

struct Planned {
  std::vector<uint32_t> file_ids;
  std::vector<index::Cursor> templates;
};

// Fingerprints (a changed mapping or limit reads everything again, so
// unmapped and rejected items are retried) and per-file cursors, validated
// against each file's first bytes.
Result<Planned> PlanPhase(const ImportOptions& o, Opened& op, IndexSummary* xs) {
  wecom::RecordReader& reader = *op.reader;
  const std::string cfg_prefix = fmt::format("config/{}/", op.sink_id);
  const std::string& mapping_fp = op.mapping_fp;
  const std::string limit_fp = fmt::format("{}:{}", o.limit.max_bytes, limits::PolicyName(o.limit.policy));
  bool rescan = o.rescan;
  if (rescan) xs->rescan_reason = "--rescan";
  auto old_mapping = op.idx->GetMeta(cfg_prefix + "mapping");
  auto old_limit = op.idx->GetMeta(cfg_prefix + "limit");
  if (old_mapping.ok() && *old_mapping != mapping_fp) {
    rescan = true;
    xs->rescan_reason = "the directory, mapping or mailbox list changed since the last run";
  } else if (old_limit.ok() && *old_limit != limit_fp) {
    rescan = true;
    xs->rescan_reason = "the item size limit changed since the last run";
  }
  const auto& files = reader.files();
  Planned p;
  p.templates.resize(files.size());
  index::WriteBatch wb;
  wb.files = files;
  wb.meta.emplace_back(cfg_prefix + "mapping", mapping_fp);
  wb.meta.emplace_back(cfg_prefix + "limit", limit_fp);
  for (size_t i = 0; i < files.size(); ++i) {
    const auto fi = static_cast<uint32_t>(i);
    index::Cursor& t = p.templates[i];
    t.prefix_len = static_cast<uint32_t>(std::min<uint64_t>(4096, reader.FileSize(fi)));
    WXA_ASSIGN_OR_RETURN(t.prefix_hash, reader.PrefixHash(fi, t.prefix_len));
    WXA_ASSIGN_OR_RETURN(auto cur, op.idx->GetCursor(CursorKey(op.sink_id, files[i])));
    if (rescan) {
      // Reset in the same transaction as the new fingerprints, so a crash
      // during the rescan resumes the rescan rather than forgetting it.
      wb.cursors.emplace_back(CursorKey(op.sink_id, files[i]), t);
      continue;
    }
    if (!cur) continue;
    bool same_file = false;
    if (cur->prefix_len <= reader.FileSize(fi) && cur->offset <= reader.FileSize(fi)) {
      WXA_ASSIGN_OR_RETURN(std::string h, reader.PrefixHash(fi, cur->prefix_len));
      same_file = h == cur->prefix_hash;
    }
    if (!same_file) {
      ++xs->files_restarted;  // replaced or truncated: read it all (done items are skipped)
      continue;
    }
    if (cur->offset == reader.FileSize(fi)) {
      ++xs->files_complete;
    } else if (cur->offset > 0) {
      ++xs->files_resumed;
    }
    reader.SetStart(fi, {cur->offset, cur->line});
  }
  WXA_ASSIGN_OR_RETURN(auto r, op.idx->Write(std::move(wb)));
  p.file_ids = r.file_ids;
  for (size_t i = 0; i < files.size(); ++i) p.templates[i].file_id = p.file_ids[i];
  return p;
}

}  // namespace

Result<ImportSummary> RunImport(const ImportOptions& o) {
  const auto started = Clock::now();
  core::Env* env = o.env != nullptr ? o.env : core::Env::Default();
  ImportSummary summary;
  IndexSummary& xs = summary.index;

  // ---- open, settle, plan ----
  WXA_ASSIGN_OR_RETURN(Opened op, OpenPhase(o, env, &xs));
  summary.target_kind = sinks::TargetKindName(op.target.kind);
  std::map<std::string, std::string> stopped_at_start;
  WXA_RETURN_IF_ERROR(SettlePhase(op, &xs, &stopped_at_start));
  WXA_ASSIGN_OR_RETURN(Planned planned, PlanPhase(o, op, &xs));
  wecom::RecordReader& reader = *op.reader;
  const auto& files = reader.files();

  WXA_ASSIGN_OR_RETURN(ReportWriter report, ReportWriter::Open(o.report_path, env));
  summary.source_files = files.size();
  summary.report_path = o.report_path;
  Counts start_counts;
  auto add_issue = [&](const std::string& input, size_t line, const std::string& reason) -> Status {
    ReportEntry e;
    e.outcome = Outcome::kInputIssue;
    e.reason = reason;
    e.input = input;
    e.pos.line = line;
    AddCounts(start_counts, e.outcome);
    return report.Add(e);
  };
  for (const auto& i : op.directory->issues()) WXA_RETURN_IF_ERROR(add_issue(o.directory_csv, i.line, i.reason));
  for (const auto& i : op.mapper->issues()) {
    WXA_RETURN_IF_ERROR(add_issue(!o.mapping_csv.empty() ? o.mapping_csv : o.mailboxes_file, i.line, i.reason));
  }
  for (const auto& i : op.media->issues()) {
    WXA_RETURN_IF_ERROR(add_issue(core::JoinPath(o.source_dir, "media/index.csv"), i.line, i.reason));
  }
  for (const auto& fi : reader.TakeNewIssues()) {
    WXA_RETURN_IF_ERROR(add_issue(core::JoinPath(o.source_dir, fi.file), 0,
                                  fmt::format("source file not read: {}", fi.reason)));
  }
  if (files.empty()) {
    WXA_RETURN_IF_ERROR(add_issue(o.source_dir, 0, "the source directory holds no *.jsonl files: nothing to import"));
  }

  uint64_t source_total = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const auto fi = static_cast<uint32_t>(i);
    source_total += reader.FileSize(fi) - std::min(reader.FileSize(fi), reader.StartOffset(fi));
  }

  // ---- pipeline ----
  size_t threads = o.threads != 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  summary.threads = threads;
  tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
  const size_t tokens = o.max_batches_in_flight != 0 ? o.max_batches_in_flight : 2 * threads + 2;

  ImportRun run(o, *op.mapper, *op.media, *op.idx, op.sink_id, files, planned.file_ids);
  const sinks::Capabilities caps = op.sink->capabilities();
  TrackerConfig tc;
  tc.sink = op.sink.get();
  tc.idx = op.idx.get();
  tc.report = &report;
  tc.sink_id = op.sink_id;
  tc.files = &files;
  tc.cursor_templates = planned.templates;
  tc.max_attempts = std::max<uint32_t>(1, o.max_attempts);
  tc.retry_base_ms = o.retry_base_ms;
  tc.retry_max_ms = std::max(o.retry_base_ms, o.retry_max_ms);
  tc.max_outstanding_batches = MaxOutstandingBatches(o, caps);
  tc.max_outstanding_bytes = o.max_outstanding_bytes;
  tc.keep_bytes_for_retry = caps.remote;
  tc.fail = [&run](const Status& s) { run.Fail(s); };
  tc.record_for = [&run](const ItemHead& item, index::ItemState st, std::string reason) {
    return run.RecordFor(item, st, std::move(reason));
  };
  tc.on_finalized = [&run](const Batch& b) { run.Forget(b); };
  WXA_ASSIGN_OR_RETURN(auto file_names, op.idx->FileNames());
  run.SetFileNames(std::move(file_names));
  Tracker tracker(std::move(tc));
  for (const auto& [mb, why] : stopped_at_start) tracker.StopMailbox(mb, why);
  run.SetTracker(&tracker);

  wecom::ParseOptions popts;
  popts.corp = o.corp;
  wecom::BatchLimits batch_limits;
  batch_limits.records = o.batch_records;
  batch_limits.bytes = o.batch_bytes;
  batch_limits.media_bytes = o.batch_media_bytes;
  batch_limits.media_min_records = o.batch_media_min_records;
  batch_limits.media_max_each = o.limit.max_bytes;
  tbb::enumerable_thread_specific<std::unique_ptr<Worker>> workers(
      [&popts] { return std::make_unique<Worker>(popts); });
  Status stage_error;
  auto last_progress = Clock::now();
  uint64_t seq = 0;
  // A report that cannot be written stops the run too (no cursor moves after it).
  auto stopping = [&] {
    return run.failed() || (o.stop != nullptr && o.stop->load()) || tracker.report_failed();
  };
  try {
    tbb::parallel_pipeline(
        tokens,
        tbb::make_filter<void, Batch*>(
            tbb::filter_mode::serial_in_order,
            [&](tbb::flow_control& fc) -> Batch* {
              tracker.WaitForRoom(stopping);
              if (stopping()) {
                fc.stop();
                return nullptr;
              }
              auto b = std::make_unique<Batch>();
              b->seq = seq++;
              auto more = reader.NextBatch(batch_limits, &b->records);
              if (!more.ok()) {
                run.Fail(more.status());
                fc.stop();
                return nullptr;
              }
              for (auto& fi : reader.TakeNewIssues()) {
                fi.file = core::JoinPath(o.source_dir, fi.file);
                b->file_issues.push_back(std::move(fi));
              }
              if (!*more && b->file_issues.empty()) {
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
                                               run.Deliver(*workers.local(), *b, *op.sink);
                                               return b;
                                             }) &
            tbb::make_filter<Batch*, void>(
                tbb::filter_mode::serial_in_order, [&](Batch* raw) {
                  tracker.Seal(std::unique_ptr<Batch>(raw));
                  if (o.on_progress) {
                    auto now = Clock::now();
                    if (now - last_progress >= std::chrono::milliseconds(o.progress_interval_ms)) {
                      last_progress = now;
                      Counts c = tracker.counts();
                      c.source_bytes = reader.bytes_read();
                      c.source_total = source_total;
                      o.on_progress(c, std::chrono::duration<double>(now - started).count());
                    }
                  }
                }));
  } catch (const std::exception& e) {
    // TBB and the standard library may throw; nothing escapes this stage edge.
    stage_error = Status::Aborted(fmt::format("pipeline stopped: {}", e.what()));
    run.Fail(stage_error);
  }

  // ---- drain: every submitted delivery gets its outcome recorded ----
  const bool give_up = stopping();
  // A target that failed at its last barrier or close may never answer what
  // it holds: the run is stopping then too, so the drain waits for it only
  // drain_grace_ms.
  const auto grace = std::chrono::milliseconds(o.drain_grace_ms);
  if (caps.holds_until_close) {
    Status cs = op.sink->Close();
    if (!cs.ok()) run.Fail(cs.WithContext("closing the target"));
    tracker.Drain(give_up || stopping(), grace);
  } else {
    // The paced barrier may have left the last batches staged: make them durable (and
    // complete them) before waiting for their completions.
    Status bs = op.sink->Barrier();
    if (!bs.ok()) run.Fail(bs.WithContext("making deliveries durable"));
    tracker.Drain(give_up || stopping(), grace);
    Status cs = op.sink->Close();
    if (!cs.ok()) run.Fail(cs.WithContext("closing the target"));
  }
  tracker.WaitForIndex();

  // ---- summarize ----
  summary.counts = tracker.counts();
  Counts& counts = summary.counts;
  counts.input_issues += start_counts.input_issues;
  summary.fatal = !run.fatal().ok() ? run.fatal() : stage_error;
  summary.interrupted = o.stop != nullptr && o.stop->load();
  summary.deliveries_by_mailbox = tracker.deliveries_by_mailbox();
  summary.unmapped_participants = tracker.unmapped_participants();
  summary.mailboxes_failed = tracker.stopped_mailboxes();
  summary.mailboxes_touched = tracker.mailboxes_touched();
  summary.render_ahead_peak_bytes = run.render_ahead_peak_.load();
  counts.source_bytes = reader.bytes_read();
  counts.source_total = source_total;
  if (auto c = op.idx->GetCounters(); c.ok()) {
    xs.items_done = c->items[static_cast<int>(index::ItemState::kDone)];
    xs.items_unmapped = c->items[static_cast<int>(index::ItemState::kUnmapped)];
    xs.items_rejected = c->items[static_cast<int>(index::ItemState::kRejected)];
    xs.deliveries_done = c->deliveries[static_cast<int>(index::DeliveryState::kDone)];
    xs.deliveries_in_doubt = c->deliveries[static_cast<int>(index::DeliveryState::kIntent)];
    xs.deliveries_failed = c->deliveries[static_cast<int>(index::DeliveryState::kFailed)];
  }
  xs.commits = op.idx->commits();
  xs.map_trims = op.idx->map_trims();
  summary.elapsed_s = std::chrono::duration<double>(Clock::now() - started).count();
  Status rep = tracker.report_error();
  if (!rep.ok() && summary.fatal.ok()) summary.fatal = rep.WithContext("writing the report");
  Status fin = report.Finish(SummaryJson(o, summary));
  if (!fin.ok() && summary.fatal.ok()) summary.fatal = fin.WithContext("writing the report");
  return summary;
}

}  // namespace wxa::pipeline
