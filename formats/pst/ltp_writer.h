// LTP layer writer ([MS-PST] 2.3): heap-on-node with page maps and fill-level
// bitmaps, BTHs with index levels, property contexts and table contexts.
//
// Heaps stream: a sealed heap block is written at once, except block 0 (its
// HNHDR is finished last) and a bitmap block (HNBITMAPHDR: its fill levels
// cover the 127 blocks after it) until those are sealed. So a heap holds at
// most three 8 KB blocks in memory whatever its size, plus 8 bytes per block
// for the data tree and one index entry per 3,580-byte BTH leaf. A heap that
// lives long (a folder's contents table, open for the whole volume) can cap
// the blocks it holds (`held_limit`): those take no allocations past it, so it
// holds its open block and two small ones. A block's buffer grows to 8 KB at
// most (not the 16 KB that doubling past 7,680 bytes would give).
// Internal to formats/pst.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/status.h"
#include "formats/pst/ndb_writer.h"
#include "formats/pst/pst_format.h"

namespace wxa::pst {

// Property types used here ([MS-OXCDATA] 2.11.1).
enum PropType : uint16_t {
  kPtInt16 = 0x0002,
  kPtInt32 = 0x0003,
  kPtBool = 0x000B,
  kPtInt64 = 0x0014,
  kPtString = 0x001F,
  kPtTime = 0x0040,
  kPtBinary = 0x0102,
  kPtMvInt32 = 0x1003,
  kPtMvString = 0x101F,
};
// Bytes a fixed-size type takes in a row or a PC value; 0 for variable types.
size_t FixedSize(uint16_t type);

struct Prop {
  uint16_t id = 0;
  uint16_t type = 0;
  std::string value;  // little-endian bytes; strings are UTF-16LE
  // A value already written as a data tree (streamed attachments): the PC
  // stores it as subnode `sub_nid`.
  uint32_t sub_nid = 0;
  uint64_t sub_bid = 0;
  uint64_t sub_bytes = 0;
};
Prop Int32Prop(uint16_t id, int32_t v);
Prop BoolProp(uint16_t id, bool v);
Prop TimeProp(uint16_t id, uint64_t filetime);
Prop StringProp(uint16_t id, std::string_view utf8);
Prop BinaryProp(uint16_t id, std::string value);
const Prop* FindProp(std::span<const Prop> props, uint16_t id);

// A list of properties whose Prop objects (and their values' capacity) are
// reused from one message to the next: a writer appending millions of
// messages then allocates almost nothing per property.
class PropList {
 public:
  void Clear() { n_ = 0; }
  // Clear() and give the reused capacity back (a writer idle for a while).
  void Release() {
    std::vector<Prop>().swap(v_);
    n_ = 0;
  }
  Prop& Add(uint16_t id, uint16_t type);
  void Int32(uint16_t id, int32_t v);
  void Bool(uint16_t id, bool v);
  void Time(uint16_t id, uint64_t filetime);
  void String(uint16_t id, std::string_view utf8);
  void StringIfNotEmpty(uint16_t id, std::string_view utf8) {
    if (!utf8.empty()) String(id, utf8);
  }
  void Binary(uint16_t id, std::string_view bytes);
  std::span<Prop> props() { return {v_.data(), n_}; }

 private:
  std::vector<Prop> v_;
  size_t n_ = 0;
};

class HeapBuilder {
 public:
  HeapBuilder(NdbWriter* ndb, uint8_t client_sig);
  // From now on, block 0 and the bitmap blocks take no allocation that would
  // bring them past `bytes` (header and allocations); a smaller heap block
  // costs a reader nothing (the HIDs say where each allocation is). Set after
  // the allocations that are patched at the end, which must stay in block 0.
  void SetHeldLimit(size_t bytes) { held_limit_ = bytes; }
  // Allocates `data` (at most 3,580 bytes) and returns its HID.
  Result<uint32_t> Allocate(std::string_view data);
  // Overwrites an allocation of the same size; only blocks still in memory.
  Status Patch(uint32_t hid, std::string_view data);
  // An allocation's bytes while its block is in memory (nullopt otherwise).
  std::optional<std::string_view> Peek(uint32_t hid);
  void SetUserRoot(uint32_t hid) { user_root_ = hid; }
  // Bytes the heap's blocks take so far (what PidTagMessageSize counts).
  uint64_t DataBytes() const;
  // Seals and writes the remaining blocks and returns the data tree's BID.
  Result<uint64_t> Finish();
  // Heap memory the builder holds now (its blocks in memory, per-block lists).
  size_t HeldBytes() const;

 private:
  struct Block {
    uint32_t index = 0;
    std::string bytes;              // header + allocations (no page map yet)
    std::vector<uint16_t> starts;   // start offset of each allocation
  };
  static size_t HeaderSize(uint32_t index);
  static bool IsBitmapBlock(uint32_t index) { return index == 8 || (index > 8 && (index - 8) % 128 == 0); }
  static size_t SealedSize(const Block& b);
  // The block as written: its bytes (moved out) with the page map appended.
  static std::string Seal(Block&& b);
  static Block NewBlock(uint32_t index);
  Status SealCurrent();
  // Writes the held bitmap block with the fill levels of its 128 blocks.
  Status WriteBitmap();
  Status WriteSealed(uint32_t index, const std::string& bytes);
  Block* InMemory(uint32_t index);

  NdbWriter* ndb_;
  uint8_t client_sig_;
  size_t held_limit_ = fmt::kMaxBlockData;
  uint32_t user_root_ = 0;
  Block block0_;
  Block current_;            // index > 0 when in use
  bool have_current_ = false;
  std::optional<Block> bitmap_;  // sealed bitmap block waiting for its range
  std::vector<uint8_t> fill_;    // fill level per sealed block
  std::vector<uint64_t> bids_;   // BID per block index (0 until written)
  uint64_t sealed_bytes_ = 0;    // bytes of blocks sealed (written or pending)
};

// Builds a BTH from records appended in ascending key order; leaves are
// allocated as they fill, index levels and the header at Finish.
class BthBuilder {
 public:
  BthBuilder(HeapBuilder* heap, uint8_t cb_key, uint8_t cb_ent);
  // Allocates the 8-byte BTHHEADER now so it gets the first HID.
  Result<uint32_t> Start();
  Status Add(std::string_view key, std::string_view value);
  Result<uint32_t> Finish();  // the header's HID
  uint64_t count() const { return count_; }
  size_t HeldBytes() const;  // heap memory held now (leaves, index entries)
  // After Finish: rewrites the value of `key` in the last leaf (a PC's size
  // property, known only once the heap's layout is final).
  Status PatchLastLeafValue(std::string_view key, std::string_view value);

 private:
  Status FlushLeaf();
  uint32_t last_leaf_hid_ = 0;
  HeapBuilder* heap_;
  uint8_t cb_key_, cb_ent_;
  uint32_t header_hid_ = 0;
  std::string leaf_;
  std::string leaf_first_key_;
  std::string last_key_;
  std::vector<std::pair<std::string, uint32_t>> level1_;  // first key, leaf HID
  uint64_t count_ = 0;
};

// A node's data BID and the subnodes its values and tables live in.
struct NodeData {
  uint64_t bid_data = 0;
  std::vector<SlEntry> subnodes;
  uint64_t bytes = 0;  // on-disk bytes (sum of block cb) of data and subnodes
};

// Allocates subnode NIDs of type NID_TYPE_LTP for one node.
class SubnodeNids {
 public:
  uint32_t Next() { return (next_++ << 5) | 0x1F; }
 private:
  uint32_t next_ = 1;
};

// Builds a property context. `size_prop`, when set, is a PtypInteger32
// property whose value becomes the PC's own bytes plus `extra_bytes`
// (PidTagMessageSize / PidTagAttachSize); it must be in `props`.
// `props` is sorted by id in place.
Result<NodeData> BuildPropertyContext(NdbWriter* ndb, std::span<Prop> props, SubnodeNids* nids,
                                      uint16_t size_prop = 0, uint64_t extra_bytes = 0);

// A table context schema: columns in Outlook's creation order (the order
// iBit follows); the row layout groups 8/4-byte, then 2-, then 1-byte cells.
struct Column {
  uint32_t tag;  // (id << 16) | type
  uint16_t ib = 0;
  uint8_t cb = 0;
  uint8_t ibit = 0;
};
class TableSchema {
 public:
  explicit TableSchema(const std::vector<uint32_t>& tags_in_creation_order);
  const std::vector<Column>& columns() const { return cols_; }
  uint16_t rgib[4] = {};  // TCI_4b, TCI_2b, TCI_1b, TCI_bm (row size)
  uint16_t row_size() const { return rgib[3]; }

 private:
  std::vector<Column> cols_;
};

class TableBuilder {
 public:
  // `long_lived`: the table stays open while many others are built (a
  // folder's contents table): its heap holds small blocks 0 and bitmap
  // blocks (see HeapBuilder's `held_limit`).
  TableBuilder(NdbWriter* ndb, const TableSchema* schema, bool long_lived = false);
  Status Start();
  // Adds a row whose cells come from `props` (absent columns stay absent);
  // LtpRowId/LtpRowVer are set here. Row ids must rise.
  Status AddRow(uint32_t row_id, uint32_t row_ver, std::span<const Prop> props);
  Result<NodeData> Finish();
  uint64_t rows() const { return rows_; }
  // Heap memory held now: the heap's blocks in memory, the current row block,
  // the row index's open leaf and per-block lists.
  size_t HeldBytes() const;

 private:
  Status FlushRowBlock();
  Result<uint32_t> StoreValue(const Prop& p);
  NdbWriter* ndb_;
  const TableSchema* schema_;
  HeapBuilder heap_;
  BthBuilder index_;
  SubnodeNids nids_;
  uint32_t tcinfo_hid_ = 0;
  uint32_t rows_nid_ = 0;      // row matrix subnode, once rows exceed a heap allocation
  std::string rows_buf_;
  size_t rows_per_block_;
  std::vector<uint64_t> row_bids_;
  std::vector<uint16_t> row_sizes_;
  uint64_t rows_ = 0;
  std::vector<SlEntry> subnodes_;
  uint64_t first_block_ = 0;
  bool long_lived_;
};

}  // namespace wxa::pst
