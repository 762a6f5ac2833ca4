#include "formats/pst/ltp_writer.h"

#include <algorithm>
#include <cstring>

#include "formats/pst/pst_format.h"

namespace wxa::pst {

using namespace fmt;  // NOLINT

size_t FixedSize(uint16_t type) {
  switch (type) {
    case kPtBool: return 1;
    case kPtInt16: return 2;
    case kPtInt32: return 4;
    case 0x0004: return 4;  // float
    case kPtInt64: case kPtTime: case 0x0005: case 0x0006: case 0x0007: return 8;
    default: return 0;
  }
}

Prop Int32Prop(uint16_t id, int32_t v) {
  Prop p{id, kPtInt32, {}};
  Append32(p.value, static_cast<uint32_t>(v));
  return p;
}
Prop BoolProp(uint16_t id, bool v) { return Prop{id, kPtBool, std::string(1, v ? '\1' : '\0')}; }
Prop TimeProp(uint16_t id, uint64_t ft) {
  Prop p{id, kPtTime, {}};
  Append64(p.value, ft);
  return p;
}
Prop StringProp(uint16_t id, std::string_view utf8) { return Prop{id, kPtString, Utf8ToUtf16(utf8)}; }
Prop BinaryProp(uint16_t id, std::string value) { return Prop{id, kPtBinary, std::move(value)}; }
const Prop* FindProp(std::span<const Prop> props, uint16_t id) {
  for (const Prop& p : props) if (p.id == id) return &p;
  return nullptr;
}

Prop& PropList::Add(uint16_t id, uint16_t type) {
  if (n_ == v_.size()) v_.emplace_back();
  Prop& p = v_[n_++];
  p.id = id;
  p.type = type;
  p.value.clear();
  p.sub_nid = 0;
  p.sub_bid = 0;
  p.sub_bytes = 0;
  return p;
}
void PropList::Int32(uint16_t id, int32_t v) { Append32(Add(id, kPtInt32).value, static_cast<uint32_t>(v)); }
void PropList::Bool(uint16_t id, bool v) { Add(id, kPtBool).value.push_back(v ? '\1' : '\0'); }
void PropList::Time(uint16_t id, uint64_t ft) { Append64(Add(id, kPtTime).value, ft); }
void PropList::String(uint16_t id, std::string_view utf8) { AppendUtf16(utf8, &Add(id, kPtString).value); }
void PropList::Binary(uint16_t id, std::string_view bytes) { Add(id, kPtBinary).value.append(bytes); }

namespace {

constexpr size_t kHnMaxBlock = kMaxBlockData;
constexpr size_t kMaxAllocsPerBlock = 2047;  // hidIndex has 11 bits

// [MS-PST] 2.3.1.5: free space -> fill level.
uint8_t FillLevel(size_t free_bytes) {
  static const size_t kThresholds[] = {3584, 2560, 2048, 1792, 1536, 1280, 1024, 768, 512, 256, 128, 64, 32, 16, 8};
  for (uint8_t i = 0; i < 15; ++i) if (free_bytes >= kThresholds[i]) return i;
  return 0xF;
}
// Makes room for `add` more bytes in a buffer that never holds more than
// `limit`: doubling, but never past `limit` (doubling from 7,680 bytes would
// reserve 15,360 for a block of at most 8,176). libstdc++'s reserve() doubles
// too, so the bytes move to a string reserved from empty (which is exact).
void GrowWithin(std::string& s, size_t add, size_t limit) {
  size_t need = s.size() + add;
  if (need <= s.capacity()) return;
  std::string t;
  t.reserve(std::max(need, std::min(limit, 2 * s.capacity())));
  t.append(s);
  s.swap(t);
}

void SetNibble(char* base, size_t i, uint8_t v) {
  auto& b = reinterpret_cast<uint8_t&>(base[i / 2]);
  if (i % 2 == 0) b = static_cast<uint8_t>((b & 0xF0) | v);
  else b = static_cast<uint8_t>((b & 0x0F) | (v << 4));
}

}  // namespace

HeapBuilder::HeapBuilder(NdbWriter* ndb, uint8_t client_sig)
    : ndb_(ndb), client_sig_(client_sig), block0_(NewBlock(0)) {}

size_t HeapBuilder::HeaderSize(uint32_t index) {
  if (index == 0) return 12;               // HNHDR
  return IsBitmapBlock(index) ? 66 : 2;    // HNBITMAPHDR / HNPAGEHDR
}

size_t HeapBuilder::SealedSize(const Block& b) {
  return ((b.bytes.size() + 1) & ~size_t{1}) + 4 + 2 * (b.starts.size() + 1);
}

HeapBuilder::Block HeapBuilder::NewBlock(uint32_t index) {
  Block b;
  b.index = index;
  // Not reserved to its full kHnMaxBlock: a volume's contents table keeps
  // its first and current blocks while the volume is open, and a sink with
  // thousands of volumes open pays 8 KB per reserved block per volume.
  b.bytes.assign(HeaderSize(index), '\0');
  return b;
}

std::string HeapBuilder::Seal(Block&& b) {
  const auto end = static_cast<uint16_t>(b.bytes.size());
  std::string s = std::move(b.bytes);
  if (s.size() % 2) s.push_back('\0');
  uint16_t ib_hnpm = static_cast<uint16_t>(s.size());
  Append16(s, static_cast<uint16_t>(b.starts.size()));
  Append16(s, 0);  // cFree
  for (uint16_t st : b.starts) Append16(s, st);
  Append16(s, end);
  Put16(s.data(), ib_hnpm);
  return s;
}

HeapBuilder::Block* HeapBuilder::InMemory(uint32_t index) {
  if (index == 0) return &block0_;
  if (have_current_ && current_.index == index) return &current_;
  if (bitmap_ && bitmap_->index == index) return &*bitmap_;
  return nullptr;
}

Status HeapBuilder::WriteSealed(uint32_t index, const std::string& bytes) {
  WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb_->WriteBlock(bytes, false));
  if (bids_.size() <= index) bids_.resize(index + 1, 0);
  bids_[index] = bid;
  return Status::Ok();
}

Status HeapBuilder::SealCurrent() {
  uint32_t idx = current_.index;
  size_t size = SealedSize(current_);
  if (fill_.size() <= idx) fill_.resize(idx + 1, 0);
  fill_[idx] = FillLevel(kHnMaxBlock - size);
  sealed_bytes_ += size;
  if (IsBitmapBlock(idx)) {
    bitmap_ = std::move(current_);
  } else {
    WXA_RETURN_IF_ERROR(WriteSealed(idx, Seal(std::move(current_))));
  }
  have_current_ = false;
  current_ = Block{};
  if (bitmap_ && idx == bitmap_->index + 127) WXA_RETURN_IF_ERROR(WriteBitmap());
  return Status::Ok();
}

Status HeapBuilder::WriteBitmap() {
  const uint32_t bi = bitmap_->index;
  std::string s = Seal(std::move(*bitmap_));
  bitmap_.reset();
  for (uint32_t k = 0; k < 128; ++k) SetNibble(s.data() + 2, k, bi + k < fill_.size() ? fill_[bi + k] : 0);
  return WriteSealed(bi, s);
}

Result<uint32_t> HeapBuilder::Allocate(std::string_view data) {
  if (data.size() > kMaxHeapAlloc) return Status::InvalidArgument("pst: heap allocation over 3580 bytes");
  Block* open = have_current_ ? &current_ : &block0_;
  auto fits = [&](const Block& b) {
    size_t end = ((b.bytes.size() + data.size() + 1) & ~size_t{1}) + 4 + 2 * (b.starts.size() + 2);
    // A held block takes at least one allocation (a block without any is
    // left to readers' mercy) and none past the held limit.
    if ((b.index == 0 || IsBitmapBlock(b.index)) && !b.starts.empty() && b.bytes.size() + data.size() > held_limit_) return false;
    return end <= kHnMaxBlock && b.starts.size() + 1 <= kMaxAllocsPerBlock;
  };
  if (!fits(*open)) {
    uint32_t next = have_current_ ? current_.index + 1 : 1;
    if (have_current_) WXA_RETURN_IF_ERROR(SealCurrent());
    if (next > 0xFFFF) return Status::TooLarge("pst: heap over 65535 blocks");
    current_ = NewBlock(next);
    have_current_ = true;
    open = &current_;
  }
  open->starts.push_back(static_cast<uint16_t>(open->bytes.size()));
  GrowWithin(open->bytes, data.size(), kHnMaxBlock);
  open->bytes.append(data);
  return static_cast<uint32_t>((open->index << 16) | (open->starts.size() << 5));
}

std::optional<std::string_view> HeapBuilder::Peek(uint32_t hid) {
  Block* b = InMemory(hid >> 16);
  size_t a = (hid >> 5) & 0x7FF;
  if (b == nullptr || a == 0 || a > b->starts.size()) return std::nullopt;
  size_t start = b->starts[a - 1];
  size_t end = a < b->starts.size() ? b->starts[a] : b->bytes.size();
  return std::string_view(b->bytes).substr(start, end - start);
}

Status HeapBuilder::Patch(uint32_t hid, std::string_view data) {
  std::optional<std::string_view> at = Peek(hid);
  if (!at) return Status::InvalidArgument("pst: heap patch out of reach");
  if (at->size() != data.size()) return Status::InvalidArgument("pst: heap patch size mismatch");
  std::memcpy(const_cast<char*>(at->data()), data.data(), data.size());
  return Status::Ok();
}

uint64_t HeapBuilder::DataBytes() const {
  return sealed_bytes_ + SealedSize(block0_) + (have_current_ ? SealedSize(current_) : 0);
}

size_t HeapBuilder::HeldBytes() const {
  auto block = [](const Block& b) { return b.bytes.capacity() + 2 * b.starts.capacity(); };
  size_t n = block(block0_) + block(current_) + fill_.capacity() + 8 * bids_.capacity();
  if (bitmap_) n += block(*bitmap_);
  return n;
}

Result<uint64_t> HeapBuilder::Finish() {
  if (have_current_) WXA_RETURN_IF_ERROR(SealCurrent());
  if (bitmap_) WXA_RETURN_IF_ERROR(WriteBitmap());
  if (fill_.empty()) fill_.resize(1, 0);
  fill_[0] = FillLevel(kHnMaxBlock - SealedSize(block0_));
  std::string s = Seal(std::move(block0_));
  s[2] = static_cast<char>(0xEC);
  s[3] = static_cast<char>(client_sig_);
  Put32(s.data() + 4, user_root_);
  Put32(s.data() + 8, 0);
  for (uint32_t k = 0; k < 8 && k < fill_.size(); ++k) SetNibble(s.data() + 8, k, fill_[k]);
  WXA_RETURN_IF_ERROR(WriteSealed(0, s));
  std::vector<uint16_t> sizes;
  sizes.reserve(bids_.size());
  // Sizes are needed per block for lcbTotal; recompute them from fill-free
  // bookkeeping: every sealed block's size was summed, so ask the BBT.
  for (uint64_t bid : bids_) sizes.push_back(static_cast<uint16_t>(ndb_->BlockSize(bid)));
  return ndb_->WriteDataTree(bids_, sizes);
}

BthBuilder::BthBuilder(HeapBuilder* heap, uint8_t cb_key, uint8_t cb_ent)
    : heap_(heap), cb_key_(cb_key), cb_ent_(cb_ent) {}

Result<uint32_t> BthBuilder::Start() {
  WXA_ASSIGN_OR_RETURN(header_hid_, heap_->Allocate(std::string(8, '\0')));
  return header_hid_;
}

namespace {
bool KeyLess(std::string_view a, std::string_view b) {
  // Keys are little-endian integers (or 16-byte GUIDs): compare from the top byte.
  for (size_t i = a.size(); i-- > 0;) {
    auto x = static_cast<uint8_t>(a[i]), y = static_cast<uint8_t>(b[i]);
    if (x != y) return x < y;
  }
  return false;
}
}  // namespace

Status BthBuilder::Add(std::string_view key, std::string_view value) {
  if (key.size() != cb_key_ || value.size() != cb_ent_) return Status::InvalidArgument("pst: BTH record size");
  if (count_ > 0 && !KeyLess(last_key_, key)) return Status::InvalidArgument("pst: BTH keys must rise");
  if (leaf_.empty()) leaf_first_key_.assign(key);
  GrowWithin(leaf_, key.size() + value.size(), kMaxHeapAlloc);
  leaf_.append(key);
  leaf_.append(value);
  last_key_.assign(key);
  ++count_;
  if (leaf_.size() + cb_key_ + cb_ent_ > kMaxHeapAlloc) return FlushLeaf();
  return Status::Ok();
}

size_t BthBuilder::HeldBytes() const {
  return leaf_.capacity() + level1_.capacity() * sizeof(level1_[0]);
}

Status BthBuilder::FlushLeaf() {
  if (leaf_.empty()) return Status::Ok();
  WXA_ASSIGN_OR_RETURN(uint32_t hid, heap_->Allocate(leaf_));
  level1_.emplace_back(leaf_first_key_, hid);
  last_leaf_hid_ = hid;
  leaf_.clear();
  return Status::Ok();
}

Status BthBuilder::PatchLastLeafValue(std::string_view key, std::string_view value) {
  // The leaf is read back from its heap block (a copy kept here would cost a
  // long-lived table 3.5 KB for a patch only property contexts make).
  std::optional<std::string_view> at = heap_->Peek(last_leaf_hid_);
  if (last_leaf_hid_ == 0 || !at) return Status::InvalidArgument("pst: BTH last leaf out of reach");
  std::string leaf(*at);
  size_t rec = cb_key_ + cb_ent_;
  for (size_t off = 0; off + rec <= leaf.size(); off += rec) {
    if (leaf.compare(off, cb_key_, key) == 0) {
      leaf.replace(off + cb_key_, cb_ent_, value);
      return heap_->Patch(last_leaf_hid_, leaf);
    }
  }
  return Status::NotFound("pst: BTH key not in last leaf");
}

Result<uint32_t> BthBuilder::Finish() {
  WXA_RETURN_IF_ERROR(FlushLeaf());
  uint8_t levels = 0;
  uint32_t root = 0;
  std::vector<std::pair<std::string, uint32_t>> level = std::move(level1_);
  size_t per_index = kMaxHeapAlloc / (cb_key_ + 4);
  while (level.size() > 1) {
    ++levels;
    std::vector<std::pair<std::string, uint32_t>> up;
    for (size_t i = 0; i < level.size(); i += per_index) {
      size_t n = std::min(per_index, level.size() - i);
      std::string node;
      for (size_t k = 0; k < n; ++k) {
        node.append(level[i + k].first);
        Append32(node, level[i + k].second);
      }
      WXA_ASSIGN_OR_RETURN(uint32_t hid, heap_->Allocate(node));
      up.emplace_back(level[i].first, hid);
    }
    level = std::move(up);
  }
  if (!level.empty()) root = level[0].second;
  std::string h;
  Append8(h, 0xB5);
  Append8(h, cb_key_);
  Append8(h, cb_ent_);
  Append8(h, levels);
  Append32(h, root);
  WXA_RETURN_IF_ERROR(heap_->Patch(header_hid_, h));
  return header_hid_;
}

Result<NodeData> BuildPropertyContext(NdbWriter* ndb, std::span<Prop> props, SubnodeNids* nids,
                                      uint16_t size_prop, uint64_t extra_bytes) {
  std::sort(props.begin(), props.end(), [](const Prop& a, const Prop& b) { return a.id < b.id; });
  for (size_t i = 1; i < props.size(); ++i) {
    if (props[i].id == props[i - 1].id) return Status::InvalidArgument("pst: duplicate property");
  }
  NodeData out;
  HeapBuilder heap(ndb, 0xBC);
  BthBuilder bth(&heap, 2, 6);
  WXA_ASSIGN_OR_RETURN(uint32_t hdr, bth.Start());
  heap.SetUserRoot(hdr);
  uint64_t sub_bytes = 0;
  for (const Prop& p : props) {
    // PC record ([MS-PST] 2.3.3.3): wPropId -> wPropType, dwValueHnid.
    char key[2], val[6];
    Put16(key, p.id);
    Put16(val, p.type);
    uint32_t hnid = 0;
    size_t fixed = FixedSize(p.type);
    if (p.sub_bid != 0) {
      out.subnodes.push_back(SlEntry{p.sub_nid, p.sub_bid, 0});
      sub_bytes += p.sub_bytes;
      hnid = p.sub_nid;
    } else if (fixed > 0 && fixed <= 4) {
      char v[4] = {};
      std::memcpy(v, p.value.data(), std::min<size_t>(4, p.value.size()));
      hnid = Get32(v);
    } else if (p.value.empty()) {
      hnid = 0;
    } else if (p.value.size() <= kMaxHeapAlloc) {
      WXA_ASSIGN_OR_RETURN(hnid, heap.Allocate(p.value));
    } else {
      uint64_t before = ndb->blocks();
      WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb->WriteData(p.value));
      sub_bytes += ndb->DataBytesSince(before);
      hnid = nids->Next();
      out.subnodes.push_back(SlEntry{hnid, bid, 0});
    }
    Put32(val + 2, hnid);
    WXA_RETURN_IF_ERROR(bth.Add(std::string_view(key, 2), std::string_view(val, 6)));
  }
  WXA_ASSIGN_OR_RETURN(uint32_t root, bth.Finish());
  (void)root;
  out.bytes = sub_bytes + heap.DataBytes() + extra_bytes;
  if (size_prop != 0) {
    std::string key, val;
    Append16(key, size_prop);
    Append16(val, kPtInt32);
    Append32(val, static_cast<uint32_t>(std::min<uint64_t>(out.bytes, 0x7FFFFFFF)));
    WXA_RETURN_IF_ERROR(bth.PatchLastLeafValue(key, val));
  }
  WXA_ASSIGN_OR_RETURN(out.bid_data, heap.Finish());
  return out;
}

TableSchema::TableSchema(const std::vector<uint32_t>& tags) {
  for (size_t i = 0; i < tags.size(); ++i) {
    Column c;
    c.tag = tags[i];
    size_t f = FixedSize(static_cast<uint16_t>(tags[i] & 0xFFFF));
    c.cb = static_cast<uint8_t>(f == 0 ? 4 : f);
    c.ibit = static_cast<uint8_t>(i);
    cols_.push_back(c);
  }
  uint16_t off = 0;
  for (Column& c : cols_) if (c.cb >= 4) c.ib = off, off = static_cast<uint16_t>(off + c.cb);
  rgib[0] = off;
  for (Column& c : cols_) if (c.cb == 2) c.ib = off, off = static_cast<uint16_t>(off + c.cb);
  rgib[1] = off;
  for (Column& c : cols_) if (c.cb == 1) c.ib = off, off = static_cast<uint16_t>(off + c.cb);
  rgib[2] = off;
  rgib[3] = static_cast<uint16_t>(off + (cols_.size() + 7) / 8);
}

// A long-lived table's held heap blocks: its header, BTH header and TCINFO
// (22 bytes plus 8 per column) and little more.
constexpr size_t kLongLivedHeldLimit = 1024;

TableBuilder::TableBuilder(NdbWriter* ndb, const TableSchema* schema, bool long_lived)
    : ndb_(ndb), schema_(schema), heap_(ndb, 0x7C), index_(&heap_, 4, 4),
      rows_per_block_(kMaxBlockData / schema->row_size()), long_lived_(long_lived) {}

Status TableBuilder::Start() {
  first_block_ = ndb_->blocks();
  WXA_ASSIGN_OR_RETURN(uint32_t bth, index_.Start());
  (void)bth;
  WXA_ASSIGN_OR_RETURN(tcinfo_hid_, heap_.Allocate(std::string(22 + 8 * schema_->columns().size(), '\0')));
  heap_.SetUserRoot(tcinfo_hid_);
  // The BTH header and the TCINFO, patched at Finish, are in block 0 (held
  // to the end) whatever their size; later allocations respect the limit.
  if (long_lived_) heap_.SetHeldLimit(kLongLivedHeldLimit);
  return Status::Ok();
}

Result<uint32_t> TableBuilder::StoreValue(const Prop& p) {
  if (p.value.empty()) return uint32_t{0};
  if (p.value.size() <= kMaxHeapAlloc) return heap_.Allocate(p.value);
  WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb_->WriteData(p.value));
  uint32_t nid = nids_.Next();
  subnodes_.push_back(SlEntry{nid, bid, 0});
  return nid;
}

Status TableBuilder::FlushRowBlock() {
  if (rows_buf_.empty()) return Status::Ok();
  WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb_->WriteBlock(rows_buf_, false));
  row_bids_.push_back(bid);
  row_sizes_.push_back(static_cast<uint16_t>(rows_buf_.size()));
  rows_buf_.clear();
  return Status::Ok();
}

Status TableBuilder::AddRow(uint32_t row_id, uint32_t row_ver, std::span<const Prop> props) {
  const uint16_t size = schema_->row_size();
  // A PC's properties come sorted by id (BuildPropertyContext sorts them): look columns up by
  // binary search then; other callers' short lists are scanned.
  const bool sorted = std::is_sorted(props.begin(), props.end(), [](const Prop& a, const Prop& b) { return a.id < b.id; });
  auto find = [&](uint16_t id) -> const Prop* {
    if (!sorted) return FindProp(props, id);
    auto it = std::lower_bound(props.begin(), props.end(), id, [](const Prop& p, uint16_t v) { return p.id < v; });
    return it != props.end() && it->id == id ? &*it : nullptr;
  };
  if (rows_nid_ == 0 && rows_buf_.size() + size > kMaxHeapAlloc) rows_nid_ = nids_.Next();
  const size_t at = rows_buf_.size();
  // At most a row block (subnode rows), or a heap allocation plus a row.
  GrowWithin(rows_buf_, size, std::max<size_t>(rows_per_block_ * size, kMaxHeapAlloc + size));
  rows_buf_.resize(at + size, '\0');  // the row is built in place
  for (const Column& c : schema_->columns()) {
    uint16_t id = static_cast<uint16_t>(c.tag >> 16), type = static_cast<uint16_t>(c.tag & 0xFFFF);
    char* cell = rows_buf_.data() + at + c.ib;
    if (id == 0x67F2) {
      Put32(cell, row_id);
    } else if (id == 0x67F3) {
      Put32(cell, row_ver);
    } else {
      const Prop* p = find(id);
      if (p == nullptr || p->type != type) continue;
      if (FixedSize(type) > 0) {
        std::memcpy(cell, p->value.data(), std::min<size_t>(c.cb, p->value.size()));
      } else {
        WXA_ASSIGN_OR_RETURN(uint32_t hnid, StoreValue(*p));
        Put32(cell, hnid);
      }
    }
    char* ceb = rows_buf_.data() + at + schema_->rgib[2];
    ceb[c.ibit / 8] = static_cast<char>(ceb[c.ibit / 8] | (0x80 >> (c.ibit % 8)));
  }
  if (rows_nid_ != 0 && rows_buf_.size() >= rows_per_block_ * size) WXA_RETURN_IF_ERROR(FlushRowBlock());
  char k[4], v[4];
  Put32(k, row_id);
  Put32(v, static_cast<uint32_t>(rows_));
  WXA_RETURN_IF_ERROR(index_.Add(std::string_view(k, 4), std::string_view(v, 4)));
  ++rows_;
  return Status::Ok();
}

size_t TableBuilder::HeldBytes() const {
  return heap_.HeldBytes() + index_.HeldBytes() + rows_buf_.capacity() + 8 * row_bids_.capacity() +
         2 * row_sizes_.capacity() + sizeof(SlEntry) * subnodes_.capacity();
}

Result<NodeData> TableBuilder::Finish() {
  uint32_t hnid_rows = 0;
  if (rows_nid_ == 0) {
    if (!rows_buf_.empty()) {
      WXA_ASSIGN_OR_RETURN(hnid_rows, heap_.Allocate(rows_buf_));
    }
  } else {
    WXA_RETURN_IF_ERROR(FlushRowBlock());
    WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb_->WriteDataTree(row_bids_, row_sizes_));
    subnodes_.push_back(SlEntry{rows_nid_, bid, 0});
    hnid_rows = rows_nid_;
  }
  WXA_ASSIGN_OR_RETURN(uint32_t row_index, index_.Finish());
  std::string t;
  Append8(t, 0x7C);
  Append8(t, static_cast<uint8_t>(schema_->columns().size()));
  for (uint16_t r : schema_->rgib) Append16(t, r);
  Append32(t, row_index);
  Append32(t, hnid_rows);
  Append32(t, 0);  // hidIndex: deprecated
  std::vector<Column> sorted = schema_->columns();
  std::sort(sorted.begin(), sorted.end(), [](const Column& a, const Column& b) { return a.tag < b.tag; });
  for (const Column& c : sorted) {
    Append32(t, c.tag);
    Append16(t, c.ib);
    Append8(t, c.cb);
    Append8(t, c.ibit);
  }
  WXA_RETURN_IF_ERROR(heap_.Patch(tcinfo_hid_, t));
  NodeData out;
  WXA_ASSIGN_OR_RETURN(out.bid_data, heap_.Finish());
  out.subnodes = std::move(subnodes_);
  out.bytes = ndb_->DataBytesSince(first_block_);
  return out;
}

}  // namespace wxa::pst
