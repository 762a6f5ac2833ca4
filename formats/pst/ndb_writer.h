// NDB layer writer ([MS-PST] 2.2): an append-only allocator over the AMap
// grid, data/internal blocks with trailers, data trees (XBLOCK/XXBLOCK),
// subnode trees (SLBLOCK/SIBLOCK), and at Finish the NBT and BBT built
// bottom-up, the AMap/PMap/FMap/FPMap/DList pages and the header.
//
// Memory: per block one 24-byte BBT entry, per node one 24-byte NBT entry, a
// 496-byte bitmap for the current AMap interval, one byte per finished AMap
// interval (for the FMaps), and a write buffer of kWriteBuffer bytes.
// Internal to formats/pst; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/file.h"
#include "formats/core/status.h"

namespace wxa::pst {

struct SlEntry {  // one subnode: SLENTRY
  uint32_t nid = 0;
  uint64_t bid_data = 0;
  uint64_t bid_sub = 0;
};

struct NdbHeaderInfo {
  uint32_t rgnid[32] = {};
  uint32_t unique = 1;
};

class NdbWriter {
 public:
  static constexpr size_t kWriteBuffer = 4 << 20;  // default write buffer

  // Creates `path` (O_EXCL: an existing file is an error). Writes are
  // gathered in a buffer of `write_buffer` bytes.
  static Result<std::unique_ptr<NdbWriter>> Create(const std::string& path, size_t write_buffer = kWriteBuffer);
  ~NdbWriter();

  // Writes one block (cb <= 8176) and returns its new BID. Internal blocks
  // (XBLOCK/SLBLOCK...) get BIDs with bit 0x2 set.
  Result<uint64_t> WriteBlock(std::string_view data, bool internal);
  // One more reference to an already written block (shared template tables).
  void AddRef(uint64_t bid);
  // A data tree over already written data blocks, in order, with their
  // sizes: the BID itself when there is one, else XBLOCK(s) and an XXBLOCK.
  // 0 when `bids` is empty.
  Result<uint64_t> WriteDataTree(const std::vector<uint64_t>& bids, const std::vector<uint16_t>& sizes);
  // Chunks `data` into blocks and returns the data tree's BID (0 when empty).
  Result<uint64_t> WriteData(std::string_view data);
  // A subnode tree (SLBLOCK, or SIBLOCK over SLBLOCKs); entries are sorted by
  // NID here. 0 when empty.
  Result<uint64_t> WriteSubnodeTree(std::vector<SlEntry> entries);
  void AddNode(uint32_t nid, uint64_t bid_data, uint64_t bid_sub, uint32_t parent);

  // Bytes a block of cb data bytes occupies (for size estimates).
  uint64_t bytes_written() const { return cursor_; }
  uint64_t blocks() const { return bbt_.size(); }
  uint64_t nodes() const { return nbt_.size(); }
  // Sum of cb of the blocks written since `first_block` (a blocks() value).
  uint64_t DataBytesSince(uint64_t first_block) const;
  // cb of a block written by this writer.
  uint64_t BlockSize(uint64_t bid) const;
  // Heap bytes held by the index entries (the memory bound's main term).
  uint64_t IndexMemoryBytes() const;
  // Writes out what the write buffer holds and frees it (the next write
  // allocates it again): a sink with thousands of volumes open keeps
  // buffers for the busy ones only. The file's bytes do not change.
  Status ReleaseBuffer();
  size_t buffer_bytes() const { return buf_cap_; }

  // B-trees, maps, DList, header; fsync when `sync`. The writer is spent after.
  Status Finish(const NdbHeaderInfo& info, bool sync);

 private:
  // One per block written. The BID is not stored: the i-th block's is
  // ((i + 1) << 2) | (internal ? 2 : 0). 16 bytes, not 24: thousands of open
  // volumes hold these for every block until they close.
  struct BbtEntry {
    uint64_t ib;
    uint16_t cb;
    uint16_t cref;
    bool internal;
  };
  static uint64_t BidAt(size_t i, const BbtEntry& e) { return (uint64_t{i + 1} << 2) | (e.internal ? 2 : 0); }
  struct NbtEntry {
    uint32_t nid;
    uint32_t parent;
    uint64_t bid_data;
    uint64_t bid_sub;
  };
  struct BRef {
    uint64_t bid;
    uint64_t ib;
  };

  NdbWriter(core::UniqueFd fd, std::string path, size_t write_buffer);
  Result<uint64_t> Allocate(uint64_t size, uint64_t align);
  Status StartInterval(uint64_t i);
  Status FinishInterval();
  Status WriteAt(uint64_t off, std::string_view data);
  Status Flush();
  Status WritePage(uint64_t ib, uint8_t ptype, uint64_t bid, bool signed_page, std::string data);
  template <typename Entry, typename Fill>
  Result<BRef> BuildBTree(const std::vector<Entry>& entries, uint8_t ptype, size_t leaf_cb,
                          Fill fill_leaf);
  Status Fail(Status s) {
    if (error_.ok()) error_ = s;
    return s;
  }

  core::UniqueFd fd_;
  std::string path_;
  Status error_;
  size_t write_buffer_;   // flush threshold of buf_
  // Pending bytes for [buf_off_, buf_off_ + buf_len_): a plain array, so blocks are built in
  // place without the zero fill a std::string resize would do first.
  std::unique_ptr<char[]> buf_;
  size_t buf_len_ = 0, buf_cap_ = 0;
  // Makes [rel, rel + n) of the buffer writable and returns it; a gap between the buffer's end
  // and `rel` is zeroed; the caller writes all n bytes.
  char* BufferAt(uint64_t rel, size_t n);
  uint64_t buf_off_ = 0;
  uint64_t cursor_ = 0;   // next free byte (file size so far)
  uint64_t interval_ = 0;
  std::string bits_;      // AMap bitmap of the current interval (496 bytes)
  std::vector<uint8_t> fmap_;  // longest free run (slots, capped 255) per finished interval
  uint64_t free_bytes_ = 0;
  uint64_t next_bid_index_ = 1;
  uint64_t next_page_bid_ = 1;
  std::vector<BbtEntry> bbt_;  // sorted by construction (BIDs rise)
  std::vector<NbtEntry> nbt_;
};

// Streams one value into data blocks of kMaxBlockData bytes as it arrives.
class DataTreeWriter {
 public:
  explicit DataTreeWriter(NdbWriter* ndb) : ndb_(ndb) {}
  Status Append(std::string_view data);
  Result<uint64_t> Finish();  // BID of the tree, 0 when nothing was written
  uint64_t size() const { return total_; }

 private:
  NdbWriter* ndb_;
  std::string pending_;
  std::vector<uint64_t> bids_;
  std::vector<uint16_t> sizes_;
  uint64_t total_ = 0;
};

}  // namespace wxa::pst
