#include "engine/index/index.h"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>

#include "engine/index/codec.h"
#include "formats/core/file.h"

namespace wxa::index {

// ---------------------------------------------------------------------------
// Value encodings

const char* ItemStateName(ItemState s) {
  switch (s) {
    case ItemState::kDone: return "done";
    case ItemState::kUnmapped: return "unmapped";
    case ItemState::kRejected: return "rejected";
    case ItemState::kFailed: return "failed";
  }
  return "?";
}

const char* DeliveryStateName(DeliveryState s) {
  switch (s) {
    case DeliveryState::kIntent: return "intent";
    case DeliveryState::kDone: return "done";
    case DeliveryState::kFailed: return "failed";
  }
  return "?";
}

namespace {
uint64_t ZigZag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t UnZigZag(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }
}  // namespace

std::string ItemRecord::Encode() const {
  std::string out;
  out.push_back(static_cast<char>(state));
  PutVarint(&out, ZigZag(msgtime_ms));
  PutVarint(&out, size);
  PutBytes(&out, content_hash);
  PutVarint(&out, file_id);
  PutVarint(&out, offset);
  PutVarint(&out, line);
  PutBytes(&out, reason);
  PutBytes(&out, record_hash);
  return out;
}

std::optional<ItemRecord> ItemRecord::Decode(std::string_view v) {
  Decoder d(v);
  ItemRecord r;
  auto state = d.Fixed(1);
  if (!d.ok()) return std::nullopt;
  r.state = static_cast<ItemState>(state[0]);
  r.msgtime_ms = UnZigZag(d.Varint());
  r.size = d.Varint();
  r.content_hash = std::string(d.Bytes());
  r.file_id = static_cast<uint32_t>(d.Varint());
  r.offset = d.Varint();
  r.line = d.Varint();
  r.reason = std::string(d.Bytes());
  // Records written before record_hash existed end here (same schema: the
  // field is optional at the end).
  if (d.ok() && !d.done()) r.record_hash = std::string(d.Bytes());
  if (!d.ok() || r.state < ItemState::kDone || r.state > ItemState::kFailed) return std::nullopt;
  return r;
}

std::string DeliveryRecord::Encode() const {
  std::string out;
  out.push_back(static_cast<char>(state));
  PutVarint(&out, attempts);
  PutVarint(&out, ZigZag(msgtime_ms));
  PutBytes(&out, remote_ref);
  PutBytes(&out, last_error);
  return out;
}

std::optional<DeliveryRecord> DeliveryRecord::Decode(std::string_view v) {
  Decoder d(v);
  DeliveryRecord r;
  auto state = d.Fixed(1);
  if (!d.ok()) return std::nullopt;
  r.state = static_cast<DeliveryState>(state[0]);
  r.attempts = static_cast<uint32_t>(d.Varint());
  r.msgtime_ms = UnZigZag(d.Varint());
  r.remote_ref = std::string(d.Bytes());
  r.last_error = std::string(d.Bytes());
  if (!d.ok() || r.state < DeliveryState::kIntent || r.state > DeliveryState::kFailed) {
    return std::nullopt;
  }
  return r;
}

std::string Cursor::Encode() const {
  std::string out;
  PutVarint(&out, file_id);
  PutVarint(&out, offset);
  PutVarint(&out, line);
  PutVarint(&out, prefix_len);
  PutBytes(&out, prefix_hash);
  return out;
}

std::optional<Cursor> Cursor::Decode(std::string_view v) {
  Decoder d(v);
  Cursor c;
  c.file_id = static_cast<uint32_t>(d.Varint());
  c.offset = d.Varint();
  c.line = d.Varint();
  c.prefix_len = static_cast<uint32_t>(d.Varint());
  c.prefix_hash = std::string(d.Bytes());
  if (!d.ok()) return std::nullopt;
  return c;
}

std::string DefaultIndexDir(const std::string& target) {
  size_t colon = target.find(':');
  std::string dir = colon == std::string::npos ? target : target.substr(colon + 1);
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return core::JoinPath(dir, ".wxarchiver");
}

// ---------------------------------------------------------------------------
// LMDB plumbing: the only place mdb_*_close/abort appear (STYLE rule 2).

namespace {

// Whether the file system holding `dir` has (next to) no room left.
bool LowOnSpace(const std::string& dir) {
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) != 0) return false;
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize < (4u << 20);
}

// Our own failure code inside a write transaction: a counter or id in meta
// that is not a number (LMDB's codes are negative from -30800 up; errno
// values are positive).
constexpr int kBadMetaNumber = -1;
constexpr int kBadPendingKey = -2;  // RekeyPending: a key of the wrong size

// An LMDB or OS error, naming the index directory: a full disk reads "No
// space left on device (index <dir>)", not a bare code.
Status MdbError(std::string_view what, int rc, std::string_view dir = {}) {
  std::string where = dir.empty() ? std::string() : fmt::format(" (index {})", dir);
  if (rc == kBadMetaNumber) {
    return Status::Corruption(fmt::format("LMDB {}: a counter or id in the index's meta is not a number{}",
                                          what, where));
  }
  if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_BAD_TXN || rc == MDB_INVALID) {
    return Status::Corruption(fmt::format("LMDB {}: {}{}", what, mdb_strerror(rc), where));
  }
  if (rc > 0) {
    // errno from the OS: keep it, so callers can tell ENOSPC from EIO.
    return Status::FromErrno(fmt::format("LMDB {}", what), dir.empty() ? "index" : fmt::format("index {}", dir), rc);
  }
  return Status::IOError(fmt::format("LMDB {}: {}{}", what, mdb_strerror(rc), where));
}

// Meta values are decimal text (readable with mdb_dump). A corrupt one reads
// as 0 rather than throwing across the module boundary.
int64_t ParseNum(std::string_view v) {
  int64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  return (ec == std::errc() && p == v.data() + v.size()) ? n : 0;
}

MDB_val Val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
std::string_view View(const MDB_val& v) { return {static_cast<const char*>(v.mv_data), v.mv_size}; }

class Txn {
 public:
  Txn() = default;
  ~Txn() { Abort(); }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  Status Begin(MDB_env* env, unsigned flags) {
    int rc = mdb_txn_begin(env, nullptr, flags, &t_);
    if (rc != 0) {
      t_ = nullptr;
      return MdbError("begin transaction", rc);
    }
    return Status::Ok();
  }
  int Commit() {
    int rc = mdb_txn_commit(t_);
    t_ = nullptr;  // freed by commit whatever the result
    return rc;
  }
  void Abort() {
    if (t_ != nullptr) mdb_txn_abort(t_);
    t_ = nullptr;
  }
  MDB_txn* get() const { return t_; }

 private:
  MDB_txn* t_ = nullptr;
};

class MdbCursor {
 public:
  ~MdbCursor() {
    if (c_ != nullptr) mdb_cursor_close(c_);
  }
  Status Open(MDB_txn* txn, MDB_dbi dbi) {
    int rc = mdb_cursor_open(txn, dbi, &c_);
    return rc == 0 ? Status::Ok() : MdbError("open cursor", rc);
  }
  int OpenRc(MDB_txn* txn, MDB_dbi dbi) { return mdb_cursor_open(txn, dbi, &c_); }
  MDB_cursor* get() const { return c_; }
  // Iterates every entry: fn(key, value).
  template <typename Fn>
  Status ForEach(Fn&& fn) {
    MDB_val k, v;
    int rc = mdb_cursor_get(c_, &k, &v, MDB_FIRST);
    while (rc == 0) {
      fn(View(k), View(v));
      rc = mdb_cursor_get(c_, &k, &v, MDB_NEXT);
    }
    return rc == MDB_NOTFOUND ? Status::Ok() : MdbError("iterate", rc);
  }

 private:
  MDB_cursor* c_ = nullptr;
};

// Schema 2: item key (16) + sink (2) + mailbox id (4), so that an item's
// deliveries sort right after its own record in `items` (see index.h).
constexpr size_t kItemKeySize = 16;
constexpr size_t kDeliveryKeySize = kItemKeySize + 6;
// A key of `items` or `pending` held without a heap allocation: an item key
// (kItemKeySize) or a delivery key (kDeliveryKeySize).
struct KeyBuf {
  char b[kDeliveryKeySize];
  uint8_t n = 0;
  std::string_view view() const { return {b, n}; }
  static KeyBuf Item(const core::ItemKey& item) {
    KeyBuf k;
    std::memcpy(k.b, item.View().data(), kItemKeySize);
    k.n = kItemKeySize;
    return k;
  }
  static KeyBuf Delivery(uint16_t sink, uint32_t mailbox_id, const core::ItemKey& item) {
    KeyBuf k = Item(item);
    k.b[kItemKeySize] = static_cast<char>(sink >> 8);
    k.b[kItemKeySize + 1] = static_cast<char>(sink & 0xFF);
    for (int i = 0; i < 4; ++i) k.b[kItemKeySize + 2 + i] = static_cast<char>(mailbox_id >> (24 - 8 * i));
    k.n = kDeliveryKeySize;
    return k;
  }
};

std::string DeliveryKeyBytes(uint16_t sink, uint32_t mailbox_id, const core::ItemKey& item) {
  return std::string(KeyBuf::Delivery(sink, mailbox_id, item).view());
}
uint16_t GetU16BE(std::string_view b) {
  return static_cast<uint16_t>((static_cast<unsigned char>(b[0]) << 8) | static_cast<unsigned char>(b[1]));
}
// The parts of a schema 2 delivery key (size kDeliveryKeySize).
void ParseDeliveryKey(std::string_view k, uint16_t* sink, uint32_t* mailbox_id, core::ItemKey* item) {
  std::memcpy(item->bytes.data(), k.data(), kItemKeySize);
  *sink = GetU16BE(k.substr(kItemKeySize, 2));
  *mailbox_id = GetU32BE(k.substr(kItemKeySize + 2, 4));
}

// The positions of keys in ascending byte order (LMDB's default order),
// equal keys in their given order (a write txn applies its puts in this
// order: see Apply). Sorted on the keys' first 8 bytes, big-endian, then on
// the rest: item keys are hashes, so the prefix almost always decides.
std::vector<uint32_t> SortedOrder(const std::vector<KeyBuf>& keys) {
  struct Entry {
    uint64_t prefix;
    uint32_t at;
  };
  std::vector<Entry> e(keys.size());
  for (uint32_t i = 0; i < e.size(); ++i) {
    uint64_t p = 0;
    for (int j = 0; j < 8; ++j) p = (p << 8) | static_cast<unsigned char>(keys[i].b[j]);
    e[i] = {p, i};
  }
  std::sort(e.begin(), e.end(), [&](const Entry& x, const Entry& y) {
    if (x.prefix != y.prefix) return x.prefix < y.prefix;
    const int c = keys[x.at].view().compare(keys[y.at].view());
    return c != 0 ? c < 0 : x.at < y.at;
  });
  std::vector<uint32_t> order(e.size());
  for (size_t i = 0; i < e.size(); ++i) order[i] = e[i].at;
  return order;
}

// The keys a writer has put into `items` since the index was opened (done
// and failed deliveries, item records): a scalable blocked Bloom filter. "No"
// is certain; "maybe" costs the caller one look-up in the index. Each
// level is a table of 64-byte blocks, and a key sets 4 bits in one block of
// the newest level, so a question costs one cache line per level. A level
// takes 8 bits per key; once full, a level twice its size follows, so a
// small run holds 128 KB and 12 million keys (about 3.5 million records:
// 2.4 deliveries and one item record each) about 16 MB in 7 levels. Keys
// never added get "maybe" about 2% of the time at 120,000 keys, 10% at 2.4
// million and 14% at 12 million (each level adds its own share).
class WrittenKeys {
 public:
  void Add(std::string_view key) {
    if (levels_.empty() || levels_.back().added >= levels_.back().capacity) {
      Level l;
      l.blocks.assign(size_t{kFirstBlocks} << levels_.size(), Block{});
      l.capacity = l.blocks.size() * 512 / 8;
      levels_.push_back(std::move(l));
    }
    Level& l = levels_.back();
    const uint64_t h = Hash(key);
    Block& b = l.blocks[(h >> 36) & (l.blocks.size() - 1)];
    for (int i = 0; i < 4; ++i) {
      const uint32_t bit = (h >> (9 * i)) & 511;
      b[bit / 64] |= uint64_t{1} << (bit % 64);
    }
    ++l.added;
  }
  bool MayContain(std::string_view key) const {
    const uint64_t h = Hash(key);
    for (const Level& l : levels_) {
      const Block& b = l.blocks[(h >> 36) & (l.blocks.size() - 1)];
      bool all = true;
      for (int i = 0; i < 4 && all; ++i) {
        const uint32_t bit = (h >> (9 * i)) & 511;
        all = (b[bit / 64] >> (bit % 64)) & 1;
      }
      if (all) return true;
    }
    return false;
  }

 private:
  using Block = std::array<uint64_t, 8>;
  static constexpr size_t kFirstBlocks = 2048;  // 128 KB
  struct Level {
    std::vector<Block> blocks;  // a power of two of them
    uint64_t added = 0, capacity = 0;
  };
  // Item keys are SHA-256 output, but the bits come through a mixer
  // (splitmix64's finalizer) over the whole key all the same, so the
  // filter does not depend on where a key's randomness sits.
  static uint64_t Hash(std::string_view key) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (size_t at = 0; at < key.size(); at += 8) {
      uint64_t w = 0;
      std::memcpy(&w, key.data() + at, std::min<size_t>(8, key.size() - at));
      h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 31;
    }
    h ^= h >> 30;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 27;
    return h;
  }
  std::vector<Level> levels_;
};

}  // namespace

struct Index::Impl {
  IndexOptions options;
  MDB_env* env = nullptr;  // closed in ~Impl
  // Done and failed deliveries live in `items`, after their item's record
  // (kDeliveryKeySize keys); intents only in `pending` (schema 2).
  MDB_dbi meta = 0, items = 0, pending = 0, cursors = 0, mailboxes = 0;
  core::UniqueFd lock_fd;

  // Readers hold it shared while a read txn is open; the writer takes it
  // exclusively to grow the map (LMDB requires no active txn then).
  std::shared_mutex env_mu;

  // Mailbox ids, complete for this index (all allocation goes through the writer).
  std::shared_mutex ids_mu;
  std::unordered_map<std::string, uint32_t> mailbox_ids;   // GUARDED_BY(ids_mu)
  std::unordered_map<uint32_t, std::string> mailbox_names; // GUARDED_BY(ids_mu)
  // Delivery keys put into `items` since open (writer thread only): a claim
  // whose caller read no record of it skips its look-up in `items` unless
  // its key is (maybe) here.
  WrittenKeys written;

  // Writer thread and its queue.
  struct Pending {
    WriteBatch batch;
    std::promise<Result<WriteResult>> promise;
  };
  std::mutex qmu;
  std::condition_variable qcv;
  std::deque<Pending> queue;  // GUARDED_BY(qmu)
  bool stopping = false;      // GUARDED_BY(qmu)
  bool flush_lazy = false;    // GUARDED_BY(qmu): lazy writes no longer wait (FlushLazy)
  std::thread writer;
  std::atomic<uint64_t> commits{0};
  std::atomic<uint64_t> grows{0};
  std::atomic<uint64_t> trims{0};
  std::thread trimmer;  // TrimLoop
  std::mutex trim_mu;
  std::condition_variable trim_cv;
  bool trim_stop = false;  // GUARDED_BY(trim_mu)
  dev_t data_dev = 0;   // data.mdb, to find its mapping in /proc/self/smaps
  ino_t data_ino = 0;
  core::UniqueFd statm_fd;  // /proc/self/statm, read by TrimMapLocked
  uint64_t page_size = 4096;       // the OS's (statm counts in it)
  uint64_t lmdb_page_size = 4096;  // LMDB's (me_last_pgno counts in it)
  MapBaseline shared_base;  // shared resident bytes not the map's
  std::atomic<uintptr_t> map_start{0}, map_end{0};  // the map's range, 0 until found; reset by Grow
  // The first failed commit (writer thread only). Never cleared: a commit
  // that failed after LMDB made it may have published only some of its new
  // mailbox ids, and a later commit would then give such an address a
  // second id (and its deliveries could go out again).
  Status broken;
  // Made at open: what `broken` becomes when the writer runs out of memory
  // and cannot even allocate the text of its error.
  Status writer_out_of_memory;
  std::string dir;

  ~Impl() {
    {
      std::lock_guard<std::mutex> l(qmu);
      stopping = true;
    }
    qcv.notify_all();
    if (writer.joinable()) writer.join();
    {
      std::lock_guard<std::mutex> l(trim_mu);
      trim_stop = true;
    }
    trim_cv.notify_all();
    if (trimmer.joinable()) trimmer.join();
    if (env != nullptr) mdb_env_close(env);
  }

  // Lookups map pages between commits too (a long commit on a slow disk
  // lets the pipeline's reads bring in hundreds of MB): besides the checks
  // after each commit and inside lookup loops, one every
  // options.trim_interval_ms (lookups outside those loops: GetItem, GetMeta).
  void TrimLoop() {
    std::unique_lock<std::mutex> l(trim_mu);
    while (!trim_cv.wait_for(l, std::chrono::milliseconds(options.trim_interval_ms), [&] { return trim_stop; })) {
      l.unlock();
      TrimMap();
      l.lock();
    }
  }

  // Looks every key up among the items in one read transaction: (*out)[i]
  // stays nullopt when keys[i] has no record, else decode(value, &(*out)[i])
  // fills it (the value lives only inside the transaction). dir names the
  // index in errors.
  template <typename T, typename Decode>
  Status ReadItems(const std::vector<core::ItemKey>& keys, std::string_view dir,
                   std::vector<std::optional<T>>* out, Decode decode);

  // Counter deltas of the transaction being built; written to meta before commit.
  struct Delta {
    int64_t items[5] = {};
    int64_t deliveries[4] = {};
  };
  static const char* ItemCounterKey(int s) {
    static const char* k[] = {"", "count/items/done", "count/items/unmapped", "count/items/rejected", "count/items/failed"};
    return k[s];
  }
  static const char* DeliveryCounterKey(int s) {
    static const char* k[] = {"", "count/deliveries/intent", "count/deliveries/done", "count/deliveries/failed"};
    return k[s];
  }
  int ApplyDelta(MDB_txn* t, const Delta& d) {
    auto bump = [&](const char* key, int64_t by) -> int {
      if (by == 0) return 0;
      std::string_view v;
      int64_t cur = 0;
      int rc = Get(t, meta, key, &v);
      if (rc == 0) cur = ParseNum(v);
      else if (rc != MDB_NOTFOUND) return rc;
      return Put(t, meta, key, std::to_string(cur + by));
    };
    int rc;
    for (int i = 1; i <= 4; ++i) {
      if ((rc = bump(ItemCounterKey(i), d.items[i])) != 0) return rc;
    }
    for (int i = 1; i <= 3; ++i) {
      if ((rc = bump(DeliveryCounterKey(i), d.deliveries[i])) != 0) return rc;
    }
    return 0;
  }
  static int StateOf(std::string_view record) {
    return record.empty() ? 0 : static_cast<unsigned char>(record[0]);
  }

  // ---- helpers inside a txn ----
  static int Get(MDB_txn* t, MDB_dbi db, std::string_view key, std::string_view* out) {
    MDB_val k = Val(key), v;
    int rc = mdb_get(t, db, &k, &v);
    if (rc == 0) *out = View(v);
    return rc;
  }
  static int Put(MDB_txn* t, MDB_dbi db, std::string_view key, std::string_view value,
                 unsigned flags = 0) {
    MDB_val k = Val(key), v = Val(value);
    return mdb_put(t, db, &k, &v, flags);
  }
  static int Del(MDB_txn* t, MDB_dbi db, std::string_view key) {
    MDB_val k = Val(key);
    int rc = mdb_del(t, db, &k, nullptr);
    return rc == MDB_NOTFOUND ? 0 : rc;
  }

  // Next value of a counter in meta, inside a write txn.
  int NextId(MDB_txn* t, const char* counter, uint32_t* id) {
    std::string_view v;
    int rc = Get(t, meta, counter, &v);
    uint32_t next = 1;
    if (rc == 0) {
      // An unreadable counter must not hand out an id again.
      const int64_t n = ParseNum(v);
      if (n <= 0 || n > UINT32_MAX) return kBadMetaNumber;
      next = static_cast<uint32_t>(n);
    } else if (rc != MDB_NOTFOUND) {
      return rc;
    }
    *id = next;
    return Put(t, meta, counter, std::to_string(next + 1));
  }

  // Id of a named thing kept in meta under prefix ("sink/", "file/").
  int NamedId(MDB_txn* t, const std::string& prefix, const std::string& name, const char* counter,
              uint32_t* id) {
    std::string key = prefix + name;
    std::string_view v;
    int rc = Get(t, meta, key, &v);
    if (rc == 0) {
      const int64_t n = ParseNum(v);
      if (n <= 0 || n > UINT32_MAX) return kBadMetaNumber;  // ids start at 1
      *id = static_cast<uint32_t>(n);
      return 0;
    }
    if (rc != MDB_NOTFOUND) return rc;
    if ((rc = NextId(t, counter, id)) != 0) return rc;
    return Put(t, meta, key, std::to_string(*id));
  }

  // The mailbox id inside a write txn, allocating it when new. New ids go to
  // *fresh, published to the shared cache only after the commit.
  int MailboxIdTx(MDB_txn* t, const std::string& address,
                  std::unordered_map<std::string, uint32_t>* fresh, uint32_t* id) {
    // No ids_mu: only this thread (the writer) changes mailbox_ids.
    if (auto it = mailbox_ids.find(address); it != mailbox_ids.end()) {
      *id = it->second;
      return 0;
    }
    if (auto it = fresh->find(address); it != fresh->end()) {
      *id = it->second;
      return 0;
    }
    int rc = NextId(t, "next_mailbox_id", id);
    if (rc != 0) return rc;
    std::string idkey = "i";
    PutU32BE(&idkey, *id);
    if ((rc = Put(t, mailboxes, "a" + address, idkey.substr(1))) != 0) return rc;
    if ((rc = Put(t, mailboxes, idkey, address)) != 0) return rc;
    (*fresh)[address] = *id;
    return 0;
  }

  std::optional<uint32_t> CachedMailboxId(const std::string& address) {
    std::shared_lock l(ids_mu);
    auto it = mailbox_ids.find(address);
    if (it == mailbox_ids.end()) return std::nullopt;
    return it->second;
  }

  Status StartUpgradeFrom1();
  int RekeyPending(MDB_txn* t, std::vector<std::string>* keys);
  Status FinishUpgradeFrom1(MDB_dbi old);
  bool ToDelivery(std::string_view k, std::string_view v, DeliveryKey* dk, DeliveryRecord* rec);

  // Drops the delivery's intent from `pending`, if there is one, carrying
  // its attempt count over to *rec (at least 1). One search: the cursor
  // (on `pending`, in this txn) deletes where it found the key. Returns an
  // LMDB rc.
  static int TakeIntent(MDB_cursor* pc, std::string_view key, DeliveryRecord* rec, Delta* delta) {
    MDB_val k = Val(key), v;
    int rc = mdb_cursor_get(pc, &k, &v, MDB_SET);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc != 0) return rc;
    if (auto old = DeliveryRecord::Decode(View(v))) rec->attempts = std::max(rec->attempts, old->attempts);
    delta->deliveries[static_cast<int>(DeliveryState::kIntent)]--;
    return mdb_cursor_del(pc, 0);
  }

  // Every record the writer puts into `items` goes through here (the
  // schema 1 upgrade's moves happen inside Open, before any read). Its key
  // is noted in `written` first: a claim read as absent skips its look-up
  // in `items` only for delivery keys never noted, and the conflict check
  // of a claim reads the item record only when its key was noted (Apply),
  // so a record put any other way could be delivered again. One search for
  // a new record; an existing one is replaced, its state in *replaced (0:
  // none). Returns an LMDB rc.
  int PutInItems(MDB_txn* t, MDB_cursor* ic, std::string_view key, std::string_view enc, int* replaced) {
    written.Add(key);
    *replaced = 0;
    MDB_val k = Val(key), v = Val(enc);
    int rc = mdb_cursor_put(ic, &k, &v, MDB_NOOVERWRITE);
    if (rc != MDB_KEYEXIST) return rc;
    *replaced = StateOf(View(v));
    return Put(t, items, key, enc);
  }

  // Applies a group of batches in one txn. Returns an LMDB rc (0 = ok).
  int Apply(MDB_txn* t, std::vector<Pending*>& group, std::vector<WriteResult>* results,
            std::unordered_map<std::string, uint32_t>* fresh) {
    results->assign(group.size(), WriteResult{});
    Delta delta;
    uint32_t looked = 0;
    MdbCursor pending_cursor, items_cursor;  // see the claims below
    if (int rc = pending_cursor.OpenRc(t, pending); rc != 0) return rc;
    if (int rc = items_cursor.OpenRc(t, items); rc != 0) return rc;
    MDB_cursor* const pc = pending_cursor.get();
    MDB_cursor* const ic = items_cursor.get();
    for (size_t g = 0; g < group.size(); ++g) {
      const WriteBatch& b = group[g]->batch;
      WriteResult& res = (*results)[g];
      int rc;
      // Keys are hashes: in the order given, each search lands on a page far
      // from the last one. Sorted (stably: two claims of one key keep their
      // order), consecutive searches share most of their path, which stays
      // in the CPU cache, and a cursor already on the right leaf page finds
      // the next key without a search from the root (LMDB's mdb_cursor_set).
      // Mailbox ids are allocated in the given order.
      std::vector<KeyBuf> claim_keys(b.claims.size());
      for (size_t i = 0; i < b.claims.size(); ++i) {
        const DeliveryKey& c = b.claims[i];
        uint32_t mid;
        if ((rc = MailboxIdTx(t, c.mailbox, fresh, &mid)) != 0) return rc;
        claim_keys[i] = KeyBuf::Delivery(c.sink, mid, c.item);
      }
      res.claims.assign(b.claims.size(), ClaimResult::kClaimed);
      for (const uint32_t i : SortedOrder(claim_keys)) {
        NoteLookup(&looked);
        const std::string_view key = claim_keys[i].view();
        DeliveryRecord rec;
        rec.state = DeliveryState::kIntent;
        rec.attempts = 1;
        rec.msgtime_ms = b.claims[i].msgtime_ms;
        // A key is never in both tables (a claim moves a failed record out of
        // `items`, done and failed take the intent out of `pending`, each in
        // one txn), so the order of the two looks does not matter: `items`
        // first, then the intent is put where `pending` is searched anyway.
        // A claim whose caller read no record of it, of a key nothing put
        // into `items` since this index was opened, is not there: one search
        // (the put) instead of two.
        const bool look = !b.claims[i].absent_when_read || written.MayContain(key);
        // The item recorded in this run (after the caller's read, maybe:
        // another batch's lazy write) with other content: a conflict, not
        // "done" (GetItemsWithDeliveries compares what it read itself).
        const std::string& hash = b.claims[i].record_hash;
        const std::string_view item = b.claims[i].item.View();
        if (!hash.empty() && written.MayContain(item)) {
          MDB_val ik = Val(item), iv;
          if ((rc = mdb_cursor_get(ic, &ik, &iv, MDB_SET)) == 0) {
            auto stored = ItemRecord::Decode(View(iv));
            if (stored && !stored->record_hash.empty() && stored->record_hash != hash) {
              res.claims[i] = ClaimResult::kConflict;
              continue;
            }
          } else if (rc != MDB_NOTFOUND) {
            return rc;
          }
        }
        MDB_val k = Val(key), v;
        bool in_items = false;  // a failed record (or an unreadable one): moved out below
        int old_state = 0;
        if (!look) {
          rc = MDB_NOTFOUND;
        } else if ((rc = mdb_cursor_get(ic, &k, &v, MDB_SET)) == 0) {
          auto old = DeliveryRecord::Decode(View(v));
          if (old && old->state == DeliveryState::kDone) {
            res.claims[i] = ClaimResult::kDone;
            continue;
          }
          if (old) rec.attempts = old->attempts + 1;  // failed before: try again
          in_items = true;
          old_state = StateOf(View(v));
        } else if (rc != MDB_NOTFOUND) {
          return rc;
        }
        const std::string enc = rec.Encode();
        k = Val(key);
        v = Val(enc);
        rc = mdb_cursor_put(pc, &k, &v, MDB_NOOVERWRITE);
        if (rc == MDB_KEYEXIST) {  // in flight: claimed by another record, or by a stopped run
          res.claims[i] = ClaimResult::kInFlight;
          continue;
        }
        if (rc != 0) return rc;
        if (in_items) {  // the old record leaves `items` (ic is still on it)
          delta.deliveries[old_state]--;
          if ((rc = mdb_cursor_del(ic, 0)) != 0) return rc;
        }
        delta.deliveries[static_cast<int>(DeliveryState::kIntent)]++;
      }
      // Done deliveries and item records in one sweep, in key order: an
      // item's record sorts just before its deliveries (its key is their
      // prefix), so they share a leaf page. Item and delivery keys differ in
      // length, so neither kind's outcome depends on the other's order.
      std::vector<KeyBuf> put_keys(b.done.size() + b.items.size());
      for (size_t i = 0; i < b.done.size(); ++i) {
        const DeliveryKey& d = b.done[i].key;
        uint32_t mid;
        if ((rc = MailboxIdTx(t, d.mailbox, fresh, &mid)) != 0) return rc;
        put_keys[i] = KeyBuf::Delivery(d.sink, mid, d.item);
      }
      for (size_t i = 0; i < b.items.size(); ++i) put_keys[b.done.size() + i] = KeyBuf::Item(b.items[i].first);
      for (const uint32_t i : SortedOrder(put_keys)) {
        NoteLookup(&looked);
        const std::string_view key = put_keys[i].view();
        std::string enc;
        int new_state;
        int64_t* counts;
        if (i < b.done.size()) {
          const DeliveryUpdate& u = b.done[i];
          DeliveryRecord rec;
          rec.state = DeliveryState::kDone;
          rec.attempts = 1;
          rec.msgtime_ms = u.key.msgtime_ms;
          rec.remote_ref = u.remote_ref;
          if ((rc = TakeIntent(pc, key, &rec, &delta)) != 0) return rc;
          enc = rec.Encode();
          new_state = static_cast<int>(DeliveryState::kDone);
          counts = delta.deliveries;
        } else {
          const ItemRecord& rec = b.items[i - b.done.size()].second;
          enc = rec.Encode();
          new_state = static_cast<int>(rec.state);
          counts = delta.items;
        }
        int replaced;  // done twice, an item recorded again
        if ((rc = PutInItems(t, ic, key, enc, &replaced)) != 0) return rc;
        if (replaced != 0) counts[replaced]--;
        counts[new_state]++;
      }
      for (const auto& u : b.failed) {
        NoteLookup(&looked);
        const DeliveryKey& d = u.key;
        uint32_t mid;
        if ((rc = MailboxIdTx(t, d.mailbox, fresh, &mid)) != 0) return rc;
        std::string key = DeliveryKeyBytes(d.sink, mid, d.item);
        DeliveryRecord rec;
        rec.state = DeliveryState::kFailed;
        rec.attempts = 1;
        rec.msgtime_ms = d.msgtime_ms;
        rec.last_error = u.error;
        std::string_view existing;
        if ((rc = Get(t, items, key, &existing)) == 0) {
          auto old = DeliveryRecord::Decode(existing);
          if (old && old->state == DeliveryState::kDone) {  // never undo a done delivery
            DeliveryRecord ignored;
            if ((rc = TakeIntent(pc, key, &ignored, &delta)) != 0) return rc;
            continue;
          }
          if (old) rec.attempts = std::max(1u, old->attempts);
          delta.deliveries[StateOf(existing)]--;
        } else if (rc != MDB_NOTFOUND) {
          return rc;
        }
        if ((rc = TakeIntent(pc, key, &rec, &delta)) != 0) return rc;
        int replaced;  // counted above
        if ((rc = PutInItems(t, ic, key, rec.Encode(), &replaced)) != 0) return rc;
        delta.deliveries[static_cast<int>(DeliveryState::kFailed)]++;
      }
      for (const auto& d : b.released) {
        NoteLookup(&looked);
        std::optional<uint32_t> mid;  // (writer thread: mailbox_ids without ids_mu, as in MailboxIdTx)
        if (auto it = mailbox_ids.find(d.mailbox); it != mailbox_ids.end()) mid = it->second;
        if (!mid) {
          if (auto it = fresh->find(d.mailbox); it != fresh->end()) mid = it->second;
        }
        if (!mid) continue;
        DeliveryRecord ignored;
        if ((rc = TakeIntent(pc, DeliveryKeyBytes(d.sink, *mid, d.item), &ignored, &delta)) != 0) return rc;
      }
      for (const auto& [name, cur] : b.cursors) {
        if ((rc = Put(t, cursors, name, cur.Encode())) != 0) return rc;
      }
      for (const auto& [k, v] : b.meta) {
        if ((rc = Put(t, meta, k, v)) != 0) return rc;
      }
      for (const auto& name : b.sinks) {
        uint32_t id;
        if ((rc = NamedId(t, "sink/", name, "next_sink_id", &id)) != 0) return rc;
        res.sink_ids.push_back(static_cast<uint16_t>(id));
      }
      for (const auto& name : b.files) {
        uint32_t id;
        if ((rc = NamedId(t, "file/", name, "next_file_id", &id)) != 0) return rc;
        res.file_ids.push_back(id);
      }
    }
    return ApplyDelta(t, delta);
  }

  // The map's mapping in /proc/self/smaps (found by data.mdb's device and
  // inode, and only as a shared read-only mapping: LMDB maps it so without
  // MDB_WRITEMAP) and its resident bytes; false if not found.
  bool FindMap(uintptr_t* start, uintptr_t* end, uint64_t* rss) const {
    if (data_ino == 0) return false;
    FILE* f = std::fopen("/proc/self/smaps", "re");
    if (f == nullptr) return false;
    char line[512];
    bool in_map = false, found = false;
    while (std::fgets(line, sizeof line, f) != nullptr) {
      unsigned long lo = 0, hi = 0, off = 0, ino = 0;
      unsigned maj = 0, min = 0;
      char perms[8] = {};
      if (std::sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &off, &maj, &min, &ino) == 7) {
        if (found) break;  // the next mapping: done
        in_map = ino == data_ino && makedev(maj, min) == data_dev && perms[1] == '-' && perms[3] == 's';
        if (in_map) {
          *start = lo;
          *end = hi;
        }
        continue;
      }
      unsigned long kb = 0;
      if (in_map && std::sscanf(line, "Rss: %lu kB", &kb) == 1) {
        *rss = uint64_t{kb} << 10;
        found = true;
      }
    }
    std::fclose(f);
    return found;
  }

  // Drops the map's pages from the process's page tables once more than
  // options.max_mapped_bytes are resident (checked after each commit, every
  // 100 ms, and every kLookupsPerTrimCheck lookups inside reads and commits;
  // concurrent calls are harmless). MADV_DONTNEED on a shared file mapping
  // keeps the data (it is the page cache; readers fault it back in with the
  // same bytes), so readers in other threads are unaffected. The caller holds
  // env_mu shared: the map cannot move meanwhile (Grow takes it exclusively).
  void TrimMapLocked() {
    if (options.max_mapped_bytes == 0) return;
    // Lookups map only pages in use: an index no bigger than the budget
    // needs no reading of the process's memory (mdb_env_info reads the
    // current meta page, no system call). On the 50,000-record text corpus
    // this saved 28,600 reads of /proc/self/statm.
    MDB_envinfo info;
    if (mdb_env_info(env, &info) == 0 && (info.me_last_pgno + 1) * lmdb_page_size <= options.max_mapped_bytes) return;
    // The process's resident shared pages (one short read of an open file),
    // less those it had at open (the program's own files, mostly): the map's
    // share, without walking /proc/self/smaps, which costs as much as the
    // lookups themselves when read this often.
    const uint64_t shared = SharedResidentBytes();
    if (shared == 0 || shared <= shared_base.base() + options.max_mapped_bytes) return;
    uintptr_t start = map_start.load(), end = map_end.load();
    if (start == 0) {  // found once per map (Grow moves it)
      uint64_t rss = 0;
      if (!FindMap(&start, &end, &rss)) return;
      map_start.store(start);
      map_end.store(end);
    }
    if (::madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED) == 0) ++trims;
    shared_base.AfterTrim(SharedResidentBytes(), options.max_mapped_bytes);
  }
  // RssFile + RssShmem of the process (/proc/self/statm), 0 if unknown.
  uint64_t SharedResidentBytes() const {
    if (statm_fd.get() < 0) return 0;
    char buf[128];
    const ssize_t n = ::pread(statm_fd.get(), buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = '\0';
    unsigned long size = 0, resident = 0, shared = 0;
    if (std::sscanf(buf, "%lu %lu %lu", &size, &resident, &shared) != 3) return 0;
    return uint64_t{shared} * page_size;
  }
  void TrimMap() {
    std::shared_lock l(env_mu);
    TrimMapLocked();
  }
  // Each lookup in a big index can map 64 KB or more: on a fault the kernel
  // also maps the neighbouring pages already in the page cache (fault-around,
  // and whole large folios, up to 1 MB per lookup measured on 6.18), so a
  // commit's few thousand random lookups alone map hundreds of MB, faster
  // than any timer can follow. Loops that look keys up call this once per
  // lookup (n counts them; under env_mu shared).
  static constexpr uint32_t kLookupsPerTrimCheck = 16;
  void NoteLookup(uint32_t* n) {
    if (++*n % kLookupsPerTrimCheck == 0) TrimMapLocked();
  }

  Status Grow() {
    std::unique_lock l(env_mu);  // no read txn may be open
    MDB_envinfo info;
    int rc = mdb_env_info(env, &info);
    if (rc != 0) return MdbError("read environment info", rc, dir);
    size_t next = info.me_mapsize * 2;
    rc = mdb_env_set_mapsize(env, next);
    map_start.store(0);  // LMDB maps it again, elsewhere
    map_end.store(0);
    if (rc != 0) return MdbError("grow map", rc, dir);
    ++grows;
    return Status::Ok();
  }

  // The writer thread. Nothing escapes it: an exception (std::bad_alloc in
  // a commit's vectors, records or the claim filter) aborts that commit,
  // which then fails like any failed commit (Status broken): every batch
  // of its group and every later one is answered with the error, so the
  // run stops, instead of std::terminate. The index holds what its commits
  // made (one that failed after LMDB made it among them, as after a crash),
  // and a rerun goes on from there.
  void WriterLoop() {
    while (true) {
      std::vector<Pending> group;
      size_t answered = 0;  // group[0, answered) have their answer
      try {
        if (!WriterStep(&group, &answered)) return;
      } catch (...) {
        if (broken.ok()) broken = WriterExceptionStatus();
        // Copies of a Status share its text; setting a promise's value does
        // not allocate (its slot was made with the promise).
        for (size_t i = answered; i < group.size(); ++i) group[i].promise.set_value(broken);
      }
    }
  }

  // The status for the exception being handled; never throws (when even
  // its text cannot be allocated, the one made at open, shared).
  Status WriterExceptionStatus() const noexcept {
    try {
      try {
        throw;
      } catch (const std::bad_alloc&) {
        return writer_out_of_memory;
      } catch (const std::exception& e) {
        return Status::Aborted(fmt::format("index {}: writer stopped: {}", dir, e.what()));
      }
    } catch (...) {
      return writer_out_of_memory;
    }
  }

  // One group commit: takes what is queued into *group, commits it and
  // answers each batch (*answered counts them). False when the index is
  // closing and nothing is left.
  bool WriterStep(std::vector<Pending>* group_out, size_t* answered) {
    std::vector<Pending>& group = *group_out;
    {
      std::unique_lock<std::mutex> l(qmu);
      qcv.wait(l, [&] { return !queue.empty() || stopping; });
      if (!broken.ok()) {
        // After a failed commit none is made: what waits is answered where
        // it is, which allocates nothing, so this works even when memory is
        // what ran out (taking it into a group first could fail forever).
        while (!queue.empty()) {
          queue.front().promise.set_value(broken);
          queue.pop_front();
        }
        return !stopping;
      }
      if (queue.empty() && stopping) return false;
      size_t ops = 0;
      auto deadline = std::chrono::steady_clock::now() +
                      std::chrono::microseconds(options.max_commit_delay_us);
      // Take what is queued (leveldb's batch group), waiting up to the delay
      // for more while the group is small.
      while (true) {
        while (!queue.empty() && (group.empty() || ops + queue.front().batch.ops() <= options.max_ops_per_commit)) {
          ops += queue.front().batch.ops();
          group.push_back(std::move(queue.front()));
          queue.pop_front();
        }
        if (ops >= options.max_ops_per_commit || options.max_commit_delay_us == 0 || stopping) break;
        if (qcv.wait_until(l, deadline) == std::cv_status::timeout) {
          // Take what arrived exactly at the deadline, then commit.
          while (!queue.empty() && ops + queue.front().batch.ops() <= options.max_ops_per_commit) {
            ops += queue.front().batch.ops();
            group.push_back(std::move(queue.front()));
            queue.pop_front();
          }
          break;
        }
      }
      // Lazy writes alone wait a little for one that is waited for, and
      // share its commit (one durable commit per batch instead of two).
      auto all_lazy = [&] {
        return std::all_of(group.begin(), group.end(), [](const Pending& p) { return p.batch.lazy; });
      };
      if (options.lazy_commit_delay_ms != 0 && ops < options.max_ops_per_commit && all_lazy()) {
        const auto lazy_deadline = std::chrono::steady_clock::now() +
                                   std::chrono::milliseconds(options.lazy_commit_delay_ms);
        while (!stopping && !flush_lazy && all_lazy() && ops < options.max_ops_per_commit) {
          if (queue.empty() && qcv.wait_until(l, lazy_deadline) == std::cv_status::timeout && queue.empty()) break;
          while (!queue.empty() && ops + queue.front().batch.ops() <= options.max_ops_per_commit) {
            ops += queue.front().batch.ops();
            group.push_back(std::move(queue.front()));
            queue.pop_front();
          }
          if (!queue.empty()) break;  // the next one does not fit: commit what is here
          if (std::chrono::steady_clock::now() >= lazy_deadline) break;
        }
      }
    }
    std::vector<Pending*> ptrs;
    for (auto& p : group) ptrs.push_back(&p);
    std::vector<WriteResult> results;
    // After one failed commit, none: the caller stops, and a rerun starts
    // from what the last good commit says.
    Status st = broken.ok() ? CommitGroup(ptrs, &results) : broken;
    if (!st.ok() && broken.ok()) broken = st;
    for (size_t i = 0; i < group.size(); ++i) {
      if (st.ok()) {
        group[i].promise.set_value(std::move(results[i]));
      } else {
        group[i].promise.set_value(st);
      }
      *answered = i + 1;
    }
    return true;
  }

  Status CommitGroup(std::vector<Pending*>& group, std::vector<WriteResult>* results) {
    for (int attempt = 0; attempt < 40; ++attempt) {
      std::unordered_map<std::string, uint32_t> fresh;
      int rc;
      {
        std::shared_lock l(env_mu);
        Txn t;
        WXA_RETURN_IF_ERROR(t.Begin(env, 0).WithContext(fmt::format("index {}", dir)));
        rc = Apply(t.get(), group, results, &fresh);
        if (rc == 0) rc = t.Commit();
      }
      if (rc == 0) {
        ++commits;
        if (options.max_mapped_bytes != 0) TrimMap();
        std::unique_lock l(ids_mu);
        for (auto& [addr, id] : fresh) {
          mailbox_ids[addr] = id;
          mailbox_names[id] = addr;
        }
        return Status::Ok();
      }
      if (rc == MDB_MAP_FULL) {
        WXA_RETURN_IF_ERROR(Grow());
        continue;
      }
      if (rc == EIO && LowOnSpace(dir)) {
        // LMDB turns a short write into EIO (mdb_page_flush); on a full file
        // system that short write was ENOSPC. Say what the user can act on.
        return Status::FromErrno("LMDB commit (reported as an I/O error, and the file system is full)",
                                 fmt::format("index {}", dir), ENOSPC);
      }
      return MdbError("commit", rc, dir);
    }
    return Status::IOError(fmt::format("LMDB commit: the map could not be grown enough (index {})", dir));
  }
};

// Schema 1 kept every delivery in a `deliveries` database keyed sink (2) +
// mailbox id (4) + item key (16), intents there too, and `pending` held the
// intents' keys with empty values. Schema 2 (index.h) keeps done and failed
// deliveries in `items` and intents with their records in `pending`, both
// keyed item first.
//
// The upgrade starts with one transaction (after Open's): `pending` gets the
// new keys (each intent's record follows from `deliveries` below) and the
// version becomes 2, so an older wxarchiver refuses the index from then on.
// Then FinishUpgradeFrom1 moves `deliveries` over in transactions of
// options.upgrade_chunk records, each removing what it moved (a record is in
// exactly one place after any crash, and the next open goes on), and drops
// the empty table. One transaction for all would hold every dirty page in
// memory: 645 MB for a 1,000,000-record index.
namespace {
std::string Schema1KeyToSchema2(std::string_view k1) {
  std::string k2;
  k2.reserve(kDeliveryKeySize);
  k2.append(k1.substr(6, kItemKeySize));
  k2.append(k1.substr(0, 6));
  return k2;
}
}  // namespace

// Inside a write txn: `pending` with schema 2 keys and placeholder records.
// Returns an LMDB rc; a malformed key is kBadPendingKey.
int Index::Impl::RekeyPending(MDB_txn* t, std::vector<std::string>* keys) {
  keys->clear();
  MDB_cursor* c = nullptr;
  int rc = mdb_cursor_open(t, pending, &c);
  if (rc != 0) return rc;
  MDB_val k, v;
  for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    if (k.mv_size != kDeliveryKeySize) rc = kBadPendingKey;
    if (rc != 0) break;
    keys->emplace_back(View(k));
  }
  mdb_cursor_close(c);
  if (rc != MDB_NOTFOUND) return rc;
  if ((rc = mdb_drop(t, pending, 0)) != 0) return rc;
  // An intent's record replaces its placeholder when it is moved; attempts 0
  // marks one that had no record (FinishUpgradeFrom1 counts those).
  const std::string placeholder = DeliveryRecord{DeliveryState::kIntent, 0, 0, "", ""}.Encode();
  for (const auto& key : *keys) {
    if ((rc = Put(t, pending, Schema1KeyToSchema2(key), placeholder)) != 0) return rc;
  }
  return Put(t, meta, "schema_version", std::to_string(kSchemaVersion));
}

// Its own transaction, so that a full map is grown like any other write's.
Status Index::Impl::StartUpgradeFrom1() {
  std::vector<std::string> keys;
  for (int attempt = 0; attempt < 40; ++attempt) {
    int rc;
    {
      std::shared_lock l(env_mu);
      Txn t;
      WXA_RETURN_IF_ERROR(t.Begin(env, 0));
      rc = RekeyPending(t.get(), &keys);
      if (rc == 0) rc = t.Commit();
    }
    if (rc == 0) return Status::Ok();
    if (rc == kBadPendingKey) return Status::Corruption("malformed pending key in a schema 1 index");
    if (rc != MDB_MAP_FULL) return MdbError("rewrite pending", rc, dir);
    WXA_RETURN_IF_ERROR(Grow());
  }
  return Status::IOError(fmt::format("LMDB commit: the map could not be grown enough (index {})", dir));
}

Status Index::Impl::FinishUpgradeFrom1(MDB_dbi old) {
  const size_t chunk = std::max<size_t>(1, options.upgrade_chunk);
  while (true) {
    int rc;
    bool finished = false;
    {
      std::shared_lock l(env_mu);
      Txn t;
      WXA_RETURN_IF_ERROR(t.Begin(env, 0));
      std::vector<std::pair<std::string, std::string>> moving;
      {
        MdbCursor c;
        WXA_RETURN_IF_ERROR(c.Open(t.get(), old));
        MDB_val k, v;
        for (rc = mdb_cursor_get(c.get(), &k, &v, MDB_FIRST); rc == 0 && moving.size() < chunk;
             rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT)) {
          moving.emplace_back(View(k), View(v));
        }
        if (rc != 0 && rc != MDB_NOTFOUND) return MdbError("read deliveries", rc);
      }
      rc = 0;
      uint32_t looked = 0;
      for (const auto& [k, v] : moving) {
        NoteLookup(&looked);
        if (k.size() != kDeliveryKeySize || v.empty()) {
          return Status::Corruption("malformed delivery record in a schema 1 index");
        }
        const bool intent = v[0] == static_cast<char>(DeliveryState::kIntent);
        if ((rc = Put(t.get(), intent ? pending : items, Schema1KeyToSchema2(k), v)) != 0) break;
        if ((rc = Del(t.get(), old, k)) != 0) break;
      }
      if (rc == 0 && moving.empty()) {
        rc = mdb_drop(t.get(), old, 1);
        // Intents whose schema 1 record was missing keep their placeholder
        // (still in doubt: the settle step asks the target) and are counted,
        // so that the counters equal a scan.
        Delta delta;
        MdbCursor c;
        if (rc == 0) rc = c.OpenRc(t.get(), pending);
        MDB_val k, v;
        for (int g = rc == 0 ? mdb_cursor_get(c.get(), &k, &v, MDB_FIRST) : MDB_NOTFOUND; g == 0;
             g = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT)) {
          auto rec = DeliveryRecord::Decode(View(v));
          if (rec && rec->attempts == 0) delta.deliveries[static_cast<int>(DeliveryState::kIntent)]++;
        }
        if (rc == 0) rc = ApplyDelta(t.get(), delta);
        finished = true;
      }
      if (rc == 0) rc = t.Commit();
      if (rc == 0) ++commits;
    }
    if (rc == MDB_MAP_FULL) {
      WXA_RETURN_IF_ERROR(Grow());
      continue;
    }
    if (rc != 0) return MdbError("move deliveries", rc, dir);
    if (finished) return Status::Ok();
    if (options.max_mapped_bytes != 0) TrimMap();
  }
}

Index::Index(std::string dir) : dir_(std::move(dir)), impl_(std::make_unique<Impl>()) {}
Index::~Index() = default;

Result<std::unique_ptr<Index>> Index::Open(const std::string& dir, IndexOptions options) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument(fmt::format("index {} is not a directory", dir));
  }
  if (options.read_only) {
    if (!core::PathExists(core::JoinPath(dir, "data.mdb"))) {
      return Status::NotFound(fmt::format("no wxarchiver index at {}", dir));
    }
  } else {
    WXA_RETURN_IF_ERROR(core::Env::Default()->CreateDirs(dir));
  }
  std::unique_ptr<Index> idx(new Index(dir));
  Impl& im = *idx->impl_;
  im.options = options;
  im.dir = dir;

  if (!options.read_only) {
    // One run per index: LMDB would serialize two writers, but two pipelines
    // claiming and settling the same deliveries would not be exactly-once.
    std::string lock = core::JoinPath(dir, "wxarchiver.lock");
    im.lock_fd = core::UniqueFd(::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!im.lock_fd.valid()) return Status::FromErrno("open", lock, errno);
    if (::flock(im.lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
      return Status::Aborted(fmt::format(
          "another wxarchiver run is using the index {} (wait for it, or stop it)", dir));
    }
  }

  int rc = mdb_env_create(&im.env);
  if (rc != 0) return MdbError("create environment", rc, dir);
  if ((rc = mdb_env_set_maxdbs(im.env, 8)) != 0) return MdbError("set max databases", rc, dir);
  if ((rc = mdb_env_set_mapsize(im.env, options.initial_map_size)) != 0) return MdbError("set map size", rc, dir);
  unsigned flags = MDB_NOTLS | (options.read_only ? MDB_RDONLY : 0);
  rc = mdb_env_open(im.env, dir.c_str(), flags, 0644);
  if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
    return Status::Corruption(fmt::format(
        "{} does not hold an LMDB index (data.mdb: {}); point --index at an empty or "
        "wxarchiver directory",
        dir, mdb_strerror(rc)));
  }
  if (rc != 0) return MdbError("open", rc, dir);
  // Reader slots of processes killed mid-read (kill -9) would pin old pages.
  int dead_readers = 0;
  if ((rc = mdb_reader_check(im.env, &dead_readers)) != 0) return MdbError("check readers", rc, dir);
  {
    mdb_filehandle_t fd = -1;
    struct stat ds {};
    if (mdb_env_get_fd(im.env, &fd) == 0 && ::fstat(fd, &ds) == 0) {
      im.data_dev = ds.st_dev;
      im.data_ino = ds.st_ino;
    }
    im.statm_fd = core::UniqueFd(::open("/proc/self/statm", O_RDONLY | O_CLOEXEC));
    if (const long ps = ::sysconf(_SC_PAGESIZE); ps > 0) im.page_size = static_cast<uint64_t>(ps);
    if (MDB_stat est; mdb_env_stat(im.env, &est) == 0 && est.ms_psize > 0) im.lmdb_page_size = est.ms_psize;
    im.shared_base.Reset(im.SharedResidentBytes());
  }
  {
    // A map smaller than the file (an index grown by an earlier run) is
    // raised by LMDB on open; make sure we are at least at the file size.
    MDB_envinfo info;
    if ((rc = mdb_env_info(im.env, &info)) != 0) return MdbError("read environment info", rc, dir);
    if (info.me_mapsize < options.initial_map_size &&
        (rc = mdb_env_set_mapsize(im.env, options.initial_map_size)) != 0) {
      return MdbError("set map size", rc, dir);
    }
  }

  // Open (or create) the named databases and check the schema.
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(im.env, options.read_only ? MDB_RDONLY : 0));
  MDB_dbi main_db;
  if ((rc = mdb_dbi_open(t.get(), nullptr, 0, &main_db)) != 0) return MdbError("open main db", rc, dir);
  bool empty = true, has_meta = false;
  {
    MdbCursor c;
    WXA_RETURN_IF_ERROR(c.Open(t.get(), main_db));
    WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view) {
      empty = false;
      has_meta |= (k == "meta");
    }));
  }
  if (!empty && !has_meta) {
    return Status::Corruption(fmt::format(
        "{} holds an LMDB database that is not a wxarchiver index", dir));
  }
  if (empty && options.read_only) return Status::NotFound(fmt::format("the index at {} is empty", dir));
  const unsigned create = options.read_only ? 0 : MDB_CREATE;
  struct {
    const char* name;
    MDB_dbi* dbi;
  } dbs[] = {{"meta", &im.meta},       {"items", &im.items},     {"pending", &im.pending},
             {"cursors", &im.cursors}, {"mailboxes", &im.mailboxes}};
  for (auto& d : dbs) {
    rc = mdb_dbi_open(t.get(), d.name, create, d.dbi);
    if (rc == MDB_INCOMPATIBLE) {
      return Status::Corruption(fmt::format("{}: '{}' is not a database: not a wxarchiver index", dir, d.name));
    }
    if (rc == MDB_NOTFOUND && options.read_only) {
      return Status::Corruption(fmt::format("{}: the index has no '{}' database", dir, d.name));
    }
    if (rc != 0) return MdbError(fmt::format("open database {}", d.name), rc);
  }
  bool start_upgrade = false;
  std::string_view ver;
  rc = Impl::Get(t.get(), im.meta, "schema_version", &ver);
  if (rc == MDB_NOTFOUND) {
    if (!empty) return Status::Corruption(fmt::format("{}: the index has no schema version", dir));
    if ((rc = Impl::Put(t.get(), im.meta, "schema_version", std::to_string(kSchemaVersion))) != 0) {
      return MdbError("write schema version", rc, dir);
    }
  } else if (rc != 0) {
    return MdbError("read schema version", rc, dir);
  } else {
    const int64_t n = ParseNum(ver);
    if (n <= 0) {
      return Status::Corruption(fmt::format("{}: unreadable schema version '{}'", dir, ver));
    }
    if (n > kSchemaVersion) {
      return Status::Unsupported(fmt::format(
          "the index at {} has schema {}, newer than this wxarchiver understands ({}); use a "
          "newer wxarchiver",
          dir, n, kSchemaVersion));
    }
    if (n == 1 && !options.read_only) {
      start_upgrade = true;  // after this transaction
    } else if (n < kSchemaVersion) {
      return Status::Unsupported(fmt::format(
          "the index at {} has old schema {} (this wxarchiver writes {}); any import with it "
          "upgrades the index in place",
          dir, n, kSchemaVersion));
    }
  }
  // A schema 1 `deliveries` table not yet moved (this open started the
  // upgrade, or one was interrupted): finished below, before any write.
  MDB_dbi schema1 = 0;
  rc = mdb_dbi_open(t.get(), "deliveries", 0, &schema1);
  const bool upgrading = rc == 0;
  if (rc != 0 && rc != MDB_NOTFOUND) return MdbError("open database deliveries", rc, dir);
  if (upgrading && options.read_only) {
    return Status::Unsupported(fmt::format(
        "the index at {} is half way through its upgrade to schema {}; any import with this "
        "wxarchiver finishes it",
        dir, kSchemaVersion));
  }
  // Load the mailbox ids.
  {
    MdbCursor c;
    WXA_RETURN_IF_ERROR(c.Open(t.get(), im.mailboxes));
    WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
      if (!k.empty() && k[0] == 'a' && v.size() == 4) {
        uint32_t id = GetU32BE(v);
        im.mailbox_ids.emplace(std::string(k.substr(1)), id);
        im.mailbox_names.emplace(id, std::string(k.substr(1)));
      }
    }));
  }
  // Commit even when read-only: database handles opened in a transaction
  // are closed again if it is aborted.
  if ((rc = t.Commit()) != 0) return MdbError("commit", rc, dir);
  if (start_upgrade) {
    WXA_RETURN_IF_ERROR(im.StartUpgradeFrom1().WithContext(
        fmt::format("upgrade the index at {} to schema {}", dir, kSchemaVersion)));
  }
  if (upgrading) {
    WXA_RETURN_IF_ERROR(im.FinishUpgradeFrom1(schema1).WithContext(
        fmt::format("upgrade the index at {} to schema {}", dir, kSchemaVersion)));
  }
  im.writer_out_of_memory = Status::Aborted(fmt::format("index {}: writer stopped: out of memory", dir));
  if (!options.read_only) im.writer = std::thread([&im] { im.WriterLoop(); });
  if (!options.read_only && options.max_mapped_bytes != 0 && options.trim_interval_ms != 0) im.trimmer = std::thread([&im] { im.TrimLoop(); });
  return idx;
}

std::future<Result<WriteResult>> Index::Submit(WriteBatch batch) {
  Impl::Pending p;
  p.batch = std::move(batch);
  auto fut = p.promise.get_future();
  if (impl_->options.read_only) {
    p.promise.set_value(Status::InvalidArgument("the index is open read-only"));
    return fut;
  }
  {
    std::lock_guard<std::mutex> l(impl_->qmu);
    impl_->queue.push_back(std::move(p));
  }
  impl_->qcv.notify_one();
  return fut;
}

Result<WriteResult> Index::Write(WriteBatch batch) { return Submit(std::move(batch)).get(); }

void Index::FlushLazy() {
  {
    std::lock_guard<std::mutex> l(impl_->qmu);
    impl_->flush_lazy = true;
  }
  impl_->qcv.notify_all();
}

uint64_t Index::commits() const { return impl_->commits.load(); }
uint64_t Index::map_trims() const { return impl_->trims.load(); }
uint64_t Index::MappedResidentBytes() const {
  std::shared_lock l(impl_->env_mu);
  uintptr_t start = 0, end = 0;
  uint64_t rss = 0;
  return impl_->FindMap(&start, &end, &rss) ? rss : 0;
}

Result<std::string> Index::GetMeta(const std::string& key) {
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  std::string_view v;
  int rc = Impl::Get(t.get(), impl_->meta, key, &v);
  if (rc == MDB_NOTFOUND) return Status::NotFound(key);
  if (rc != 0) return MdbError("read meta", rc);
  return std::string(v);
}

Status Index::BindCorp(const std::string& corp) {
  auto have = GetMeta("corp");
  if (have.ok()) {
    if (*have != corp) {
      return Status::InvalidArgument(fmt::format(
          "the index at {} was built with --corp '{}', not '{}': item keys would change and "
          "every item would be imported again",
          dir_, *have, corp));
    }
    return Status::Ok();
  }
  if (!have.status().IsNotFound()) return have.status();
  WriteBatch b;
  b.meta.emplace_back("corp", corp);
  auto r = Write(std::move(b));
  return r.ok() ? Status::Ok() : r.status();
}

Result<uint16_t> Index::SinkId(const std::string& target) {
  WriteBatch b;
  b.sinks.push_back(target);
  WXA_ASSIGN_OR_RETURN(WriteResult r, Write(std::move(b)));
  if (r.sink_ids.at(0) == 0) return Status::Unsupported("too many sinks in one index");
  return r.sink_ids[0];
}

Result<uint32_t> Index::FileId(const std::string& name) {
  WriteBatch b;
  b.files.push_back(name);
  WXA_ASSIGN_OR_RETURN(WriteResult r, Write(std::move(b)));
  return r.file_ids.at(0);
}

Result<std::optional<DeliveryRecord>> Index::GetDelivery(const DeliveryKey& k) {
  auto mid = impl_->CachedMailboxId(k.mailbox);
  if (!mid) return std::optional<DeliveryRecord>();
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  const std::string key = DeliveryKeyBytes(k.sink, *mid, k.item);
  std::string_view v;
  int rc = Impl::Get(t.get(), impl_->pending, key, &v);  // an intent
  if (rc == MDB_NOTFOUND) rc = Impl::Get(t.get(), impl_->items, key, &v);
  if (rc == MDB_NOTFOUND) return std::optional<DeliveryRecord>();
  if (rc != 0) return MdbError("read delivery", rc);
  auto rec = DeliveryRecord::Decode(v);
  if (!rec) return Status::Corruption("unreadable delivery record in the index");
  return std::optional<DeliveryRecord>(std::move(*rec));
}

Status Index::GetDeliveries(const std::vector<DeliveryKey>& keys,
                            std::vector<std::optional<DeliveryState>>* out) {
  out->assign(keys.size(), std::nullopt);
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  uint32_t looked = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    impl_->NoteLookup(&looked);
    auto mid = impl_->CachedMailboxId(keys[i].mailbox);
    if (!mid) continue;
    const std::string key = DeliveryKeyBytes(keys[i].sink, *mid, keys[i].item);
    std::string_view v;
    int rc = Impl::Get(t.get(), impl_->pending, key, &v);  // an intent
    if (rc == MDB_NOTFOUND) rc = Impl::Get(t.get(), impl_->items, key, &v);
    if (rc == MDB_NOTFOUND) continue;
    if (rc != 0) return MdbError("read delivery", rc);
    if (v.empty()) return Status::Corruption("empty delivery record in the index");
    (*out)[i] = static_cast<DeliveryState>(v[0]);
  }
  return Status::Ok();
}

template <typename T, typename Decode>
Status Index::Impl::ReadItems(const std::vector<core::ItemKey>& keys, std::string_view dir,
                              std::vector<std::optional<T>>* out, Decode decode) {
  out->assign(keys.size(), std::nullopt);
  if (keys.empty()) return Status::Ok();
  std::shared_lock l(env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(env, MDB_RDONLY));
  uint32_t looked = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    NoteLookup(&looked);
    std::string_view v;
    int rc = Get(t.get(), items, keys[i].View(), &v);
    if (rc == MDB_NOTFOUND) continue;
    if (rc != 0) return MdbError("read item", rc, dir);
    WXA_RETURN_IF_ERROR(decode(v, &(*out)[i]));
  }
  return Status::Ok();
}

Status Index::GetItemStates(const std::vector<core::ItemKey>& keys,
                            std::vector<std::optional<ItemState>>* out) {
  return impl_->ReadItems(keys, dir_, out, [](std::string_view v, std::optional<ItemState>* state) {
    if (v.empty()) return Status::Corruption("empty item record in the index");
    *state = static_cast<ItemState>(v[0]);
    return Status::Ok();
  });
}

Status Index::GetItems(const std::vector<core::ItemKey>& keys, std::vector<std::optional<ItemRecord>>* out) {
  return impl_->ReadItems(keys, dir_, out, [this](std::string_view v, std::optional<ItemRecord>* record) {
    auto rec = ItemRecord::Decode(v);
    if (!rec) return Status::Corruption(fmt::format("unreadable item record in the index {}", dir_));
    *record = std::move(*rec);
    return Status::Ok();
  });
}

Status Index::GetItemsWithDeliveries(uint16_t sink, const std::vector<core::ItemKey>& items,
                                     const std::vector<const std::vector<std::string>*>& mailboxes,
                                     std::vector<std::optional<ItemRecord>>* records,
                                     std::vector<std::optional<DeliveryState>>* states) {
  records->assign(items.size(), std::nullopt);
  states->clear();
  if (mailboxes.size() != items.size()) {
    return Status::InvalidArgument("GetItemsWithDeliveries: one mailbox list (or null) per item");
  }
  if (items.empty()) return Status::Ok();
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  MdbCursor cursor;
  if (int rc = cursor.OpenRc(t.get(), impl_->items); rc != 0) return MdbError("read item", rc, dir_);
  uint32_t looked = 0;
  std::vector<std::pair<uint32_t, DeliveryState>> found;  // this item's done and failed deliveries on sink
  for (size_t i = 0; i < items.size(); ++i) {
    impl_->NoteLookup(&looked);
    const std::string_view item = items[i].View();
    found.clear();
    MDB_val k = Val(item), v;
    int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_SET_RANGE);
    // The item's record (its key exactly), then its deliveries (its key and
    // 6 more bytes), then other items.
    while (rc == 0) {
      const std::string_view key = View(k);
      if (key.size() < kItemKeySize || key.substr(0, kItemKeySize) != item) break;
      if (key.size() == kItemKeySize) {
        auto rec = ItemRecord::Decode(View(v));
        if (!rec) return Status::Corruption(fmt::format("unreadable item record in the index {}", dir_));
        (*records)[i] = std::move(*rec);
      } else if (key.size() == kDeliveryKeySize) {
        uint16_t s;
        uint32_t mid;
        core::ItemKey ignored;
        ParseDeliveryKey(key, &s, &mid, &ignored);
        if (s == sink) {
          if (v.mv_size == 0) return Status::Corruption("empty delivery record in the index");
          found.emplace_back(mid, static_cast<DeliveryState>(static_cast<const char*>(v.mv_data)[0]));
        }
      }
      rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT);
    }
    if (rc != 0 && rc != MDB_NOTFOUND) return MdbError("read item", rc, dir_);
    if (mailboxes[i] == nullptr) continue;
    for (const std::string& mailbox : *mailboxes[i]) {
      std::optional<DeliveryState>& out = states->emplace_back();
      auto mid = impl_->CachedMailboxId(mailbox);
      if (!mid) continue;  // a mailbox the index has never seen
      impl_->NoteLookup(&looked);
      const KeyBuf key = KeyBuf::Delivery(sink, *mid, items[i]);
      std::string_view intent;
      rc = Impl::Get(t.get(), impl_->pending, key.view(), &intent);
      if (rc == 0) {
        if (intent.empty()) return Status::Corruption("empty delivery record in the index");
        out = static_cast<DeliveryState>(intent[0]);
        continue;
      }
      if (rc != MDB_NOTFOUND) return MdbError("read delivery", rc, dir_);
      // In key order: by mailbox id.
      auto at = std::lower_bound(found.begin(), found.end(), std::make_pair(*mid, DeliveryState{}),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (at != found.end() && at->first == *mid) out = at->second;
    }
  }
  return Status::Ok();
}

Result<std::unordered_map<uint32_t, std::string>> Index::FileNames() {
  std::unordered_map<uint32_t, std::string> out;
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  MdbCursor c;
  WXA_RETURN_IF_ERROR(c.Open(t.get(), impl_->meta));
  WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
    if (k.rfind("file/", 0) == 0) out.emplace(static_cast<uint32_t>(ParseNum(v)), std::string(k.substr(5)));
  }));
  return out;
}

Result<std::optional<ItemRecord>> Index::GetItem(const core::ItemKey& k) {
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  std::string_view v;
  int rc = Impl::Get(t.get(), impl_->items, k.View(), &v);
  if (rc == MDB_NOTFOUND) return std::optional<ItemRecord>();
  if (rc != 0) return MdbError("read item", rc);
  auto rec = ItemRecord::Decode(v);
  if (!rec) return Status::Corruption("unreadable item record in the index");
  return std::optional<ItemRecord>(std::move(*rec));
}

Result<std::optional<Cursor>> Index::GetCursor(const std::string& file) {
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  std::string_view v;
  int rc = Impl::Get(t.get(), impl_->cursors, file, &v);
  if (rc == MDB_NOTFOUND) return std::optional<Cursor>();
  if (rc != 0) return MdbError("read cursor", rc);
  auto c = Cursor::Decode(v);
  if (!c) return Status::Corruption("unreadable cursor in the index");
  return std::optional<Cursor>(std::move(*c));
}

// A delivery record from `items` or `pending` as the caller sees it; false
// when the key or the record is malformed.
bool Index::Impl::ToDelivery(std::string_view k, std::string_view v, DeliveryKey* dk, DeliveryRecord* rec) {
  if (k.size() != kDeliveryKeySize) return false;
  auto r = DeliveryRecord::Decode(v);
  if (!r) return false;
  uint32_t mid = 0;
  ParseDeliveryKey(k, &dk->sink, &mid, &dk->item);
  {
    std::shared_lock il(ids_mu);
    auto it = mailbox_names.find(mid);
    dk->mailbox = it != mailbox_names.end() ? it->second : std::string();
  }
  dk->msgtime_ms = r->msgtime_ms;
  *rec = std::move(*r);
  return true;
}

Status Index::ForEachDelivery(
    const std::function<void(const DeliveryKey&, const DeliveryRecord&)>& fn) {
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  Status bad;
  uint32_t looked = 0;
  // Done and failed ones among the items (the item records have shorter
  // keys), then the intents.
  for (MDB_dbi db : {impl_->items, impl_->pending}) {
    MdbCursor c;
    WXA_RETURN_IF_ERROR(c.Open(t.get(), db));
    WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
      impl_->NoteLookup(&looked);
      if (db == impl_->items && k.size() == kItemKeySize) return;
      DeliveryKey dk;
      DeliveryRecord rec;
      if (!impl_->ToDelivery(k, v, &dk, &rec)) {
        if (bad.ok()) bad = Status::Corruption("malformed delivery record in the index");
        return;
      }
      fn(dk, rec);
    }));
  }
  return bad;
}

Result<std::vector<std::pair<DeliveryKey, DeliveryRecord>>> Index::PendingDeliveries() {
  std::vector<std::pair<DeliveryKey, DeliveryRecord>> out;
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  MdbCursor c;
  WXA_RETURN_IF_ERROR(c.Open(t.get(), impl_->pending));
  Status bad;
  uint32_t looked = 0;
  WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
    impl_->NoteLookup(&looked);
    DeliveryKey dk;
    DeliveryRecord rec;
    if (!impl_->ToDelivery(k, v, &dk, &rec)) {
      if (bad.ok()) bad = Status::Corruption("malformed pending delivery in the index");
      return;
    }
    out.emplace_back(std::move(dk), std::move(rec));
  }));
  if (!bad.ok()) return bad;
  return out;
}

Result<Counters> Index::GetCounters() {
  Counters c;
  std::shared_lock l(impl_->env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(impl_->env, MDB_RDONLY));
  std::string_view v;
  for (int i = 1; i <= 4; ++i) {
    if (Impl::Get(t.get(), impl_->meta, Impl::ItemCounterKey(i), &v) == 0) c.items[i] = static_cast<uint64_t>(ParseNum(v));
  }
  for (int i = 1; i <= 3; ++i) {
    if (Impl::Get(t.get(), impl_->meta, Impl::DeliveryCounterKey(i), &v) == 0) c.deliveries[i] = static_cast<uint64_t>(ParseNum(v));
  }
  return c;
}

Result<IndexStats> Index::Stats() {
  IndexStats s;
  Impl& im = *impl_;
  if (im.options.read_only) {
    // A run holds wxarchiver.lock exclusively for its whole life; if a shared
    // lock cannot be had, its intents are in flight, not left by a crash.
    core::UniqueFd fd(::open(core::JoinPath(dir_, "wxarchiver.lock").c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.valid() && ::flock(fd.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) s.run_active = true;
  }
  std::shared_lock l(im.env_mu);
  Txn t;
  WXA_RETURN_IF_ERROR(t.Begin(im.env, MDB_RDONLY));
  uint32_t looked = 0;  // the walks below read the whole index
  std::unordered_map<uint32_t, IndexStats::Mailbox> per_mailbox;
  auto count_delivery = [&](std::string_view k, std::string_view v) {
    if (v.empty() || k.size() != kDeliveryKeySize) return;
    int st = v[0];
    if (st >= 1 && st <= 3) s.deliveries_by_state[st]++;
    auto& m = per_mailbox[GetU32BE(k.substr(kItemKeySize + 2, 4))];
    if (st == static_cast<int>(DeliveryState::kDone)) m.done++;
    if (st == static_cast<int>(DeliveryState::kIntent)) m.intent++;
    if (st == static_cast<int>(DeliveryState::kFailed)) m.failed++;
  };
  {
    MdbCursor c;
    WXA_RETURN_IF_ERROR(c.Open(t.get(), im.items));
    WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
      im.NoteLookup(&looked);
      if (k.size() != kItemKeySize) return count_delivery(k, v);
      if (!v.empty() && v[0] >= 1 && v[0] <= 4) s.items_by_state[static_cast<int>(v[0])]++;
    }));
  }
  {
    MdbCursor c;
    WXA_RETURN_IF_ERROR(c.Open(t.get(), im.pending));
    WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
      im.NoteLookup(&looked);
      count_delivery(k, v);
    }));
  }
  {
    std::shared_lock il(im.ids_mu);
    for (auto& [id, m] : per_mailbox) {
      auto it = im.mailbox_names.find(id);
      m.address = it != im.mailbox_names.end() ? it->second : fmt::format("#{}", id);
      s.mailboxes.push_back(m);
    }
  }
  std::sort(s.mailboxes.begin(), s.mailboxes.end(),
            [](const auto& a, const auto& b) { return a.address < b.address; });
  {
    MDB_stat ms;
    int rc = mdb_stat(t.get(), im.pending, &ms);
    if (rc != 0) return MdbError("stat pending", rc, dir_);
    s.pending = ms.ms_entries;
  }
  {
    MdbCursor c;
    WXA_RETURN_IF_ERROR(c.Open(t.get(), im.cursors));
    WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
      if (auto cur = Cursor::Decode(v)) s.files.push_back({std::string(k), *cur});
    }));
  }
  {
    MdbCursor c;
    WXA_RETURN_IF_ERROR(c.Open(t.get(), im.meta));
    WXA_RETURN_IF_ERROR(c.ForEach([&](std::string_view k, std::string_view v) {
      if (k.rfind("sink/", 0) == 0) {
        s.sinks.push_back({static_cast<uint16_t>(ParseNum(v)), std::string(k.substr(5))});
      }
      for (int i = 1; i <= 4; ++i) {
        if (k == Impl::ItemCounterKey(i)) s.counters.items[i] = static_cast<uint64_t>(ParseNum(v));
      }
      for (int i = 1; i <= 3; ++i) {
        if (k == Impl::DeliveryCounterKey(i)) s.counters.deliveries[i] = static_cast<uint64_t>(ParseNum(v));
      }
    }));
  }
  std::string_view v;
  if (Impl::Get(t.get(), im.meta, "schema_version", &v) == 0) s.schema_version = static_cast<uint32_t>(ParseNum(v));
  if (Impl::Get(t.get(), im.meta, "corp", &v) == 0) s.corp = std::string(v);
  MDB_envinfo info;
  if (int rc = mdb_env_info(im.env, &info); rc != 0) return MdbError("read environment info", rc, dir_);
  MDB_stat est;
  if (int rc = mdb_env_stat(im.env, &est); rc != 0) return MdbError("stat environment", rc, dir_);
  s.map_size = info.me_mapsize;
  s.used_bytes = (info.me_last_pgno + 1) * static_cast<uint64_t>(est.ms_psize);
  uint64_t size = 0;
  if (core::Env::Default()->Stat(core::JoinPath(dir_, "data.mdb"), &size).ok()) s.data_file_bytes = size;
  s.commits = im.commits;
  s.map_grows = im.grows;
  return s;
}

}  // namespace wxa::index
