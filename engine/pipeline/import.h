// The import run: WeCom archive -> mapped, rendered, size-checked items ->
// a sink (engine/sinks/sink.h), in phases:
//   open      inputs, target, index (clear errors when the run cannot start)
//   settle    deliveries a stopped run left in doubt, probed in the target
//   plan      fingerprints, rescan, cursors
//   pipeline  oneTBB: read (serial) -> parse/map/index lookup (parallel) ->
//             claim intents (serial) -> render + submit (parallel) -> seal
//             (serial); completions arrive asynchronously and are recorded
//             in order, with per-file low-water-mark cursors
//   summarize report and index totals
// Memory is bounded by batches in the pipeline (max_batches_in_flight) and by
// batches waiting for completions (max_outstanding_batches / _bytes).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "engine/limits/size_policy.h"
#include "engine/pipeline/report.h"
#include "engine/sinks/local_sinks.h"
#include "engine/sinks/sink.h"
#include "formats/core/file.h"

namespace wxa::pipeline {

struct ImportOptions {
  std::string source_dir;        // holds *.jsonl and media/
  std::string directory_csv;     // userid,name,mobile,email
  std::string mapping_csv;       // optional: mobile,mailbox
  std::string mailboxes_file;    // optional: known mailboxes, one per line
  std::string target;            // maildir:DIR, eml:DIR, null:, imap://... (sinks::ParseTarget)
  std::string report_path;       // optional JSON report
  std::string folder = "WeChat Archiver";
  std::string corp = "default";  // enters the item key: keep it stable across runs
  std::string default_region = "CN";
  limits::SizeLimit limit;
  std::string index_dir;         // LMDB index; empty = <target dir>/.wxarchiver
  bool rescan = false;           // ignore cursors: re-read every record (done ones are skipped)
  uint64_t index_map_size = 0;   // initial LMDB map size; 0 = the index default
  sinks::SyncMode sync_mode = sinks::SyncMode::kBatch;  // durability of local deliveries
  bool link_copies = true;  // local deliveries of one item: hard links to one file
  // Makes the sink for the parsed target; null = the local sinks (maildir,
  // eml, null). The CLI passes one that knows remote targets; tests pass
  // fakes that return each failure class.
  std::function<Result<std::unique_ptr<sinks::Sink>>(const sinks::Target&)> make_sink;

  // Transient failures are retried with exponential backoff and jitter,
  // honouring the sink's retry_after, at most max_attempts times per
  // delivery in one run.
  uint32_t max_attempts = 8;
  uint32_t retry_base_ms = 200;
  uint32_t retry_max_ms = 60000;

  // Bounds (STYLE rule 8). 0 threads = all cores.
  size_t threads = 0;
  // One index commit claims a batch, and the deliver stage renders the batch
  // while that commit is in flight: 2,048 records hide a commit's latency on
  // a disk (1 thread to null: 3.6 -> 2.3 s against 1,024, Maildir at 2
  // threads 8.4 -> 7.3 s, for 25-35 MB more peak RSS).
  size_t batch_records = 2048;
  size_t batch_bytes = 4u << 20;
  // A batch of at least batch_media_min_records also ends once its records
  // declare this much media (wecom::DeclaredMediaBytes; a value over the
  // item limit is not counted: that media is rejected unread). Batches are
  // the unit of parallel work, and 2,048 media records (hundreds of MB to
  // hash and encode) in one batch left a 2-thread import of a small media
  // archive on one core.
  uint64_t batch_media_bytes = 32u << 20;
  size_t batch_media_min_records = 256;
  size_t max_batches_in_flight = 0;  // 0 = 2 x threads + 2
  size_t max_open_folders = 0;       // local targets' folder cache; 0 = from the open-file limit
  // Local targets: one durability barrier (syncfs or per-item fsyncs, then the renames) per
  // this many batches, or per interval, whichever comes first; kept well below
  // max_outstanding_batches (sealed batches wait for it).
  size_t barrier_batches = 16;
  uint32_t barrier_interval_ms = 1000;
  // While a batch's claims commit is in flight, each worker renders the
  // batch's records ahead, holding at most about this many rendered bytes
  // (the last item rendered may take it past).
  uint64_t render_ahead_bytes = 16u << 20;
  // The index writer's wait to fill a group commit (IndexOptions::
  // max_commit_delay_us); 0: the index's default. Tests make commits slow with it.
  uint32_t index_commit_delay_us = 0;
  size_t max_outstanding_batches = 32;            // waiting for completions (65,536 records at 2,048 a batch)
  // Sinks that complete at a barrier (local trees), at most this many: when
  // publication is the slow part (thousands of mailboxes on a disk) every
  // sealed batch waits with its records' bookkeeping, about 3 KB a record
  // (measured: 330 MB of heap at 32 batches, 200,000 records into 5,311
  // mailboxes), and more batches waiting do not publish faster. 16 keeps a
  // barrier group publishing while the next one fills.
  size_t max_outstanding_batches_local = 16;
  uint64_t max_outstanding_bytes = 256ull << 20;  // rendered bytes kept until completion

  core::Env* env = nullptr;                 // null = Env::Default()
  const std::atomic<bool>* stop = nullptr;  // set to stop reading (Ctrl-C); the run drains
  // Called from the serial stage at most every progress_interval_ms.
  std::function<void(const Counts&, double elapsed_s)> on_progress;
  uint32_t progress_interval_ms = 500;
  // A run that stops on an error waits this long for the outcomes of
  // deliveries already handed to the target; those still unanswered stay in
  // doubt in the index, for the next run to probe.
  uint32_t drain_grace_ms = 30000;
};

// What the index said and did at the start of the run, and its totals after.
struct IndexSummary {
  std::string dir;
  uint64_t settled_done = 0;      // in-doubt deliveries found in the target
  uint64_t settled_redo = 0;      // in-doubt deliveries not there: delivered again
  uint64_t settled_unknown = 0;   // could not be checked (their mailbox failed): still in doubt
  size_t files_resumed = 0;       // source files continued from a cursor
  size_t files_complete = 0;      // source files already read to the end
  size_t files_restarted = 0;     // cursor no longer matches the file: read again
  std::string rescan_reason;      // why every record is read again, if so
  uint64_t items_done = 0;        // totals in the index after the run
  uint64_t items_unmapped = 0;
  uint64_t items_rejected = 0;
  uint64_t deliveries_done = 0;
  uint64_t deliveries_in_doubt = 0;
  uint64_t deliveries_failed = 0;
  uint64_t commits = 0;
  uint64_t map_trims = 0;  // times the index map was dropped from RSS (IndexOptions::max_mapped_bytes)
};

struct ImportSummary {
  Counts counts;
  IndexSummary index;
  std::map<std::string, uint64_t> deliveries_by_mailbox;  // new deliveries per mailbox
  std::map<std::string, std::string> mailboxes_failed;    // mailbox -> why it was stopped
  std::map<std::string, std::pair<uint64_t, std::string>> unmapped_participants;  // id -> (items, why)
  uint64_t mailboxes_touched = 0;
  // The most rendered bytes one worker held ahead of a claims commit
  // (ImportOptions::render_ahead_bytes bounds it).
  uint64_t render_ahead_peak_bytes = 0;
  size_t source_files = 0;
  double elapsed_s = 0;
  size_t threads = 0;
  bool interrupted = false;   // stopped by options.stop before the end
  Status fatal;               // a sink or index failure that stopped the run (disk full, ...)
  std::string target_kind;
  std::string report_path;
};

// Runs the import. Returns an error only when the run cannot start (missing
// source, unreadable CSV, bad target). A fatal sink error during the run ends
// it early: summary.fatal says why, the report is still written.
Result<ImportSummary> RunImport(const ImportOptions& options);

}  // namespace wxa::pipeline
