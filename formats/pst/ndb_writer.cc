#include "formats/pst/ndb_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "formats/pst/pst_format.h"

namespace wxa::pst {

using namespace fmt;  // NOLINT: the format's constants read better unqualified here

Result<std::unique_ptr<NdbWriter>> NdbWriter::Create(const std::string& path, size_t write_buffer) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST) return Status::AlreadyExists("pst: file exists: " + path);
    return Status::FromErrno("open", path, errno);
  }
  std::unique_ptr<NdbWriter> w(new NdbWriter(core::UniqueFd(fd), path, std::max<size_t>(write_buffer, 64 << 10)));
  WXA_RETURN_IF_ERROR(w->StartInterval(0));
  return w;
}

NdbWriter::NdbWriter(core::UniqueFd fd, std::string path, size_t write_buffer)
    : fd_(std::move(fd)), path_(std::move(path)), write_buffer_(write_buffer) {
  buf_cap_ = write_buffer_ + 16384;
  buf_.reset(new char[buf_cap_]);  // not zeroed: BufferAt zeroes what is not written
}

char* NdbWriter::BufferAt(uint64_t rel, size_t n) {
  const size_t end = static_cast<size_t>(rel) + n;
  if (end > buf_cap_) {
    // The first allocation (again after ReleaseBuffer) is the usual size.
    size_t cap = std::max({end, buf_cap_ * 2, write_buffer_ + 16384});
    std::unique_ptr<char[]> bigger(new char[cap]);
    // (After ReleaseBuffer buf_ is null: memcpy from null is undefined even
    // for 0 bytes; UBSan says so.)
    if (buf_len_ > 0) std::memcpy(bigger.get(), buf_.get(), buf_len_);
    buf_ = std::move(bigger);
    buf_cap_ = cap;
  }
  if (rel > buf_len_) std::memset(buf_.get() + buf_len_, 0, static_cast<size_t>(rel) - buf_len_);
  buf_len_ = std::max(buf_len_, end);
  return buf_.get() + rel;
}

NdbWriter::~NdbWriter() = default;

Status NdbWriter::Flush() {
  size_t done = 0;
  while (done < buf_len_) {
    ssize_t n = ::pwrite(fd_.get(), buf_.get() + done, buf_len_ - done, static_cast<off_t>(buf_off_ + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(Status::FromErrno("pwrite", path_, errno));
    }
    done += static_cast<size_t>(n);
  }
  buf_off_ += buf_len_;
  buf_len_ = 0;
  return Status::Ok();
}

Status NdbWriter::ReleaseBuffer() {
  if (!error_.ok()) return error_;
  WXA_RETURN_IF_ERROR(Flush());
  buf_.reset();
  buf_cap_ = 0;
  return Status::Ok();
}

Status NdbWriter::WriteAt(uint64_t off, std::string_view data) {
  if (!error_.ok()) return error_;
  if (off >= buf_off_) {
    std::memcpy(BufferAt(off - buf_off_, data.size()), data.data(), data.size());
    if (buf_len_ >= write_buffer_) return Flush();
    return Status::Ok();
  }
  if (off + data.size() > buf_off_) WXA_RETURN_IF_ERROR(Flush());
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd_.get(), data.data() + done, data.size() - done,
                         static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(Status::FromErrno("pwrite", path_, errno));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status NdbWriter::WritePage(uint64_t ib, uint8_t ptype, uint64_t bid, bool signed_page,
                            std::string data) {
  data.resize(kPageDataSize, '\0');
  std::string page = std::move(data);
  Append8(page, ptype);
  Append8(page, ptype);
  Append16(page, signed_page ? ComputeSig(ib, bid) : 0);
  Append32(page, Crc32(page.data(), kPageDataSize));
  Append64(page, bid);
  return WriteAt(ib, page);
}

Status NdbWriter::StartInterval(uint64_t i) {
  interval_ = i;
  bits_.assign(kPageDataSize, '\0');
  uint64_t base = IntervalBase(i);
  uint64_t maps = MapPagesIn(i);
  for (uint64_t k = 0; k < maps; ++k) bits_[k] = static_cast<char>(0xFF);  // 8 slots per page
  cursor_ = base + maps * kPageSize;
  // Deprecated maps with fixed contents ([MS-PST] 2.2.2.7.3/.5): all 0xFF,
  // i.e. nothing free to hand out through them. The FMap is written at Finish.
  if (HasPMap(i)) {
    WXA_RETURN_IF_ERROR(WritePage(base + kPageSize, kPtypePMap, base + kPageSize, false,
                                  std::string(kPageDataSize, '\xFF')));
  }
  if (HasFPMap(i)) {
    WXA_RETURN_IF_ERROR(
        WritePage(FPMapOffset(i), kPtypeFPMap, FPMapOffset(i), false, std::string(kPageDataSize, '\xFF')));
  }
  return Status::Ok();
}

Status NdbWriter::FinishInterval() {
  uint64_t longest = 0, run = 0, free_slots = 0;
  for (size_t b = 0; b < kPageDataSize * 8; ++b) {
    bool used = (static_cast<uint8_t>(bits_[b / 8]) >> (7 - b % 8)) & 1;
    if (used) {
      run = 0;
    } else {
      ++free_slots;
      longest = std::max(longest, ++run);
    }
  }
  free_bytes_ += free_slots * 64;
  fmap_.push_back(static_cast<uint8_t>(std::min<uint64_t>(longest, 255)));
  uint64_t base = IntervalBase(interval_);
  return WritePage(base, kPtypeAMap, base, false, bits_);
}

Result<uint64_t> NdbWriter::Allocate(uint64_t size, uint64_t align) {
  if (!error_.ok()) return error_;
  uint64_t pos = (cursor_ + align - 1) & ~(align - 1);
  if (pos + size > IntervalBase(interval_) + kAMapCoverage) {
    WXA_RETURN_IF_ERROR(FinishInterval());
    WXA_RETURN_IF_ERROR(StartInterval(interval_ + 1));
    pos = (cursor_ + align - 1) & ~(align - 1);
  }
  uint64_t first = (pos - IntervalBase(interval_)) / 64, n = size / 64;
  for (uint64_t s = first; s < first + n; ++s) bits_[s / 8] = static_cast<char>(bits_[s / 8] | (0x80 >> (s % 8)));
  cursor_ = pos + size;
  return pos;
}

Result<uint64_t> NdbWriter::WriteBlock(std::string_view data, bool internal) {
  if (data.size() > kMaxBlockData) return Status::InvalidArgument("pst: block too large");
  uint64_t footprint = BlockFootprint(data.size());
  WXA_ASSIGN_OR_RETURN(uint64_t ib, Allocate(footprint, 64));
  uint64_t bid = (next_bid_index_++ << 2) | (internal ? 2 : 0);
  auto fill = [&](char* block) {
    std::memcpy(block, data.data(), data.size());
    std::memset(block + data.size(), 0, footprint - kBlockTrailerSize - data.size());
    char* t = block + footprint - kBlockTrailerSize;
    Put16(t, static_cast<uint16_t>(data.size()));
    Put16(t + 2, ComputeSig(ib, bid));
    Put32(t + 4, Crc32(data.data(), data.size()));
    Put64(t + 8, bid);
  };
  if (error_.ok() && ib >= buf_off_) {
    // The usual case: the block lands in the write buffer; build it there.
    fill(BufferAt(ib - buf_off_, footprint));
    if (buf_len_ >= write_buffer_) WXA_RETURN_IF_ERROR(Flush());
  } else {
    std::string block(footprint, '\0');
    fill(block.data());
    WXA_RETURN_IF_ERROR(WriteAt(ib, block));
  }
  // Outlook counts the BBT's own reference: a block used once has cRef 2.
  bbt_.push_back(BbtEntry{ib, static_cast<uint16_t>(data.size()), 2, internal});
  return bid;
}

void NdbWriter::AddRef(uint64_t bid) {
  uint64_t idx = (bid >> 2) - 1;
  if (idx < bbt_.size()) ++bbt_[idx].cref;
}

uint64_t NdbWriter::BlockSize(uint64_t bid) const {
  uint64_t idx = (bid >> 2) - 1;
  return idx < bbt_.size() ? bbt_[idx].cb : 0;
}

uint64_t NdbWriter::DataBytesSince(uint64_t first_block) const {
  uint64_t sum = 0;
  for (uint64_t i = first_block; i < bbt_.size(); ++i) sum += bbt_[i].cb;
  return sum;
}

uint64_t NdbWriter::IndexMemoryBytes() const {
  return bbt_.capacity() * sizeof(BbtEntry) + nbt_.capacity() * sizeof(NbtEntry) + fmap_.capacity();
}

Result<uint64_t> NdbWriter::WriteDataTree(const std::vector<uint64_t>& bids,
                                          const std::vector<uint16_t>& sizes) {
  if (bids.empty()) return uint64_t{0};
  if (bids.size() == 1) return bids[0];
  uint64_t total = 0;
  for (uint16_t s : sizes) total += s;
  if (total > 0xFFFFFFFFull) return Status::TooLarge("pst: value over 4 GiB");
  // Level 1: XBLOCKs of up to 1021 BIDs; lcbTotal is the bytes under each.
  std::vector<uint64_t> xbids;
  for (size_t i = 0; i < bids.size(); i += kXBlockMaxBids) {
    size_t n = std::min(kXBlockMaxBids, bids.size() - i);
    uint64_t under = 0;
    for (size_t k = 0; k < n; ++k) under += sizes[i + k];
    std::string x;
    Append8(x, 0x01);
    Append8(x, 1);
    Append16(x, static_cast<uint16_t>(n));
    Append32(x, static_cast<uint32_t>(under));
    for (size_t k = 0; k < n; ++k) Append64(x, bids[i + k]);
    WXA_ASSIGN_OR_RETURN(uint64_t xb, WriteBlock(x, true));
    xbids.push_back(xb);
  }
  if (xbids.size() == 1) return xbids[0];
  if (xbids.size() > kXBlockMaxBids) return Status::TooLarge("pst: value over the XXBLOCK limit");
  std::string xx;
  Append8(xx, 0x01);
  Append8(xx, 2);
  Append16(xx, static_cast<uint16_t>(xbids.size()));
  Append32(xx, static_cast<uint32_t>(total));
  for (uint64_t b : xbids) Append64(xx, b);
  return WriteBlock(xx, true);
}

Result<uint64_t> NdbWriter::WriteData(std::string_view data) {
  DataTreeWriter w(this);
  WXA_RETURN_IF_ERROR(w.Append(data));
  return w.Finish();
}

Result<uint64_t> NdbWriter::WriteSubnodeTree(std::vector<SlEntry> entries) {
  if (entries.empty()) return uint64_t{0};
  std::sort(entries.begin(), entries.end(),
            [](const SlEntry& a, const SlEntry& b) { return a.nid < b.nid; });
  std::vector<std::pair<uint32_t, uint64_t>> leaves;  // first nid, SLBLOCK bid
  for (size_t i = 0; i < entries.size(); i += kSLBlockMaxEntries) {
    size_t n = std::min(kSLBlockMaxEntries, entries.size() - i);
    std::string b;
    Append8(b, 0x02);
    Append8(b, 0);
    Append16(b, static_cast<uint16_t>(n));
    Append32(b, 0);
    for (size_t k = 0; k < n; ++k) {
      Append64(b, entries[i + k].nid);
      Append64(b, entries[i + k].bid_data);
      Append64(b, entries[i + k].bid_sub);
    }
    WXA_ASSIGN_OR_RETURN(uint64_t bid, WriteBlock(b, true));
    leaves.emplace_back(entries[i].nid, bid);
  }
  if (leaves.size() == 1) return leaves[0].second;
  if (leaves.size() > kSIBlockMaxEntries) return Status::TooLarge("pst: too many subnodes");
  std::string b;
  Append8(b, 0x02);
  Append8(b, 1);
  Append16(b, static_cast<uint16_t>(leaves.size()));
  Append32(b, 0);
  for (auto& [nid, bid] : leaves) {
    Append64(b, nid);
    Append64(b, bid);
  }
  return WriteBlock(b, true);
}

void NdbWriter::AddNode(uint32_t nid, uint64_t bid_data, uint64_t bid_sub, uint32_t parent) {
  nbt_.push_back(NbtEntry{nid, parent, bid_data, bid_sub});
}

template <typename Entry, typename Fill>
Result<NdbWriter::BRef> NdbWriter::BuildBTree(const std::vector<Entry>& entries, uint8_t ptype,
                                              size_t leaf_cb, Fill fill_leaf) {
  // Bottom-up: full leaves, then index levels of BTENTRY (key, BREF) until
  // one page remains. Keys are the first key of each child.
  struct Child {
    uint64_t key;
    BRef ref;
  };
  std::vector<Child> level;
  size_t per_leaf = kPageSize == 512 ? 488 / leaf_cb : 0;
  for (size_t i = 0; i < entries.size() || (i == 0 && entries.empty()); i += per_leaf) {
    size_t n = std::min(per_leaf, entries.size() - i);
    std::string page;
    uint64_t first_key = 0;
    for (size_t k = 0; k < n; ++k) {
      uint64_t key = fill_leaf(page, entries[i + k], i + k);
      if (k == 0) first_key = key;
    }
    page.resize(488, '\0');
    Append8(page, static_cast<uint8_t>(n));
    Append8(page, static_cast<uint8_t>(per_leaf));
    Append8(page, static_cast<uint8_t>(leaf_cb));
    Append8(page, 0);
    Append32(page, 0);
    WXA_ASSIGN_OR_RETURN(uint64_t ib, Allocate(kPageSize, kPageSize));
    uint64_t bid = next_page_bid_++;
    WXA_RETURN_IF_ERROR(WritePage(ib, ptype, bid, true, page));
    level.push_back(Child{first_key, BRef{bid, ib}});
    if (entries.empty()) break;
  }
  uint8_t depth = 0;
  constexpr size_t kPerIndex = 488 / 24;  // 20
  while (level.size() > 1) {
    ++depth;
    std::vector<Child> up;
    for (size_t i = 0; i < level.size(); i += kPerIndex) {
      size_t n = std::min(kPerIndex, level.size() - i);
      std::string page;
      for (size_t k = 0; k < n; ++k) {
        Append64(page, level[i + k].key);
        Append64(page, level[i + k].ref.bid);
        Append64(page, level[i + k].ref.ib);
      }
      page.resize(488, '\0');
      Append8(page, static_cast<uint8_t>(n));
      Append8(page, static_cast<uint8_t>(kPerIndex));
      Append8(page, 24);
      Append8(page, depth);
      Append32(page, 0);
      WXA_ASSIGN_OR_RETURN(uint64_t ib, Allocate(kPageSize, kPageSize));
      uint64_t bid = next_page_bid_++;
      WXA_RETURN_IF_ERROR(WritePage(ib, ptype, bid, true, page));
      up.push_back(Child{level[i].key, BRef{bid, ib}});
    }
    level = std::move(up);
  }
  return level[0].ref;
}

Status NdbWriter::Finish(const NdbHeaderInfo& info, bool sync) {
  if (!error_.ok()) return error_;
  std::sort(nbt_.begin(), nbt_.end(), [](const NbtEntry& a, const NbtEntry& b) { return a.nid < b.nid; });
  for (size_t i = 1; i < nbt_.size(); ++i) {
    if (nbt_[i].nid == nbt_[i - 1].nid) return Fail(Status::InvalidArgument("pst: duplicate NID"));
  }
  WXA_ASSIGN_OR_RETURN(BRef bbt_root,
                       BuildBTree(bbt_, kPtypeBBT, 24, [](std::string& p, const BbtEntry& e, size_t i) {
                         uint64_t bid = BidAt(i, e);
                         Append64(p, bid);
                         Append64(p, e.ib);
                         Append16(p, e.cb);
                         Append16(p, e.cref);
                         Append32(p, 0);
                         return bid;
                       }));
  WXA_ASSIGN_OR_RETURN(BRef nbt_root,
                       BuildBTree(nbt_, kPtypeNBT, 32, [](std::string& p, const NbtEntry& e, size_t) {
                         Append64(p, e.nid);
                         Append64(p, e.bid_data);
                         Append64(p, e.bid_sub);
                         Append32(p, e.parent);
                         Append32(p, 0);
                         return uint64_t{e.nid};
                       }));
  // The last interval: everything after the cursor is free; the file ends
  // where the interval does, as Outlook's do.
  uint64_t last = interval_;
  WXA_RETURN_IF_ERROR(FinishInterval());
  uint64_t eof = IntervalBase(last) + kAMapCoverage;
  // FMaps: one byte per AMap interval, starting with the interval they sit in.
  for (uint64_t i = kFMapFirst; i <= last; i += kFMapEvery) {
    std::string page(kPageDataSize, '\0');
    for (uint64_t k = 0; k < kFMapEvery && i + k <= last; ++k) page[k] = static_cast<char>(fmap_[i + k]);
    WXA_RETURN_IF_ERROR(WritePage(FMapOffset(i), kPtypeFMap, FMapOffset(i), false, page));
  }
  // Density list: present and empty, as in a new Outlook store.
  uint64_t dlist_bid = next_page_bid_++;
  WXA_RETURN_IF_ERROR(WritePage(kDListOffset, kPtypeDList, dlist_bid, true, std::string()));

  std::string h(kHeaderSize, '\0');
  char* p = h.data();
  std::memcpy(p, "!BDN", 4);
  std::memcpy(p + 8, "SM", 2);
  Put16(p + 10, 23);  // wVer: Unicode
  Put16(p + 12, 19);  // wVerClient
  p[14] = 1;
  p[15] = 1;
  Put64(p + 32, next_page_bid_);
  Put32(p + 40, info.unique);
  for (int i = 0; i < 32; ++i) Put32(p + 44 + 4 * i, info.rgnid[i]);
  Put64(p + 184, eof);
  Put64(p + 192, IntervalBase(last));
  Put64(p + 200, free_bytes_);
  Put64(p + 208, 0);
  Put64(p + 216, nbt_root.bid);
  Put64(p + 224, nbt_root.ib);
  Put64(p + 232, bbt_root.bid);
  Put64(p + 240, bbt_root.ib);
  p[248] = 2;  // fAMapValid: VALID_AMAP2
  std::memset(p + 256, 0xFF, 256);  // deprecated rgbFM / rgbFP
  p[512] = static_cast<char>(0x80);
  p[513] = 0;  // bCryptMethod: none
  Put64(p + 516, next_bid_index_ << 2);
  Put32(p + 4, Crc32(p + 8, 471));
  Put32(p + 524, Crc32(p + 8, 516));
  WXA_RETURN_IF_ERROR(Flush());
  if (::ftruncate(fd_.get(), static_cast<off_t>(eof)) != 0) return Fail(Status::FromErrno("ftruncate", path_, errno));
  // Everything else first, then the header, so a crash leaves no valid-looking file.
  if (sync && ::fdatasync(fd_.get()) != 0) return Fail(Status::FromErrno("fdatasync", path_, errno));
  WXA_RETURN_IF_ERROR(WriteAt(0, h));
  WXA_RETURN_IF_ERROR(Flush());
  if (sync && ::fsync(fd_.get()) != 0) return Fail(Status::FromErrno("fsync", path_, errno));
  cursor_ = eof;
  error_ = Status::Aborted("pst: writer finished");
  return Status::Ok();
}

Status DataTreeWriter::Append(std::string_view data) {
  total_ += data.size();
  while (!data.empty()) {
    if (pending_.empty() && data.size() >= kMaxBlockData) {
      WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb_->WriteBlock(data.substr(0, kMaxBlockData), false));
      bids_.push_back(bid);
      sizes_.push_back(kMaxBlockData);
      data.remove_prefix(kMaxBlockData);
      continue;
    }
    size_t take = std::min(kMaxBlockData - pending_.size(), data.size());
    pending_.append(data.substr(0, take));
    data.remove_prefix(take);
    if (pending_.size() == kMaxBlockData) {
      WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb_->WriteBlock(pending_, false));
      bids_.push_back(bid);
      sizes_.push_back(kMaxBlockData);
      pending_.clear();
    }
  }
  return Status::Ok();
}

Result<uint64_t> DataTreeWriter::Finish() {
  if (!pending_.empty()) {
    WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb_->WriteBlock(pending_, false));
    bids_.push_back(bid);
    sizes_.push_back(static_cast<uint16_t>(pending_.size()));
    pending_.clear();
  }
  return ndb_->WriteDataTree(bids_, sizes_);
}

}  // namespace wxa::pst
