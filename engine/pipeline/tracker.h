// Internal to engine/pipeline: follows every delivery from Submit to its
// outcome, retries transient failures, and records each batch's outcomes in
// source order: done marks with remote references, failed deliveries with
// their errors, item states, report entries, and the per-file low-water-mark
// cursor (a file's cursor moves only past records whose deliveries are all
// settled for good, so out-of-order completions and retries keep resume
// correct). All index writes of one batch go in one transaction, in order.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/index/index.h"
#include "engine/pipeline/batch.h"
#include "engine/pipeline/report.h"
#include "engine/sinks/sink.h"

namespace wxa::pipeline {

struct TrackerConfig {
  sinks::Sink* sink = nullptr;            // not owned
  index::Index* idx = nullptr;            // not owned
  ReportWriter* report = nullptr;         // not owned; written under the tracker's lock only
  uint16_t sink_id = 0;
  const std::vector<std::string>* files = nullptr;  // source files, by file index
  std::vector<index::Cursor> cursor_templates;      // per file index
  uint32_t max_attempts = 8;
  uint32_t retry_base_ms = 200;
  uint32_t retry_max_ms = 60000;
  size_t max_outstanding_batches = 64;
  uint64_t max_outstanding_bytes = 256ull << 20;
  bool keep_bytes_for_retry = false;      // remote sinks: a retry needs the rendering again
  std::function<void(const Status&)> fail;  // stops the run (sink or index failure)
  // Called once a batch is recorded (in order, under the tracker's lock);
  // its claimed_keys then hold only the items whose record was written
  // (an item left in doubt has none).
  std::function<void(const Batch&)> on_finalized;
  // The item record for an item (source position filled in).
  std::function<index::ItemRecord(const ItemHead&, index::ItemState, std::string)> record_for;
};

class Tracker {
 public:
  explicit Tracker(TrackerConfig c);
  ~Tracker();
  Tracker(const Tracker&) = delete;
  Tracker& operator=(const Tracker&) = delete;

  // Read stage: waits while too many sealed batches wait for completions or
  // too many rendered bytes are held. Never waits once `stopping()` is true.
  void WaitForRoom(const std::function<bool()>& stopping);

  // Whether a mailbox was stopped (kMailboxBad) in this run, and why.
  bool MailboxStopped(const std::string& mailbox, std::string* why) const;
  void StopMailbox(const std::string& mailbox, const std::string& why);

  // Deliver stage: submits rw.claimed (rw.bytes rendered) to the sink, one
  // delivery per mailbox. Mailboxes stopped earlier fail at once. `b` must
  // stay alive until Seal(). `pst_message` (sinks that want one) goes with
  // the first submission of each delivery.
  void SubmitRecord(Batch& b, RecordWork& rw, std::shared_ptr<const pst::Message> pst_message = nullptr);
  // Claim stage: an intent that stays in doubt (its mailbox could not be
  // probed) is a delivery this run cannot settle.
  void AddInDoubt(RecordWork& rw, const std::string& mailbox, const std::string& why);

  // Final stage, in source order: the tracker owns the batch from here and
  // records it once every delivery in it has an outcome.
  void Seal(std::unique_ptr<Batch> b);

  // After the pipeline: waits until every sealed batch is recorded. With
  // `give_up` (the run is stopping), pending retries end now (in doubt or
  // released) and deliveries still unanswered after `grace` stay in doubt.
  void Drain(bool give_up, std::chrono::milliseconds grace);

  // Results, safe to read after Drain (and as a snapshot before).
  Counts counts() const;
  std::map<std::string, uint64_t> deliveries_by_mailbox() const;
  std::map<std::string, std::pair<uint64_t, std::string>> unmapped_participants() const;
  std::map<std::string, std::string> stopped_mailboxes() const;
  size_t mailboxes_touched() const;
  Status report_error() const;
  // The report could not be written (no lock: the pipeline's stop check).
  bool report_failed() const { return report_failed_.load(); }
  // Futures of index writes not reaped yet are waited for here.
  void WaitForIndex();

 private:
  struct Slot {
    Batch* batch;
    uint32_t record;
    uint32_t delivery;
  };
  struct Retry {
    std::chrono::steady_clock::time_point when;
    uint64_t id;
    bool probe_first;
    bool operator>(const Retry& o) const { return when > o.when; }
  };

  void OnCompletion(uint64_t id, sinks::Completion c);
  void OnProbe(uint64_t id, sinks::ProbeResult r);
  // Sets a delivery's final state; caller holds mu_.
  void Settle(const Slot& s, DeliveryWork::State st);
  void FinalizeReady();  // caller holds mu_
  void Finalize(Batch& b);
  void RetryLoop();
  // Caller holds mu_, or owns the record before its first submission (SubmitRecord).
  sinks::Delivery MakeDelivery(const Slot& s) const;
  std::chrono::milliseconds Backoff(uint32_t attempts, std::chrono::milliseconds hint);
  void Reap(bool wait);  // caller holds mu_

  TrackerConfig c_;
  mutable std::mutex mu_;
  std::condition_variable room_cv_;   // WaitForRoom
  std::condition_variable drain_cv_;  // Drain
  std::deque<std::unique_ptr<Batch>> sealed_;        // GUARDED_BY(mu_), source order
  std::unordered_map<uint64_t, Slot> slots_;         // GUARDED_BY(mu_), deliveries not final
  uint64_t next_id_ = 1;                             // GUARDED_BY(mu_)
  uint64_t bytes_held_ = 0;                          // GUARDED_BY(mu_)
  std::map<std::string, std::string> stopped_;       // GUARDED_BY(mu_)
  std::vector<bool> frozen_;                         // GUARDED_BY(mu_), per file: cursor stays
  Counts counts_;                                    // GUARDED_BY(mu_)
  // New deliveries per mailbox (hashed: one lookup per delivery under mu_;
  // sorted when read). Its size is the number of mailboxes touched.
  std::unordered_map<std::string, uint64_t> by_mailbox_;  // GUARDED_BY(mu_)
  std::map<std::string, std::pair<uint64_t, std::string>> unmapped_;  // GUARDED_BY(mu_)
  Status report_error_;                              // GUARDED_BY(mu_)
  std::atomic<bool> report_failed_{false};           // report_error_ is set (read without mu_)
  void ReportFailed(const Status& s) {               // REQUIRES(mu_)
    if (report_error_.ok()) report_error_ = s;
    report_failed_ = true;
  }
  std::deque<std::future<Result<index::WriteResult>>> writes_;  // GUARDED_BY(mu_)
  uint64_t rng_ = 0x9E3779B97F4A7C15ull;             // GUARDED_BY(mu_), jitter

  // Retries: their own thread, so no pipeline worker waits out a backoff.
  std::priority_queue<Retry, std::vector<Retry>, std::greater<Retry>> retries_;  // GUARDED_BY(mu_)
  std::condition_variable retry_cv_;
  bool stopping_ = false;  // GUARDED_BY(mu_)
  std::thread retry_thread_;
};

}  // namespace wxa::pipeline
