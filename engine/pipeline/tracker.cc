#include "engine/pipeline/tracker.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/mime/renderer.h"
#include "formats/pst/pst_writer.h"

namespace wxa::pipeline {

using Clock = std::chrono::steady_clock;
using State = DeliveryWork::State;

std::string CursorKey(uint16_t sink, const std::string& file) { return fmt::format("{}/{}", sink, file); }

// The payload a structured message holds besides the rendering.
uint64_t StructuredBytes(const pst::Message& m) {
  uint64_t n = m.body_plain.size() + m.body_html.size() + m.transport_headers.size();
  for (const auto& a : m.attachments) n += a.data.size();
  return n;
}

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
    case Outcome::kStubbed: ++c.stubbed; break;
    case Outcome::kUnknownType: ++c.unknown_type; break;
    case Outcome::kInputIssue: ++c.input_issues; break;
    case Outcome::kConflict: ++c.conflicts; break;
  }
}

Tracker::Tracker(TrackerConfig c) : c_(std::move(c)) {
  frozen_.assign(c_.files != nullptr ? c_.files->size() : 0, false);
  retry_thread_ = std::thread([this] { RetryLoop(); });
}

Tracker::~Tracker() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  retry_cv_.notify_all();
  if (retry_thread_.joinable()) retry_thread_.join();
}

void Tracker::WaitForRoom(const std::function<bool()>& stopping) {
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping()) {
    const bool batches_ok = sealed_.size() < c_.max_outstanding_batches;
    const bool bytes_ok = bytes_held_ < c_.max_outstanding_bytes;
    if (batches_ok && bytes_ok) return;
    // Completions notify; the timeout only notices a stop request.
    room_cv_.wait_for(l, std::chrono::milliseconds(100));
  }
}

bool Tracker::MailboxStopped(const std::string& mailbox, std::string* why) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = stopped_.find(mailbox);
  if (it == stopped_.end()) return false;
  if (why != nullptr) *why = it->second;
  return true;
}

void Tracker::StopMailbox(const std::string& mailbox, const std::string& why) {
  std::lock_guard<std::mutex> l(mu_);
  stopped_.emplace(mailbox, why);
}

sinks::Delivery Tracker::MakeDelivery(const Slot& s) const {
  const RecordWork& rw = s.batch->work[s.record];
  const DeliveryWork& d = rw.deliveries[s.delivery];
  sinks::Delivery out;
  out.id = d.id;
  out.mailbox = d.mailbox;
  out.key = rw.item->key;
  out.msgtime_ms = rw.item->msgtime_ms;
  out.message_id = mime::MessageIdFor(rw.item->key);
  out.bytes = rw.bytes;
  out.pst_message = rw.structured;
  return out;
}

void Tracker::SubmitRecord(Batch& b, RecordWork& rw, std::shared_ptr<const pst::Message> pst_message) {
  std::vector<sinks::Delivery> out;
  std::vector<uint32_t> waiting;  // deliveries of rw to submit
  const uint32_t r = static_cast<uint32_t>(&rw - b.work.data());
  {
    std::lock_guard<std::mutex> l(mu_);
    rw.deliveries.reserve(rw.deliveries.size() + rw.claimed.size());
    for (auto& mb : rw.claimed) {
      DeliveryWork d;
      d.mailbox = std::move(mb);
      if (auto it = stopped_.find(d.mailbox); it != stopped_.end()) {
        d.state = State::kFailed;
        d.error = fmt::format("not sent: the mailbox was stopped earlier in this run ({})", it->second);
        d.blocks_cursor = true;
        rw.deliveries.push_back(std::move(d));
        continue;
      }
      d.id = next_id_++;
      d.attempts = 1;
      rw.deliveries.push_back(std::move(d));
      ++rw.open;
      ++b.open;
    }
    for (uint32_t i = 0; i < rw.deliveries.size(); ++i) {
      if (rw.deliveries[i].state != State::kWaiting) continue;
      slots_.emplace(rw.deliveries[i].id, Slot{&b, r, i});
      waiting.push_back(i);
    }
    if (c_.keep_bytes_for_retry && rw.open > 0 && rw.bytes) {
      if (pst_message) {
        // A retry of a sink that wants the structured form needs it again.
        rw.structured = pst_message;
        rw.structured_bytes = StructuredBytes(*pst_message);
      }
      const uint64_t held = rw.bytes->size() + rw.structured_bytes;
      b.bytes_held += held;
      bytes_held_ += held;
    }
    std::vector<std::string>().swap(rw.claimed);  // each delivery has its mailbox now
  }
  // Built outside mu_ (a mailbox copy and a Message-ID each): nothing else
  // touches this record's deliveries before they are submitted (completions,
  // retries and the drain all start from a submission, and the batch is not
  // sealed yet).
  out.reserve(waiting.size());
  for (uint32_t i : waiting) out.push_back(MakeDelivery(Slot{&b, r, i}));
  for (auto& d : out) {
    d.pst_message = pst_message;
    c_.sink->Submit(std::move(d), [this](uint64_t id, sinks::Completion c) { OnCompletion(id, std::move(c)); });
  }
  if (!c_.keep_bytes_for_retry) {
    std::lock_guard<std::mutex> l(mu_);
    rw.bytes.reset();  // the sink holds its own reference while it needs one
  }
}

void Tracker::AddInDoubt(RecordWork& rw, const std::string& mailbox, const std::string& why) {
  DeliveryWork d;
  d.mailbox = mailbox;
  d.state = State::kInDoubt;
  d.error = why;
  d.blocks_cursor = true;
  rw.deliveries.push_back(std::move(d));
}

void Tracker::Settle(const Slot& s, State st) {
  RecordWork& rw = s.batch->work[s.record];
  DeliveryWork& d = rw.deliveries[s.delivery];
  d.state = st;
  slots_.erase(d.id);
  --rw.open;
  --s.batch->open;
  if (rw.open == 0 && rw.bytes) {
    if (c_.keep_bytes_for_retry) {
      const uint64_t held = rw.bytes->size() + rw.structured_bytes;
      s.batch->bytes_held -= held;
      bytes_held_ -= held;
    }
    rw.bytes.reset();
    rw.structured.reset();
    rw.structured_bytes = 0;
    room_cv_.notify_all();
  }
}

std::chrono::milliseconds Tracker::Backoff(uint32_t attempts, std::chrono::milliseconds hint) {
  uint64_t base = c_.retry_base_ms;
  for (uint32_t i = 1; i < attempts && base < c_.retry_max_ms; ++i) base *= 2;
  base = std::min<uint64_t>(base, c_.retry_max_ms);
  // Jitter: up to half again, so many deliveries throttled together do not
  // come back together.
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  uint64_t jitter = base > 1 ? rng_ % (base / 2 + 1) : 0;
  auto ms = std::chrono::milliseconds(base + jitter);
  return std::max(ms, hint);  // the server's Retry-After wins when longer
}

void Tracker::OnCompletion(uint64_t id, sinks::Completion c) {
  Status fatal;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = slots_.find(id);
    if (it == slots_.end()) return;  // answered after the run gave up on it
    const Slot s = it->second;
    DeliveryWork& d = s.batch->work[s.record].deliveries[s.delivery];
    using K = sinks::Completion::Kind;
    switch (c.kind) {
      case K::kDone:
        d.ref = std::move(c.remote_ref);
        d.already_there = c.already_there;
        d.error.clear();
        Settle(s, State::kDone);
        break;
      case K::kItemBad:
        d.error = c.error.ToString();
        d.blocks_cursor = false;  // it can never go: a rerun would fail it again
        Settle(s, State::kFailed);
        break;
      case K::kMailboxBad:
        d.error = c.error.ToString();
        d.blocks_cursor = true;
        stopped_.emplace(d.mailbox, d.error);
        Settle(s, State::kFailed);
        break;
      case K::kSinkBad:
        d.error = c.error.ToString();
        d.blocks_cursor = true;
        fatal = c.error;
        Settle(s, State::kFailed);
        break;
      case K::kTransient:
        if (c.in_doubt) d.maybe_arrived = true;
        d.error = c.error.ToString();
        if (!stopping_ && d.attempts < c_.max_attempts) {
          ++d.attempts;
          ++counts_.retries;
          retries_.push(Retry{Clock::now() + Backoff(d.attempts - 1, c.retry_after), id, d.maybe_arrived});
          retry_cv_.notify_all();
        } else {
          d.error = fmt::format("gave up after {} attempts: {}", d.attempts, d.error);
          d.blocks_cursor = true;
          Settle(s, d.maybe_arrived ? State::kInDoubt : State::kFailed);
        }
        break;
    }
    FinalizeReady();
  }
  if (!fatal.ok() && c_.fail) c_.fail(fatal);
}

void Tracker::OnProbe(uint64_t id, sinks::ProbeResult r) {
  sinks::Delivery resend;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = slots_.find(id);
    if (it == slots_.end()) return;
    const Slot s = it->second;
    DeliveryWork& d = s.batch->work[s.record].deliveries[s.delivery];
    switch (r.kind) {
      case sinks::ProbeResult::Kind::kPresent:
        // The earlier attempt did arrive: adopt it, never send it twice.
        d.ref = std::move(r.remote_ref);
        d.error.clear();
        Settle(s, State::kDone);
        FinalizeReady();
        return;
      case sinks::ProbeResult::Kind::kAbsent:
        d.maybe_arrived = false;
        resend = MakeDelivery(s);
        break;
      case sinks::ProbeResult::Kind::kFailed:
        d.error = r.error.ToString();
        if (r.mailbox_bad) stopped_.emplace(d.mailbox, d.error);
        if (!r.mailbox_bad && !stopping_ && d.attempts < c_.max_attempts) {
          ++d.attempts;
          ++counts_.retries;
          retries_.push(Retry{Clock::now() + Backoff(d.attempts - 1, std::chrono::milliseconds(0)), id, true});
          retry_cv_.notify_all();
        } else {
          d.error = fmt::format("in doubt, could not be checked: {}", d.error);
          d.blocks_cursor = true;
          Settle(s, State::kInDoubt);
          FinalizeReady();
        }
        return;
    }
  }
  c_.sink->Submit(std::move(resend), [this](uint64_t i, sinks::Completion c) { OnCompletion(i, std::move(c)); });
}

void Tracker::RetryLoop() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    if (retries_.empty()) {
      if (stopping_) return;
      retry_cv_.wait(l);
      continue;
    }
    const Retry top = retries_.top();
    if (top.when > Clock::now()) {
      retry_cv_.wait_until(l, top.when);
      continue;
    }
    retries_.pop();
    auto it = slots_.find(top.id);
    if (it == slots_.end()) continue;
    sinks::Delivery d = MakeDelivery(it->second);
    l.unlock();
    if (top.probe_first) {
      c_.sink->Probe(d, [this](uint64_t id, sinks::ProbeResult r) { OnProbe(id, std::move(r)); });
    } else {
      c_.sink->Submit(std::move(d), [this](uint64_t id, sinks::Completion c) { OnCompletion(id, std::move(c)); });
    }
    l.lock();
  }
}

void Tracker::Seal(std::unique_ptr<Batch> b) {
  std::lock_guard<std::mutex> l(mu_);
  b->sealed = true;
  sealed_.push_back(std::move(b));
  FinalizeReady();
}

void Tracker::FinalizeReady() {
  while (!sealed_.empty() && sealed_.front()->open == 0) {
    std::unique_ptr<Batch> b = std::move(sealed_.front());
    sealed_.pop_front();
    Finalize(*b);
  }
  Reap(false);
  room_cv_.notify_all();
  drain_cv_.notify_all();
}

void Tracker::Finalize(Batch& b) {
  index::WriteBatch wb;
  std::map<uint32_t, const wecom::RawRecord*> cursor_to;
  std::vector<core::ItemKey> unrecorded;  // claimed, no item record written
  bool reported = false;
  auto report = [&](const ReportEntry& e) {
    AddCounts(counts_, e.outcome);
    if (c_.report == nullptr) return;
    reported = true;
    Status s = c_.report->Add(e);
    if (!s.ok()) ReportFailed(s);
  };
  for (const auto& fi : b.file_issues) {
    ReportEntry e;
    e.outcome = Outcome::kInputIssue;
    e.reason = fmt::format("source file not read: {}", fi.reason);
    e.input = fi.file;
    report(e);
  }
  for (size_t i = 0; i < b.records.size(); ++i) {
    RecordWork& rw = b.work[i];
    const wecom::RawRecord& rec = b.records[i];
    bool ok = true;
    if (rw.kind == RecordWork::Kind::kSkipped) {
      ok = false;  // the run stopped before this record was looked at
    } else {
      ++counts_.records;
      if (rw.kind == RecordWork::Kind::kItem) ++counts_.items;
      counts_.rendered += rw.rendered;
      counts_.deliveries_present += rw.deliveries_present;
      uint64_t fresh = 0, adopted = 0, failed = 0, unsettled = 0;
      std::vector<std::string> errors;
      // The batch is finished (nothing reads its deliveries after this):
      // mailboxes and references move into the index batch, not copied.
      auto key_of = [&](DeliveryWork& d) {
        return index::DeliveryKey{c_.sink_id, std::move(d.mailbox), rw.item->key, rw.item->msgtime_ms};
      };
      for (auto& d : rw.deliveries) {
        switch (d.state) {
          case State::kDone:
            if (d.already_there) {
              ++adopted;
            } else {
              ++fresh;
              ++by_mailbox_[d.mailbox];
              counts_.bytes_written += rw.size;
            }
            wb.done.push_back({key_of(d), std::move(d.ref), {}});
            break;
          case State::kFailed:
            ++failed;
            errors.push_back(fmt::format("{}: {}", d.mailbox, d.error));
            if (d.blocks_cursor) ok = false;
            wb.failed.push_back({key_of(d), {}, std::move(d.error)});
            break;
          case State::kReleased:
            wb.released.push_back(key_of(d));
            ++unsettled;
            ok = false;
            break;
          case State::kInDoubt:
            // Left as an intent: the next run probes the target first.
            ++unsettled;
            errors.push_back(fmt::format("{}: {}", d.mailbox, d.error));
            ok = false;
            break;
          case State::kWaiting:
            break;  // impossible: the batch has no open delivery
        }
      }
      for (const auto& mb : rw.released) {
        wb.released.push_back({c_.sink_id, mb, rw.item->key, rw.item->msgtime_ms});
        // Released without an outcome of its own (the run stopped): not
        // settled, so neither imported nor already present.
        if (!rw.item_record) {
          ok = false;
          ++unsettled;
        }
      }
      // Parsed and mapped, but no outcome: the run failed before the index
      // said what was left to do (the plan's read), before the claims, or
      // the claims were given back. A rerun must read the record again.
      if (rw.kind == RecordWork::Kind::kItem && !rw.settled && rw.deliveries.empty()) ok = false;
      unsettled += rw.needed.size();  // planned, never claimed
      counts_.deliveries += fresh;
      counts_.deliveries_present += adopted;
      counts_.deliveries_failed += failed;
      const bool imported = fresh > 0;
      if (imported) ++counts_.imported;
      std::optional<index::ItemRecord> item_rec;
      if (rw.item_record) item_rec = std::move(*rw.item_record);
      if (!rw.deliveries.empty()) {
        if (failed > 0) {
          std::string reason = fmt::format("{} of {} deliveries failed: {}", failed + unsettled,
                                           rw.deliveries.size(), fmt::join(errors, "; "));
          item_rec = c_.record_for(*rw.item, index::ItemState::kFailed, reason);
          ReportEntry e;
          e.outcome = Outcome::kFailed;
          e.reason = reason;
          e.pos = rw.item->pos;
          e.msgid = rw.item->msgid;
          e.msgtype = rw.item->msgtype;
          e.item_key = rw.item->key.Hex();
          rw.entries.push_back(std::move(e));
        } else if (unsettled == 0) {
          item_rec = c_.record_for(*rw.item, index::ItemState::kDone, "");
          item_rec->size = rw.size;
          item_rec->content_hash = std::move(rw.content_hash);
        } else {
          item_rec.reset();  // still in doubt: the next run says
        }
      }
      if (item_rec && rw.item) {
        wb.items.emplace_back(rw.item->key, std::move(*item_rec));
      } else if (rw.item && !rw.deliveries.empty()) {
        // In doubt: no item record says what this msgid carried, so the
        // run's own check keeps it (a later record reusing the msgid with
        // other content would otherwise find only the intent, in flight).
        unrecorded.push_back(rw.item->key);
      }
      // (An item record of another state than done, unmapped or given back,
      // always comes with its report entry.)
      if (rw.kind == RecordWork::Kind::kItem && !imported && failed == 0 && unsettled == 0 &&
          rw.deliveries_present + adopted > 0 && rw.entries.empty()) {
        ++counts_.already_present;
      }
      for (const auto& [id, why] : rw.unmapped) {
        auto& u = unmapped_[id];
        ++u.first;
        if (u.second.empty()) u.second = why;
      }
      for (const auto& e : rw.entries) report(e);
      if (imported) {
        for (const auto& e : rw.warnings) report(e);
      }
    }
    if (rec.file_index < frozen_.size() && !frozen_[rec.file_index]) {
      if (ok) {
        cursor_to[rec.file_index] = &rec;
      } else {
        frozen_[rec.file_index] = true;  // a rerun must read this record again
      }
    }
  }
  // The entries reach the report's side file, fsynced, before the index
  // moves a cursor past their records (a kill or a power cut after the
  // commit loses none: the next run carries the side file over). A report
  // that cannot be written moves no cursor again: a rerun reads those
  // records and reports them.
  if (reported) {
    Status s = c_.report->Flush(/*durable=*/true);
    if (!s.ok()) ReportFailed(s);
  }
  if (!report_error_.ok()) cursor_to.clear();
  for (const auto& [fi, rec] : cursor_to) {
    index::Cursor cur = c_.cursor_templates.at(fi);
    cur.offset = rec->next_offset;
    cur.line = rec->line;
    if (rec->unterminated) {
      // A last line without its newline may be an export still being
      // written: read it again next time rather than lose its rest.
      cur.offset = rec->offset;
      cur.line = rec->line - 1;
    }
    wb.cursors.emplace_back(CursorKey(c_.sink_id, (*c_.files)[fi]), cur);
  }
  wb.lazy = true;  // its outcomes are durable in the target already: shares the next claims' commit
  if (wb.ops() > 0) writes_.push_back(c_.idx->Submit(std::move(wb)));
  if (!unrecorded.empty()) {
    std::sort(unrecorded.begin(), unrecorded.end());
    std::erase_if(b.claimed_keys, [&](const core::ItemKey& k) {
      return std::binary_search(unrecorded.begin(), unrecorded.end(), k);
    });
  }
  if (c_.on_finalized) c_.on_finalized(b);
}

void Tracker::Reap(bool wait) {
  while (!writes_.empty() &&
         (wait || writes_.front().wait_for(std::chrono::seconds(0)) == std::future_status::ready)) {
    auto r = writes_.front().get();
    writes_.pop_front();
    if (!r.ok() && c_.fail) c_.fail(r.status().WithContext("committing to the index"));
  }
}

void Tracker::Drain(bool give_up, std::chrono::milliseconds grace) {
  std::unique_lock<std::mutex> l(mu_);
  if (give_up) {
    // Retries not yet made end here: what may have arrived stays in doubt
    // (the next run probes it), the rest is released.
    while (!retries_.empty()) {
      Retry r = retries_.top();
      retries_.pop();
      auto it = slots_.find(r.id);
      if (it == slots_.end()) continue;
      const Slot s = it->second;
      DeliveryWork& d = s.batch->work[s.record].deliveries[s.delivery];
      d.error = fmt::format("not retried, the run stopped: {}", d.error);
      d.blocks_cursor = true;
      Settle(s, d.maybe_arrived ? State::kInDoubt : State::kReleased);
    }
    FinalizeReady();
    drain_cv_.wait_for(l, grace, [&] { return sealed_.empty(); });
    // No answer in time: those may have arrived.
    std::vector<uint64_t> ids;
    for (const auto& [id, s] : slots_) {
      if (s.batch->sealed) ids.push_back(id);
    }
    for (uint64_t id : ids) {
      const Slot s = slots_.at(id);
      DeliveryWork& d = s.batch->work[s.record].deliveries[s.delivery];
      d.error = "no answer before the run stopped";
      d.blocks_cursor = true;
      Settle(s, State::kInDoubt);
    }
    FinalizeReady();
  }
  drain_cv_.wait(l, [&] { return sealed_.empty(); });
  c_.idx->FlushLazy();  // no claims will come for the last done records to share
  Reap(true);
}

void Tracker::WaitForIndex() {
  std::lock_guard<std::mutex> l(mu_);
  c_.idx->FlushLazy();
  Reap(true);
}

Counts Tracker::counts() const {
  std::lock_guard<std::mutex> l(mu_);
  return counts_;
}

std::map<std::string, uint64_t> Tracker::deliveries_by_mailbox() const {
  std::lock_guard<std::mutex> l(mu_);
  return {by_mailbox_.begin(), by_mailbox_.end()};
}

std::map<std::string, std::pair<uint64_t, std::string>> Tracker::unmapped_participants() const {
  std::lock_guard<std::mutex> l(mu_);
  return unmapped_;
}

std::map<std::string, std::string> Tracker::stopped_mailboxes() const {
  std::lock_guard<std::mutex> l(mu_);
  return stopped_;
}

size_t Tracker::mailboxes_touched() const {
  std::lock_guard<std::mutex> l(mu_);
  return by_mailbox_.size();
}

Status Tracker::report_error() const {
  std::lock_guard<std::mutex> l(mu_);
  return report_error_;
}

}  // namespace wxa::pipeline
