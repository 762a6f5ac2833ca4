// The LMDB dedup and resume index (ARCHITECTURE section 7): the single source
// of truth for what is done. One environment per run directory, named
// databases:
//   meta        schema version, corp id, sink ids, config fingerprints, counters
//   items       item key (16) -> state, message time, rendered size, content
//               hash, source position, reason; and right after it the item's
//               deliveries in state done or failed:
//               item key (16) + sink (2) + mailbox id (4) -> state, attempts,
//               message time, remote reference, last error
//   pending     deliveries in state intent (same keys and record): what a
//               crash can leave in doubt, found without scanning every delivery
//
// Why deliveries sit with their item (schema 2): keys are hashes, so every
// write to a big table dirties a page of its own, and a commit writes every
// dirty page. An item's record and its deliveries (2.4 on average) now share
// a page, and an intent, written and removed within seconds, touches only
// the small `pending` table: a 1,000,000-record import wrote 17.7 GB of
// pages with schema 1 (sink + mailbox + item keys in a `deliveries` table,
// intents in it too) and 4.9 GB with schema 2. Opening a schema 1 index for
// writing upgrades it (Index::Open; 38 s and 240 MB peak for 2,354,906
// deliveries).
//   cursors     source file name -> file id, resume offset and line, prefix hash
//   mailboxes   "a" + address -> id, "i" + id -> address
//
// Writes go through one writer thread (STYLE rule 6). Callers Submit() a
// WriteBatch; the writer merges whatever is queued into one transaction
// (group commit, bounded by op count and by time), commits, and then answers
// each batch. A full map is grown and the transaction retried. Reads use
// short read transactions from any thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/core/item.h"
#include "formats/core/status.h"

namespace wxa::index {

inline constexpr uint32_t kSchemaVersion = 2;

enum class ItemState : uint8_t {
  kDone = 1,      // every mapped delivery is done
  kUnmapped = 2,  // no participant mapped to a mailbox (retried when the mapping changes)
  kRejected = 3,  // over the size limit (retried when the limit changes)
  kFailed = 4,    // rendering failed
};
const char* ItemStateName(ItemState s);

struct ItemRecord {
  ItemState state = ItemState::kDone;
  int64_t msgtime_ms = 0;
  uint64_t size = 0;                   // rendered bytes (done, rejected)
  std::string content_hash;            // 16 bytes of SHA-256 of the rendered bytes (done)
  uint32_t file_id = 0;                // source position
  uint64_t offset = 0;
  uint64_t line = 0;
  std::string reason;                  // why not done (unmapped, rejected, failed)
  std::string record_hash;             // 16 bytes: what the record said (conflict check); may be empty
  std::string Encode() const;
  static std::optional<ItemRecord> Decode(std::string_view v);
};

enum class DeliveryState : uint8_t { kIntent = 1, kDone = 2, kFailed = 3 };
const char* DeliveryStateName(DeliveryState s);

struct DeliveryRecord {
  DeliveryState state = DeliveryState::kIntent;
  uint32_t attempts = 0;
  int64_t msgtime_ms = 0;    // names the local file (settling intents)
  std::string remote_ref;    // IMAP UIDVALIDITY+UID, Graph id, PST volume; empty for local sinks
  std::string last_error;
  std::string Encode() const;
  static std::optional<DeliveryRecord> Decode(std::string_view v);
};

struct Cursor {
  uint32_t file_id = 0;
  uint64_t offset = 0;       // resume here
  uint64_t line = 0;         // lines before offset
  uint32_t prefix_len = 0;   // bytes hashed at the start of the file (<= 4096)
  std::string prefix_hash;   // 16 bytes: same file, not a replaced one
  std::string Encode() const;
  static std::optional<Cursor> Decode(std::string_view v);
};

// A delivery: which target (sink id), which mailbox (address), which item.
struct DeliveryKey {
  uint16_t sink = 0;
  std::string mailbox;
  core::ItemKey item;
  int64_t msgtime_ms = 0;  // not part of the key: recorded with claims and done marks
  // Claims only, not part of the key: a read through this Index found no
  // record of the delivery (GetItemsWithDeliveries, GetDeliveries). The
  // writer then skips its own look-up in `items` unless it put a record of
  // the key there since the index was opened (maybe after the read); a
  // wrong "true" from a caller whose read did find one would deliver a done
  // item again.
  bool absent_when_read = false;
  // Claims only: what the claiming record said (ItemRecord::record_hash; 16
  // bytes, or empty: no check). An item record this Index put into `items`
  // since it was opened (after the caller's read, maybe) with another
  // non-empty hash makes the claim kConflict: the caller's read could not
  // see it, and a done delivery of the other content must not count as
  // this record's.
  std::string record_hash = {};
};

enum class ClaimResult : uint8_t {
  kClaimed,      // intent recorded durably: deliver it
  kDone,         // already delivered (an earlier run, or earlier in this one)
  kInFlight,     // claimed earlier in this run: another batch is delivering it
  kConflict,     // the item was recorded in this run with other content (record_hash)
};

// A delivery's outcome as the sink reported it.
struct DeliveryUpdate {
  DeliveryKey key;
  std::string remote_ref;  // done: where it is (IMAP UIDVALIDITY:UID, file name, Graph id, volume)
  std::string error;       // failed: the last error, in words
};

// Everything one pipeline step wants recorded, applied atomically.
struct WriteBatch {
  std::vector<DeliveryKey> claims;       // answered in the same order
  std::vector<DeliveryUpdate> done;      // state done with the remote reference
  std::vector<DeliveryUpdate> failed;    // state failed: attempts kept, last error recorded
  std::vector<DeliveryKey> released;     // intents dropped (item rejected after the claim)
  std::vector<std::pair<core::ItemKey, ItemRecord>> items;
  std::vector<std::pair<std::string, Cursor>> cursors;  // by file name
  std::vector<std::pair<std::string, std::string>> meta;
  std::vector<std::string> sinks;      // ids allocated on first use, answered in order
  std::vector<std::string> files;      // source file ids, likewise
  // Nobody waits for it soon (outcomes already durable in the target): the
  // writer may hold it up to IndexOptions::lazy_commit_delay_ms to share the
  // commit of a write that is waited for (a batch's claims), which halves
  // the durable commits of an import.
  bool lazy = false;
  size_t ops() const {
    return claims.size() + done.size() + failed.size() + released.size() + items.size() +
           cursors.size() + meta.size() + sinks.size() + files.size();
  }
};

struct WriteResult {
  std::vector<ClaimResult> claims;
  std::vector<uint16_t> sink_ids;
  std::vector<uint32_t> file_ids;
};

struct IndexOptions {
  uint64_t initial_map_size = 1ull << 30;  // grown by doubling on MDB_MAP_FULL
  // Group commit bounds. A commit's dirty pages are heap memory, about a page
  // per op in a big index (random keys), and LMDB keeps them for reuse:
  // 16,384 ops stay near 100 MB, where 50,000 reached several hundred. A
  // batch's claims and the previous batch's done records (about 12,000 ops
  // at 2,048 records a batch) fit in one commit.
  size_t max_ops_per_commit = 16384;
  uint32_t max_commit_delay_us = 2000;     // how long the writer waits to fill a group
  uint32_t lazy_commit_delay_ms = 500;     // how long a group of lazy writes alone may wait
  bool read_only = false;                  // for status: no writer, no lock
  // Deliveries moved per transaction when a schema 1 index is upgraded (its
  // dirty pages are held in memory until the commit: about 4 KB each).
  size_t upgrade_chunk = 16384;
  // Pages of the index that lookups touched stay mapped into the process,
  // so its RSS would grow with the index (about 1 GB at 5 million records).
  // They are page cache: past this many bytes mapped, the writer drops them
  // from the process's page tables (nothing is lost; the next lookup maps
  // a page again from the cache). 0: never.
  uint64_t max_mapped_bytes = uint64_t{128} << 20;
  // Besides the checks inside reads and commits, one every this many ms
  // (0: none; for tests).
  uint32_t trim_interval_ms = 100;
};

// Totals kept by the writer in meta, in the same transactions as the records
// they count: exact after any crash, and free to read.
struct Counters {
  uint64_t items[5] = {};       // by ItemState
  uint64_t deliveries[4] = {};  // by DeliveryState
};

struct IndexStats {
  uint64_t items_by_state[5] = {};              // index by ItemState
  uint64_t deliveries_by_state[4] = {};         // index by DeliveryState
  uint64_t pending = 0;
  struct Mailbox {
    std::string address;
    uint64_t done = 0;
    uint64_t intent = 0;
    uint64_t failed = 0;
  };
  std::vector<Mailbox> mailboxes;
  struct File {
    std::string name;
    Cursor cursor;
  };
  std::vector<File> files;
  struct Sink {
    uint16_t id = 0;
    std::string target;
  };
  std::vector<Sink> sinks;
  Counters counters;             // the writer's running totals (should equal the scan)
  uint64_t data_file_bytes = 0;  // data.mdb on disk
  uint64_t used_bytes = 0;       // pages in use * page size
  uint64_t map_size = 0;
  uint32_t schema_version = 0;
  std::string corp;
  uint64_t commits = 0;          // group commits by this process
  uint64_t map_grows = 0;
  bool run_active = false;       // another process holds the run lock now
};

// What the map trimming (IndexOptions::max_mapped_bytes) takes as the
// process's file-backed resident bytes that are not the map's: the program's
// own files, at open. A reading taken just after a trim that is still more
// than half the budget above it means other mapped files grew (every check
// would trim then), or that the reading caught a passing moment: in a
// 2-thread Maildir import, 5 of 2,133 readings after a trim were 19-35 MB
// high, and when each such reading raised the base, the map reached 335 MB
// against a 128 MiB budget by 1,000,000 records. So only kRaiseAfter high
// readings in a row raise it, to the lowest of them. Thread-safe.
class MapBaseline {
 public:
  static constexpr uint32_t kRaiseAfter = 8;
  void Reset(uint64_t at_open) {
    std::lock_guard<std::mutex> l(mu_);
    base_.store(at_open, std::memory_order_relaxed);
    streak_ = 0;
    lowest_ = UINT64_MAX;
  }
  uint64_t base() const { return base_.load(std::memory_order_relaxed); }
  // The shared resident bytes read just after a trim.
  void AfterTrim(uint64_t shared_after, uint64_t budget) {
    std::lock_guard<std::mutex> l(mu_);
    if (shared_after <= base_.load(std::memory_order_relaxed) + budget / 2) {
      streak_ = 0;
      lowest_ = UINT64_MAX;
      return;
    }
    lowest_ = std::min(lowest_, shared_after);
    if (++streak_ < kRaiseAfter) return;
    base_.store(lowest_, std::memory_order_relaxed);
    streak_ = 0;
    lowest_ = UINT64_MAX;
  }

 private:
  std::atomic<uint64_t> base_{0};
  std::mutex mu_;
  uint32_t streak_ = 0;         // GUARDED_BY(mu_)
  uint64_t lowest_ = UINT64_MAX;  // GUARDED_BY(mu_)
};

class Index {
 public:
  // Opens or creates the index in `dir` (created if missing). Clear errors for
  // a path that is not a directory, a file that is not LMDB, an LMDB that is
  // not a wxarchiver index, a newer schema, or another run holding the lock.
  static Result<std::unique_ptr<Index>> Open(const std::string& dir, IndexOptions options = {});
  ~Index();
  Index(const Index&) = delete;
  Index& operator=(const Index&) = delete;

  // ---- identity and configuration (call before the run starts) ----
  // The corp id the index was built with; set on first use. A different one
  // is refused: every item key would change and everything would be imported twice.
  Status BindCorp(const std::string& corp);
  // A stable small id for a target ("maildir:/abs/path").
  Result<uint16_t> SinkId(const std::string& target);
  Result<std::string> GetMeta(const std::string& key);  // NotFound when absent

  // ---- reads (any thread) ----
  // The delivery's state, or nullopt when never claimed.
  Result<std::optional<DeliveryRecord>> GetDelivery(const DeliveryKey& k);
  // Several at once in one read transaction (the pipeline's skip path).
  Status GetDeliveries(const std::vector<DeliveryKey>& keys,
                       std::vector<std::optional<DeliveryState>>* out);
  Result<std::optional<ItemRecord>> GetItem(const core::ItemKey& k);
  // States of several items in one read transaction (nullopt: no record).
  Status GetItemStates(const std::vector<core::ItemKey>& keys,
                       std::vector<std::optional<ItemState>>* out);
  // Several item records in one read transaction (nullopt: no record).
  Status GetItems(const std::vector<core::ItemKey>& keys, std::vector<std::optional<ItemRecord>>* out);
  // The plan stage's reads in one read transaction: for each item, its
  // record (nullopt: none), and the state of its delivery on `sink` to each
  // of *mailboxes[i], in order, flattened into *states (nullopt: none). One
  // search of `items` per item, whose record and done and failed deliveries
  // sort together, and one of the small `pending` table per delivery
  // (GetItems and GetDeliveries search `items` once per item and once more
  // per delivery). Answers exactly as those two would.
  Status GetItemsWithDeliveries(uint16_t sink, const std::vector<core::ItemKey>& items,
                                const std::vector<const std::vector<std::string>*>& mailboxes,
                                std::vector<std::optional<ItemRecord>>* records,
                                std::vector<std::optional<DeliveryState>>* states);
  // Source file names by file id (for positions in reports).
  Result<std::unordered_map<uint32_t, std::string>> FileNames();
  Result<std::optional<Cursor>> GetCursor(const std::string& file);
  // Deliveries left in state intent (in doubt after a crash).
  Result<std::vector<std::pair<DeliveryKey, DeliveryRecord>>> PendingDeliveries();
  // File id for a source file name, allocated on first use.
  Result<uint32_t> FileId(const std::string& name);
  // Scans everything (status): counts by state, per mailbox, cursors, sizes.
  Result<IndexStats> Stats();
  Result<Counters> GetCounters();
  // Every delivery record: done and failed ones in key order, then the
  // intents (verification and tools).
  Status ForEachDelivery(
      const std::function<void(const DeliveryKey&, const DeliveryRecord&)>& fn);

  // ---- writes (through the writer thread) ----
  // After a commit fails, every later write fails with the same error (as
  // leveldb does after a failed log write): what is on disk is the last
  // good commit, and nothing may be built on the lost one.
  std::future<Result<WriteResult>> Submit(WriteBatch batch);
  // Submit and wait.
  Result<WriteResult> Write(WriteBatch batch);
  // Lazy writes no longer wait for a write to share a commit with (the end
  // of a run: none will come).
  void FlushLazy();

  const std::string& dir() const { return dir_; }
  // Group commits made by this process so far.
  uint64_t commits() const;
  // Bytes of the index's map resident in this process (its Rss in
  // /proc/self/smaps), and how often the writer dropped them.
  uint64_t MappedResidentBytes() const;
  uint64_t map_trims() const;

 private:
  struct Impl;
  explicit Index(std::string dir);
  std::string dir_;
  std::unique_ptr<Impl> impl_;
};

// The default index directory for a target: <target dir>/.wxarchiver
std::string DefaultIndexDir(const std::string& target);

}  // namespace wxa::index
