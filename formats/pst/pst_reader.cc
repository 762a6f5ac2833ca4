#include "formats/pst/pst_reader.h"

#include <algorithm>
#include <functional>
#include <set>
#include <unordered_map>

#include "formats/pst/pst_format.h"

namespace wxa::pst {

using namespace fmt;  // NOLINT

namespace {

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof(b), "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

struct NbtEntry {
  uint32_t nid;
  uint64_t bid_data, bid_sub;
  uint32_t parent;
};
struct BbtEntry {
  uint64_t bid, ib;
  uint16_t cb, cref;
};
struct Heap {
  std::vector<std::string> blocks;
  uint8_t client_sig = 0;
  uint32_t user_root = 0;
};
struct Table {
  struct Col {
    uint32_t tag;
    uint16_t ib;
    uint8_t cb, ibit;
  };
  std::vector<Col> cols;
  uint16_t rgib[4] = {};
  std::vector<uint32_t> row_ids;
  std::vector<PropMap> rows;  // cells present per row (LtpRowId/Ver excluded)
};

}  // namespace

struct Reader::Impl {
  core::MappedFile file;
  std::string_view f;
  uint8_t crypt = 0;
  uint64_t nbt_root_bid = 0, nbt_root_ib = 0, bbt_root_bid = 0, bbt_root_ib = 0;
  std::vector<NbtEntry> nbt;  // sorted by nid
  std::vector<BbtEntry> bbt;  // sorted by bid
  std::vector<uint64_t> page_offsets;
  std::vector<std::string> tree_errors;

  const NbtEntry* FindNode(uint32_t nid) const {
    auto it = std::lower_bound(nbt.begin(), nbt.end(), nid, [](const NbtEntry& e, uint32_t n) { return e.nid < n; });
    return it != nbt.end() && it->nid == nid ? &*it : nullptr;
  }
  const BbtEntry* FindBlock(uint64_t bid) const {
    bid &= ~uint64_t{1};
    auto it = std::lower_bound(bbt.begin(), bbt.end(), bid, [](const BbtEntry& e, uint64_t b) { return e.bid < b; });
    return it != bbt.end() && it->bid == bid ? &*it : nullptr;
  }

  // Walks one B-tree, checking every page; leaf entries go to `leaf`.
  void WalkTree(uint64_t bid, uint64_t ib, uint8_t ptype, int expect_level, uint64_t lo, uint64_t hi,
                const std::function<void(const char*)>& leaf, std::vector<std::string>& errs) {
    std::string where = std::string(ptype == kPtypeNBT ? "NBT" : "BBT") + " page at " + Hex(ib);
    if (ib % kPageSize != 0 || ib + kPageSize > f.size()) {
      errs.push_back(where + ": misplaced");
      return;
    }
    page_offsets.push_back(ib);
    const char* p = f.data() + ib;
    if (static_cast<uint8_t>(p[496]) != ptype || p[497] != p[496]) errs.push_back(where + ": bad ptype");
    if (Get16(p + 498) != ComputeSig(ib, bid)) errs.push_back(where + ": bad wSig");
    if (Get32(p + 500) != Crc32(p, kPageDataSize)) errs.push_back(where + ": bad CRC");
    if (Get64(p + 504) != bid) errs.push_back(where + ": bid does not match its parent's BREF");
    uint8_t c_ent = static_cast<uint8_t>(p[488]), c_max = static_cast<uint8_t>(p[489]),
            cb_ent = static_cast<uint8_t>(p[490]), level = static_cast<uint8_t>(p[491]);
    if (expect_level >= 0 && level != expect_level) errs.push_back(where + ": wrong cLevel");
    size_t want_cb = level > 0 ? 24 : (ptype == kPtypeNBT ? 32 : 24);
    if (cb_ent != want_cb || c_max != 488 / want_cb || c_ent > c_max || c_ent == 0) {
      if (!(c_ent == 0 && level == 0)) {
        errs.push_back(where + ": bad entry counts");
        return;
      }
    }
    uint64_t prev = 0;
    for (uint8_t i = 0; i < c_ent; ++i) {
      const char* e = p + i * cb_ent;
      uint64_t key = ptype == kPtypeNBT && level == 0 ? Get32(e) : Get64(e);
      if (i > 0 && key <= prev) errs.push_back(where + ": entries not sorted");
      if (key < lo || key >= hi) errs.push_back(where + ": entry outside its parent's key range");
      prev = key;
      if (level == 0) {
        leaf(e);
      } else {
        uint64_t next_key = i + 1 < c_ent ? Get64(p + (i + 1) * cb_ent) : hi;
        WalkTree(Get64(e + 8), Get64(e + 16), ptype, level - 1, key, next_key, leaf, errs);
      }
    }
  }

  Status Load() {
    f = file.data();
    if (f.size() < kFirstAMapOffset + kPageSize) return Status::Corruption("pst: file too small");
    const char* h = f.data();
    if (std::memcmp(h, "!BDN", 4) != 0) return Status::Corruption("pst: bad magic");
    if (Get16(h + 10) < 23) return Status::Unsupported("pst: ANSI PST (wVer < 23)");
    if (Get16(h + 10) != 23) return Status::Unsupported("pst: wVer " + std::to_string(Get16(h + 10)));
    crypt = static_cast<uint8_t>(h[513]);
    if (crypt > 1) return Status::Unsupported("pst: cyclic encryption");
    nbt_root_bid = Get64(h + 216);
    nbt_root_ib = Get64(h + 224);
    bbt_root_bid = Get64(h + 232);
    bbt_root_ib = Get64(h + 240);
    WalkTree(bbt_root_bid, bbt_root_ib, kPtypeBBT, -1, 0, UINT64_MAX,
             [&](const char* e) { bbt.push_back(BbtEntry{Get64(e), Get64(e + 8), Get16(e + 16), Get16(e + 18)}); },
             tree_errors);
    WalkTree(nbt_root_bid, nbt_root_ib, kPtypeNBT, -1, 0, UINT64_MAX,
             [&](const char* e) { nbt.push_back(NbtEntry{Get32(e), Get64(e + 8), Get64(e + 16), Get32(e + 24)}); },
             tree_errors);
    if (bbt.empty() || nbt.empty()) return Status::Corruption("pst: empty B-tree");
    std::sort(bbt.begin(), bbt.end(), [](const BbtEntry& a, const BbtEntry& b) { return a.bid < b.bid; });
    std::sort(nbt.begin(), nbt.end(), [](const NbtEntry& a, const NbtEntry& b) { return a.nid < b.nid; });
    return Status::Ok();
  }

  // Raw (decoded) bytes of one block.
  Result<std::string> Block(uint64_t bid) const {
    const BbtEntry* e = FindBlock(bid);
    if (e == nullptr) return Status::Corruption("pst: block " + Hex(bid) + " not in the BBT");
    if (e->ib + BlockFootprint(e->cb) > f.size()) return Status::Corruption("pst: block past EOF");
    std::string d(f.data() + e->ib, e->cb);
    if (crypt == 1 && (e->bid & 2) == 0) {
      for (char& c : d) c = static_cast<char>(kPermuteDecode[static_cast<uint8_t>(c)]);
    }
    return d;
  }

  // The data blocks of a node's data tree, in order. `refs` counts references.
  Status DataBlocks(uint64_t bid, std::vector<std::string>* out, std::map<uint64_t, uint32_t>* refs,
                    int depth = 0) const {
    if (bid == 0) return Status::Ok();
    if (refs) ++(*refs)[bid & ~uint64_t{1}];
    WXA_ASSIGN_OR_RETURN(std::string d, Block(bid));
    if ((bid & 2) == 0) {
      out->push_back(std::move(d));
      return Status::Ok();
    }
    if (d.size() < 8 || d[0] != 0x01) return Status::Corruption("pst: bad XBLOCK " + Hex(bid));
    uint8_t level = static_cast<uint8_t>(d[1]);
    uint16_t n = Get16(d.data() + 2);
    uint32_t total = Get32(d.data() + 4);
    if (level < 1 || level > 2 || depth + level > 2 || 8 + 8u * n > d.size() || n == 0)
      return Status::Corruption("pst: bad XBLOCK header " + Hex(bid));
    size_t before = 0;
    for (auto& s : *out) before += s.size();
    for (uint16_t i = 0; i < n; ++i) {
      uint64_t child = Get64(d.data() + 8 + 8 * i);
      if (level == 1 && (child & 2)) return Status::Corruption("pst: XBLOCK points at an internal block");
      if (level == 2 && !(child & 2)) return Status::Corruption("pst: XXBLOCK points at a data block");
      WXA_RETURN_IF_ERROR(DataBlocks(child, out, refs, depth + 1));
    }
    size_t after = 0;
    for (auto& s : *out) after += s.size();
    if (after - before != total) return Status::Corruption("pst: XBLOCK lcbTotal mismatch " + Hex(bid));
    return Status::Ok();
  }

  Result<std::string> Data(uint64_t bid) const {
    std::vector<std::string> blocks;
    WXA_RETURN_IF_ERROR(DataBlocks(bid, &blocks, nullptr));
    std::string all;
    for (auto& b : blocks) all += b;
    return all;
  }

  using Subnodes = std::map<uint32_t, std::pair<uint64_t, uint64_t>>;
  Status SubnodeEntries(uint64_t bid, Subnodes* out, std::map<uint64_t, uint32_t>* refs, int depth = 0) const {
    if (bid == 0) return Status::Ok();
    if (refs) ++(*refs)[bid & ~uint64_t{1}];
    WXA_ASSIGN_OR_RETURN(std::string d, Block(bid));
    if (d.size() < 8 || d[0] != 0x02 || !(bid & 2)) return Status::Corruption("pst: bad subnode block " + Hex(bid));
    uint8_t level = static_cast<uint8_t>(d[1]);
    uint16_t n = Get16(d.data() + 2);
    size_t es = level == 0 ? 24 : 16;
    if (level > 1 || depth + level > 1 || 8 + es * n > d.size()) return Status::Corruption("pst: bad subnode header");
    uint64_t prev = 0;
    for (uint16_t i = 0; i < n; ++i) {
      const char* e = d.data() + 8 + es * i;
      uint64_t nid = Get64(e);
      if (i > 0 && nid <= prev) return Status::Corruption("pst: subnode entries not sorted " + Hex(bid));
      prev = nid;
      if (level == 0) {
        (*out)[static_cast<uint32_t>(nid)] = {Get64(e + 8), Get64(e + 16)};
        if (refs) {
          if (Get64(e + 8)) ++(*refs)[Get64(e + 8) & ~uint64_t{1}];
          if (Get64(e + 16)) ++(*refs)[Get64(e + 16) & ~uint64_t{1}];
        }
      } else {
        WXA_RETURN_IF_ERROR(SubnodeEntries(Get64(e + 8), out, refs, depth + 1));
      }
    }
    return Status::Ok();
  }

  Result<Heap> ReadHeap(uint64_t bid_data) const {
    Heap heap;
    WXA_RETURN_IF_ERROR(DataBlocks(bid_data, &heap.blocks, nullptr));
    if (heap.blocks.empty() || heap.blocks[0].size() < 12 || static_cast<uint8_t>(heap.blocks[0][2]) != 0xEC)
      return Status::Corruption("pst: not a heap-on-node");
    heap.client_sig = static_cast<uint8_t>(heap.blocks[0][3]);
    heap.user_root = Get32(heap.blocks[0].data() + 4);
    for (size_t i = 0; i < heap.blocks.size(); ++i) {
      const std::string& b = heap.blocks[i];
      if (b.size() < 2) return Status::Corruption("pst: heap block too small");
      uint16_t pm = Get16(b.data());
      if (pm + 4u > b.size()) return Status::Corruption("pst: heap page map out of block");
      uint16_t n = Get16(b.data() + pm);
      if (pm + 4u + 2u * (n + 1) > b.size()) return Status::Corruption("pst: heap page map too long");
      uint16_t prev = 0;
      for (uint16_t k = 0; k <= n; ++k) {
        uint16_t o = Get16(b.data() + pm + 4 + 2 * k);
        if (o < prev || o > pm) return Status::Corruption("pst: heap allocation offsets not ascending");
        prev = o;
      }
    }
    WXA_RETURN_IF_ERROR(CheckFillLevels(heap));
    return heap;
  }

  // [MS-PST] 2.3.1.2-2.3.1.4: HNHDR's rgbFillLevel (blocks 0-7) and each
  // HNBITMAPHDR's (block 8 + 128k and the 127 after it) hint at each block's
  // free space, one nibble per block, low nibble first. A writer that trusts
  // a hint saying there is more room than there is would overwrite; a hint
  // saying less only wastes room. So a level may understate, never overstate.
  static Status CheckFillLevels(const Heap& h) {
    static constexpr uint16_t kAtLeast[15] = {3584, 2560, 2048, 1792, 1536, 1280, 1024, 768, 512, 256, 128, 64, 32, 16, 8};
    auto check = [&](const std::string& holder, size_t at, size_t first) -> Status {
      for (size_t k = 0; k < (first == 0 ? 8u : 128u) && first + k < h.blocks.size(); ++k) {
        if (at + k / 2 >= holder.size()) return Status::Corruption("pst: heap fill levels out of block");
        const auto byte = static_cast<uint8_t>(holder[at + k / 2]);
        const uint8_t level = k % 2 == 0 ? (byte & 0x0F) : (byte >> 4);
        const size_t free_bytes = kMaxBlockData - std::min(kMaxBlockData, h.blocks[first + k].size());
        if (level < 15 && free_bytes < kAtLeast[level]) {
          return Status::Corruption("pst: heap block " + std::to_string(first + k) + " has " + std::to_string(free_bytes) +
                                    " bytes free but its fill level says at least " + std::to_string(kAtLeast[level]));
        }
      }
      return Status::Ok();
    };
    WXA_RETURN_IF_ERROR(check(h.blocks[0], 8, 0));
    for (size_t i = 8; i < h.blocks.size(); i += 128) WXA_RETURN_IF_ERROR(check(h.blocks[i], 2, i));
    return Status::Ok();
  }

  static Result<std::string> Alloc(const Heap& h, uint32_t hid) {
    uint32_t bi = hid >> 16, ai = (hid >> 5) & 0x7FF;
    if ((hid & 0x1F) != 0 || bi >= h.blocks.size() || ai == 0) return Status::Corruption("pst: bad HID " + Hex(hid));
    const std::string& b = h.blocks[bi];
    uint16_t pm = Get16(b.data());
    uint16_t n = Get16(b.data() + pm);
    if (ai > n) return Status::Corruption("pst: HID past the page map " + Hex(hid));
    uint16_t s = Get16(b.data() + pm + 4 + 2 * (ai - 1)), e = Get16(b.data() + pm + 4 + 2 * ai);
    return b.substr(s, e - s);
  }

  // BTH records (key||value) in order, checking sort order and levels.
  static Status BthRecords(const Heap& h, uint32_t hid, uint8_t* cb_key, uint8_t* cb_ent, std::vector<std::string>* out) {
    WXA_ASSIGN_OR_RETURN(std::string hdr, Alloc(h, hid));
    if (hdr.size() != 8 || static_cast<uint8_t>(hdr[0]) != 0xB5) return Status::Corruption("pst: bad BTH header");
    *cb_key = static_cast<uint8_t>(hdr[1]);
    *cb_ent = static_cast<uint8_t>(hdr[2]);
    uint8_t levels = static_cast<uint8_t>(hdr[3]);
    uint32_t root = Get32(hdr.data() + 4);
    if (root == 0) return Status::Ok();
    std::function<Status(uint32_t, int)> walk = [&](uint32_t node, int level) -> Status {
      WXA_ASSIGN_OR_RETURN(std::string d, Alloc(h, node));
      size_t rec = level == 0 ? *cb_key + *cb_ent : *cb_key + 4u;
      if (rec == 0 || d.size() % rec != 0) return Status::Corruption("pst: BTH node size");
      for (size_t o = 0; o < d.size(); o += rec) {
        if (level == 0) out->push_back(d.substr(o, rec));
        else WXA_RETURN_IF_ERROR(walk(Get32(d.data() + o + *cb_key), level - 1));
      }
      return Status::Ok();
    };
    WXA_RETURN_IF_ERROR(walk(root, levels));
    for (size_t i = 1; i < out->size(); ++i) {
      const std::string &a = (*out)[i - 1], &b = (*out)[i];
      bool less = false;
      for (size_t k = *cb_key; k-- > 0;) {
        if (a[k] != b[k]) {
          less = static_cast<uint8_t>(a[k]) < static_cast<uint8_t>(b[k]);
          break;
        }
      }
      if (!less) return Status::Corruption("pst: BTH keys not sorted");
    }
    return Status::Ok();
  }

  Result<std::string> ResolveHnid(const Heap& h, const Subnodes& subs, uint32_t hnid) const {
    if (hnid == 0) return std::string();
    if ((hnid & 0x1F) == 0) return Alloc(h, hnid);
    auto it = subs.find(hnid);
    if (it == subs.end()) return Status::Corruption("pst: value subnode " + Hex(hnid) + " missing");
    return Data(it->second.first);
  }

  Result<PropMap> ReadPc(uint64_t bid_data, uint64_t bid_sub) const {
    WXA_ASSIGN_OR_RETURN(Heap h, ReadHeap(bid_data));
    if (h.client_sig != 0xBC) return Status::Corruption("pst: not a property context");
    Subnodes subs;
    WXA_RETURN_IF_ERROR(SubnodeEntries(bid_sub, &subs, nullptr));
    uint8_t ck = 0, ce = 0;
    std::vector<std::string> recs;
    WXA_RETURN_IF_ERROR(BthRecords(h, h.user_root, &ck, &ce, &recs));
    if (ck != 2 || ce != 6) return Status::Corruption("pst: PC BTH sizes");
    PropMap out;
    for (const std::string& r : recs) {
      uint16_t id = Get16(r.data()), type = Get16(r.data() + 2);
      uint32_t v = Get32(r.data() + 4);
      PropValue pv{type, {}};
      size_t fixed = 0;
      switch (type) {
        case 0x0002: fixed = 2; break;
        case 0x0003: case 0x0004: case 0x000A: fixed = 4; break;
        case 0x000B: fixed = 1; break;
        default: break;
      }
      if (fixed) {
        pv.bytes.assign(r.data() + 4, fixed);
      } else {
        WXA_ASSIGN_OR_RETURN(pv.bytes, ResolveHnid(h, subs, v));
      }
      out[id] = std::move(pv);
    }
    return out;
  }

  Result<Table> ReadTc(uint64_t bid_data, uint64_t bid_sub) const {
    WXA_ASSIGN_OR_RETURN(Heap h, ReadHeap(bid_data));
    if (h.client_sig != 0x7C) return Status::Corruption("pst: not a table context");
    Subnodes subs;
    WXA_RETURN_IF_ERROR(SubnodeEntries(bid_sub, &subs, nullptr));
    WXA_ASSIGN_OR_RETURN(std::string ti, Alloc(h, h.user_root));
    if (ti.size() < 22 || static_cast<uint8_t>(ti[0]) != 0x7C) return Status::Corruption("pst: bad TCINFO");
    Table t;
    uint8_t ncols = static_cast<uint8_t>(ti[1]);
    if (ti.size() != 22u + 8u * ncols) return Status::Corruption("pst: TCINFO size");
    for (int i = 0; i < 4; ++i) t.rgib[i] = Get16(ti.data() + 2 + 2 * i);
    uint32_t hid_index = Get32(ti.data() + 10), hnid_rows = Get32(ti.data() + 14);
    uint32_t prev_tag = 0;
    for (int i = 0; i < ncols; ++i) {
      const char* c = ti.data() + 22 + 8 * i;
      Table::Col col{Get32(c), Get16(c + 4), static_cast<uint8_t>(c[6]), static_cast<uint8_t>(c[7])};
      if (i > 0 && col.tag <= prev_tag) return Status::Corruption("pst: TCOLDESCs not sorted");
      prev_tag = col.tag;
      if (col.ib + col.cb > t.rgib[2] || col.ibit >= ncols) return Status::Corruption("pst: column outside the row");
      t.cols.push_back(col);
    }
    uint8_t ck = 0, ce = 0;
    std::vector<std::string> idx;
    WXA_RETURN_IF_ERROR(BthRecords(h, hid_index, &ck, &ce, &idx));
    if (!idx.empty() && (ck != 4 || ce != 4)) return Status::Corruption("pst: row index sizes");
    // Row matrix: in the heap, or blocks holding whole rows each.
    uint16_t rs = t.rgib[3];
    std::vector<std::string> row_blocks;
    if (hnid_rows != 0) {
      if ((hnid_rows & 0x1F) == 0) {
        WXA_ASSIGN_OR_RETURN(std::string r, Alloc(h, hnid_rows));
        row_blocks.push_back(std::move(r));
      } else {
        auto it = subs.find(hnid_rows);
        if (it == subs.end()) return Status::Corruption("pst: row matrix subnode missing");
        WXA_RETURN_IF_ERROR(DataBlocks(it->second.first, &row_blocks, nullptr));
      }
    }
    std::vector<std::string> rows;
    size_t per_block = rs ? kMaxBlockData / rs : 0;
    for (size_t b = 0; b < row_blocks.size(); ++b) {
      const std::string& blk = row_blocks[b];
      if (rs == 0 || blk.size() % rs != 0) return Status::Corruption("pst: row block not whole rows");
      if (hnid_rows & 0x1F) {
        if (blk.size() / rs > per_block) return Status::Corruption("pst: too many rows in a block");
        if (b + 1 < row_blocks.size() && blk.size() / rs != per_block)
          return Status::Corruption("pst: row block not full");
      }
      for (size_t o = 0; o < blk.size(); o += rs) rows.push_back(blk.substr(o, rs));
    }
    if (rows.size() != idx.size()) return Status::Corruption("pst: row index and row matrix disagree");
    std::vector<bool> seen(rows.size(), false);
    for (const std::string& r : idx) {
      uint32_t id = Get32(r.data()), at = Get32(r.data() + 4);
      if (at >= rows.size() || seen[at]) return Status::Corruption("pst: bad row index entry");
      seen[at] = true;
      if (Get32(rows[at].data()) != id) return Status::Corruption("pst: row id differs from its index key");
    }
    for (const std::string& row : rows) {
      t.row_ids.push_back(Get32(row.data()));
      PropMap cells;
      for (const Table::Col& c : t.cols) {
        uint16_t id = static_cast<uint16_t>(c.tag >> 16), type = static_cast<uint16_t>(c.tag & 0xFFFF);
        if (id == 0x67F2 || id == 0x67F3) continue;
        if (!((static_cast<uint8_t>(row[t.rgib[2] + c.ibit / 8]) >> (7 - c.ibit % 8)) & 1)) continue;
        PropValue pv{type, {}};
        bool inline_value = type == 0x0002 || type == 0x0003 || type == 0x000B || type == 0x0014 ||
                            type == 0x0040 || type == 0x0005 || type == 0x0004;
        if (inline_value) {
          pv.bytes = row.substr(c.ib, c.cb);
        } else {
          WXA_ASSIGN_OR_RETURN(pv.bytes, ResolveHnid(h, subs, Get32(row.data() + c.ib)));
        }
        cells[id] = std::move(pv);
      }
      t.rows.push_back(std::move(cells));
    }
    return t;
  }

  Result<PropMap> NodeProps(uint32_t nid) const {
    const NbtEntry* e = FindNode(nid);
    if (e == nullptr) return Status::NotFound("pst: node " + Hex(nid));
    return ReadPc(e->bid_data, e->bid_sub);
  }
  Result<Table> NodeTable(uint32_t nid) const {
    const NbtEntry* e = FindNode(nid);
    if (e == nullptr) return Status::NotFound("pst: table node " + Hex(nid));
    return ReadTc(e->bid_data, e->bid_sub);
  }

  void VerifyNdb(VerifyReport* r) const;
  void VerifyMessaging(VerifyReport* r) const;
};

namespace {

std::string Str(const PropMap& m, uint16_t id) {
  auto it = m.find(id);
  if (it == m.end()) return {};
  if (it->second.type == 0x001F) return Utf16ToUtf8(it->second.bytes);
  return it->second.bytes;  // binary or 8-bit
}
int64_t Int(const PropMap& m, uint16_t id, int64_t dflt = 0) {
  auto it = m.find(id);
  if (it == m.end()) return dflt;
  const std::string& b = it->second.bytes;
  if (b.size() == 1) return static_cast<uint8_t>(b[0]);
  if (b.size() == 2) return static_cast<int16_t>(Get16(b.data()));
  if (b.size() == 4) return static_cast<int32_t>(Get32(b.data()));
  if (b.size() == 8) return static_cast<int64_t>(Get64(b.data()));
  return dflt;
}
int64_t TimeMs(const PropMap& m, uint16_t id) {
  auto it = m.find(id);
  if (it == m.end() || it->second.bytes.size() != 8) return 0;
  return UnixMsFromFileTime(Get64(it->second.bytes.data()));
}

}  // namespace

void Reader::Impl::VerifyNdb(VerifyReport* r) const {
  auto err = [&](std::string s) { r->errors.push_back(std::move(s)); };
  const char* h = f.data();
  if (Get32(h + 4) != Crc32(h + 8, 471)) err("header: dwCRCPartial mismatch");
  if (Get32(h + 524) != Crc32(h + 8, 516)) err("header: dwCRCFull mismatch");
  if (std::memcmp(h + 8, "SM", 2) != 0) err("header: wMagicClient");
  if (static_cast<uint8_t>(h[512]) != 0x80) err("header: bSentinel");
  if (h[248] != 2) err("header: fAMapValid is not VALID_AMAP2");
  for (auto& e : tree_errors) err(e);
  r->pages = page_offsets.size();
  r->blocks = bbt.size();
  r->nodes = nbt.size();
  uint64_t eof = Get64(h + 184), amap_last = Get64(h + 192), amap_free = Get64(h + 200);
  if (eof > f.size()) err("header: ibFileEof past the end of the file");
  if (amap_last < kFirstAMapOffset || (amap_last - kFirstAMapOffset) % kAMapCoverage != 0) {
    err("header: ibAMapLast misplaced");
    return;
  }
  uint64_t intervals = (amap_last - kFirstAMapOffset) / kAMapCoverage + 1;
  if (eof != amap_last + kAMapCoverage) err("header: ibFileEof is not the end of the last AMap interval");
  // Expected allocation bitmap: map pages, B-tree pages, blocks.
  std::vector<uint8_t> bits(intervals * kPageDataSize, 0);
  auto mark = [&](uint64_t off, uint64_t size, const std::string& what) {
    if (off < kFirstAMapOffset || off + size > kFirstAMapOffset + intervals * kAMapCoverage) {
      err(what + " outside the AMap grid at " + Hex(off));
      return;
    }
    uint64_t first = (off - kFirstAMapOffset) / 64, n = (size + 63) / 64;
    for (uint64_t s = first; s < first + n; ++s) {
      uint64_t i = s / (kPageDataSize * 8), bit = s % (kPageDataSize * 8);
      uint8_t& byte = bits[i * kPageDataSize + bit / 8];
      uint8_t m = static_cast<uint8_t>(0x80 >> (bit % 8));
      if (byte & m) {
        err(what + " overlaps another allocation at " + Hex(off));
        return;
      }
      byte |= m;
    }
  };
  auto check_map_page = [&](uint64_t ib, uint8_t ptype, const char* name) {
    const char* p = f.data() + ib;
    if (ib + kPageSize > f.size()) {
      err(std::string(name) + " page missing at " + Hex(ib));
      return;
    }
    if (static_cast<uint8_t>(p[496]) != ptype || p[497] != p[496]) err(std::string(name) + " page bad ptype at " + Hex(ib));
    if (Get16(p + 498) != 0) err(std::string(name) + " page wSig not 0 at " + Hex(ib));
    if (Get32(p + 500) != Crc32(p, kPageDataSize)) err(std::string(name) + " page bad CRC at " + Hex(ib));
    if (Get64(p + 504) != ib) err(std::string(name) + " page bid is not its offset at " + Hex(ib));
  };
  for (uint64_t i = 0; i < intervals; ++i) {
    uint64_t base = IntervalBase(i);
    mark(base, kPageSize, "AMap");
    check_map_page(base, kPtypeAMap, "AMap");
    if (HasPMap(i)) mark(base + kPageSize, kPageSize, "PMap"), check_map_page(base + kPageSize, kPtypePMap, "PMap");
    if (HasFMap(i)) mark(FMapOffset(i), kPageSize, "FMap"), check_map_page(FMapOffset(i), kPtypeFMap, "FMap");
    if (HasFPMap(i)) mark(FPMapOffset(i), kPageSize, "FPMap"), check_map_page(FPMapOffset(i), kPtypeFPMap, "FPMap");
  }
  for (uint64_t ib : page_offsets) mark(ib, kPageSize, "B-tree page");
  for (const BbtEntry& b : bbt) {
    std::string where = "block " + Hex(b.bid) + " at " + Hex(b.ib);
    if (b.ib % 64 != 0 || b.ib + BlockFootprint(b.cb) > f.size() || b.cb > kMaxBlockData) {
      err(where + ": misplaced or oversized");
      continue;
    }
    mark(b.ib, BlockFootprint(b.cb), where);
    const char* t = f.data() + b.ib + BlockFootprint(b.cb) - kBlockTrailerSize;
    if (Get16(t) != b.cb) err(where + ": trailer cb differs from the BBT");
    if (Get16(t + 2) != ComputeSig(b.ib, b.bid)) err(where + ": bad wSig");
    if (Get32(t + 4) != Crc32(f.data() + b.ib, b.cb)) err(where + ": bad CRC");
    if (Get64(t + 8) != b.bid) err(where + ": trailer bid differs");
  }
  // Every AMap must equal the allocations; cbAMapFree their complement.
  uint64_t free_bytes = 0;
  for (uint64_t i = 0; i < intervals; ++i) {
    const char* p = f.data() + IntervalBase(i);
    if (IntervalBase(i) + kPageSize > f.size()) break;
    if (std::memcmp(p, &bits[i * kPageDataSize], kPageDataSize) != 0) err("AMap " + Hex(IntervalBase(i)) + ": bits differ from the allocations");
    for (size_t k = 0; k < kPageDataSize; ++k) free_bytes += 64 * (8 - __builtin_popcount(bits[i * kPageDataSize + k]));
  }
  if (free_bytes != amap_free) err("header: cbAMapFree " + std::to_string(amap_free) + " but the AMaps leave " + std::to_string(free_bytes));
  // cRef: the BBT's own reference plus one per NBT/XBLOCK/SLBLOCK reference.
  std::map<uint64_t, uint32_t> refs;
  for (const NbtEntry& n : nbt) {
    std::vector<std::string> blocks;
    Status s = DataBlocks(n.bid_data, &blocks, &refs);
    if (!s.ok()) err("node " + Hex(n.nid) + ": " + s.message());
    Subnodes subs;
    s = SubnodeEntries(n.bid_sub, &subs, &refs);
    if (!s.ok()) err("node " + Hex(n.nid) + ": " + s.message());
    for (auto& [snid, sb] : subs) {
      std::vector<std::string> sblocks;
      std::map<uint64_t, uint32_t> tmp;  // the SLENTRY already counted bid_data/bid_sub
      s = DataBlocks(sb.first, &sblocks, &tmp);
      if (s.ok()) {
        for (auto& [b, c] : tmp) if (b != (sb.first & ~uint64_t{1})) refs[b] += c;
      } else {
        err("subnode " + Hex(snid) + " of " + Hex(n.nid) + ": " + s.message());
      }
      Subnodes nested;
      std::map<uint64_t, uint32_t> tmp2;
      s = SubnodeEntries(sb.second, &nested, &tmp2);
      if (s.ok()) {
        for (auto& [b, c] : tmp2) if (b != (sb.second & ~uint64_t{1})) refs[b] += c;
        for (auto& [nn, nb] : nested) {
          std::vector<std::string> nblocks;
          std::map<uint64_t, uint32_t> tmp3;
          Status s3 = DataBlocks(nb.first, &nblocks, &tmp3);
          if (s3.ok()) {
            for (auto& [b, c] : tmp3) if (b != (nb.first & ~uint64_t{1})) refs[b] += c;
          } else {
            err("nested subnode of " + Hex(n.nid) + ": " + s3.message());
          }
        }
      } else {
        err("subnode tree of " + Hex(snid) + ": " + s.message());
      }
    }
  }
  for (const BbtEntry& b : bbt) {
    auto it = refs.find(b.bid);
    uint32_t n = it == refs.end() ? 0 : it->second;
    if (n == 0) err("block " + Hex(b.bid) + " is referenced by nothing");
    else if (b.cref != n + 1) err("block " + Hex(b.bid) + ": cRef " + std::to_string(b.cref) + " but " + std::to_string(n) + " references");
  }
}

void Reader::Impl::VerifyMessaging(VerifyReport* r) const {
  auto err = [&](std::string s) { r->errors.push_back(std::move(s)); };
  auto store = NodeProps(0x21);
  if (!store.ok()) {
    err("store: " + store.status().message());
    return;
  }
  for (uint16_t id : {0x0FF9, 0x3001, 0x35E0, 0x35E3, 0x35E7}) {
    if (!store->count(id)) err("store: missing property " + Hex(id));
  }
  for (const NbtEntry& n : nbt) {
    uint32_t type = NidType(n.nid);
    // Every top-level node must parse as what its type says.
    if (type == kNidTypeNormalFolder || type == kNidTypeSearchFolder || type == kNidTypeNormalMessage) {
      auto pc = ReadPc(n.bid_data, n.bid_sub);
      if (!pc.ok()) {
        err("node " + Hex(n.nid) + ": " + pc.status().message());
        continue;
      }
    }
    if (type == kNidTypeHierarchyTable || type == kNidTypeContentsTable || type == kNidTypeAssocContentsTable ||
        type == kNidTypeSearchContentsTable) {
      auto t = ReadTc(n.bid_data, n.bid_sub);
      if (!t.ok()) err("table " + Hex(n.nid) + ": " + t.status().message());
    }
    if (type != kNidTypeNormalFolder) continue;
    ++r->folders;
    // Folder: its three tables, hierarchy rows = child folders, contents rows = messages.
    uint32_t idx = NidIndex(n.nid);
    std::set<uint32_t> children, messages;
    std::map<uint32_t, const NbtEntry*> by_nid;
    for (const NbtEntry& c : nbt) {
      if (c.parent != n.nid || c.nid == n.nid) continue;
      uint32_t ct = NidType(c.nid);
      if (ct == kNidTypeNormalFolder || ct == kNidTypeSearchFolder) children.insert(c.nid);
      if (ct == kNidTypeNormalMessage) messages.insert(c.nid);
    }
    auto pc = NodeProps(n.nid);
    auto hier = NodeTable(MakeNid(kNidTypeHierarchyTable, idx));
    auto cont = NodeTable(MakeNid(kNidTypeContentsTable, idx));
    if (!NodeTable(MakeNid(kNidTypeAssocContentsTable, idx)).ok()) err("folder " + Hex(n.nid) + ": no FAI contents table");
    if (!pc.ok() || !hier.ok() || !cont.ok()) {
      err("folder " + Hex(n.nid) + ": missing or bad PC/hierarchy/contents table");
      continue;
    }
    auto mirror = [&](const Table& t, size_t row, uint32_t obj, const PropMap& props) {
      const PropMap& cells = t.rows[row];
      for (const Table::Col& c : t.cols) {
        uint16_t id = static_cast<uint16_t>(c.tag >> 16);
        if (id == 0x67F2 || id == 0x67F3) continue;
        auto ci = cells.find(id);
        auto pi = props.find(id);
        bool in_row = ci != cells.end(), in_obj = pi != props.end() && pi->second.type == (c.tag & 0xFFFF);
        if (in_row != in_obj) {
          err("table row " + Hex(obj) + " column " + Hex(c.tag) + (in_row ? " set but not on the object" : " missing"));
        } else if (in_row && ci->second.bytes != pi->second.bytes) {
          err("table row " + Hex(obj) + " column " + Hex(c.tag) + " differs from the object");
        }
      }
    };
    std::set<uint32_t> hrows(hier->row_ids.begin(), hier->row_ids.end());
    if (hrows != children) err("folder " + Hex(n.nid) + ": hierarchy rows differ from its child folders");
    for (size_t i = 0; i < hier->row_ids.size(); ++i) {
      auto cp = NodeProps(hier->row_ids[i]);
      if (cp.ok()) mirror(*hier, i, hier->row_ids[i], *cp);
    }
    std::set<uint32_t> crows(cont->row_ids.begin(), cont->row_ids.end());
    if (crows != messages) err("folder " + Hex(n.nid) + ": contents rows differ from its messages");
    uint32_t unread = 0;
    for (size_t i = 0; i < cont->row_ids.size(); ++i) {
      auto mp = NodeProps(cont->row_ids[i]);
      if (!mp.ok()) continue;
      ++r->messages;
      if (!(Int(*mp, 0x0E07) & 1)) ++unread;
      if (Int(*mp, 0x0E07) & 0x8) err("message " + Hex(cont->row_ids[i]) + ": MSGFLAG_UNSENT set");
      mirror(*cont, i, cont->row_ids[i], *mp);
    }
    if (Int(*pc, 0x3602, -1) != static_cast<int64_t>(messages.size())) err("folder " + Hex(n.nid) + ": content count mismatch");
    if (Int(*pc, 0x3603, -1) != unread) err("folder " + Hex(n.nid) + ": unread count mismatch");
    if ((Int(*pc, 0x360A) != 0) != !children.empty()) err("folder " + Hex(n.nid) + ": PidTagSubfolders mismatch");
  }
}

Reader::Reader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Reader::~Reader() = default;

Result<std::unique_ptr<Reader>> Reader::Open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  WXA_ASSIGN_OR_RETURN(impl->file, core::MappedFile::Open(path));
  WXA_RETURN_IF_ERROR(impl->Load());
  return std::unique_ptr<Reader>(new Reader(std::move(impl)));
}

Status Reader::Verify(VerifyReport* report) const {
  VerifyReport local;
  VerifyReport* r = report ? report : &local;
  *r = VerifyReport{};
  impl_->VerifyNdb(r);
  impl_->VerifyMessaging(r);
  if (r->errors.empty()) return Status::Ok();
  std::string msg = std::to_string(r->errors.size()) + " problem(s): ";
  for (size_t i = 0; i < r->errors.size() && i < 5; ++i) msg += (i ? "; " : "") + r->errors[i];
  return Status::Corruption(msg);
}

Result<PropMap> Reader::ReadProperties(uint32_t nid) const { return impl_->NodeProps(nid); }

Result<std::vector<FolderInfo>> Reader::Folders() const {
  std::vector<FolderInfo> out;
  WXA_ASSIGN_OR_RETURN(PropMap store, impl_->NodeProps(0x21));
  auto ipm = store.find(0x35E0);
  uint32_t ipm_nid = ipm != store.end() && ipm->second.bytes.size() == 24 ? Get32(ipm->second.bytes.data() + 20) : 0;
  std::function<Status(uint32_t, const std::string&)> walk = [&](uint32_t parent, const std::string& prefix) -> Status {
    for (const NbtEntry& n : impl_->nbt) {
      if (n.parent != parent || n.nid == parent || NidType(n.nid) != kNidTypeNormalFolder) continue;
      WXA_ASSIGN_OR_RETURN(PropMap p, impl_->ReadPc(n.bid_data, n.bid_sub));
      FolderInfo fi;
      fi.nid = n.nid;
      fi.parent_nid = parent;
      fi.name = Str(p, 0x3001);
      fi.path = prefix.empty() ? fi.name : prefix + "/" + fi.name;
      fi.content_count = static_cast<uint32_t>(Int(p, 0x3602));
      fi.unread_count = static_cast<uint32_t>(Int(p, 0x3603));
      fi.has_subfolders = Int(p, 0x360A) != 0;
      bool under_ipm = parent == ipm_nid || !prefix.empty();
      std::string child_prefix = under_ipm ? fi.path : (n.nid == ipm_nid ? std::string() : fi.path);
      if (n.nid == ipm_nid) fi.path = fi.name;
      out.push_back(fi);
      WXA_RETURN_IF_ERROR(walk(n.nid, n.nid == ipm_nid ? std::string() : child_prefix));
    }
    return Status::Ok();
  };
  WXA_RETURN_IF_ERROR(walk(0x122, ""));
  return out;
}

Result<std::vector<uint32_t>> Reader::MessageNids(uint32_t folder_nid) const {
  WXA_ASSIGN_OR_RETURN(Table t, impl_->NodeTable(MakeNid(kNidTypeContentsTable, NidIndex(folder_nid))));
  return t.row_ids;
}

Result<MessageRecord> Reader::ReadMessage(uint32_t nid) const {
  const NbtEntry* e = impl_->FindNode(nid);
  if (e == nullptr) return Status::NotFound("pst: message " + Hex(nid));
  WXA_ASSIGN_OR_RETURN(PropMap p, impl_->ReadPc(e->bid_data, e->bid_sub));
  MessageRecord rec;
  rec.nid = nid;
  Message& m = rec.message;
  m.message_class = Str(p, 0x001A);
  m.subject = Str(p, 0x0037);
  m.body_plain = Str(p, 0x1000);
  m.body_html = Str(p, 0x1013);
  m.transport_headers = Str(p, 0x007D);
  m.internet_message_id = Str(p, 0x1035);
  m.in_reply_to = Str(p, 0x1042);
  m.references = Str(p, 0x1039);
  m.sender_name = Str(p, 0x0C1A);
  m.sender_address = Str(p, 0x0C1F);
  m.display_to = Str(p, 0x0E04);
  m.display_cc = Str(p, 0x0E03);
  m.sent_time_ms = TimeMs(p, 0x0039);
  m.received_time_ms = TimeMs(p, 0x0E06);
  rec.flags = static_cast<uint32_t>(Int(p, 0x0E07));
  rec.size = static_cast<uint32_t>(Int(p, 0x0E08));
  m.read = rec.flags & 1;
  Impl::Subnodes subs;
  WXA_RETURN_IF_ERROR(impl_->SubnodeEntries(e->bid_sub, &subs, nullptr));
  auto rt = subs.find(0x692);
  if (rt != subs.end()) {
    WXA_ASSIGN_OR_RETURN(Table t, impl_->ReadTc(rt->second.first, rt->second.second));
    for (const PropMap& row : t.rows) {
      m.recipients.push_back(Recipient{Str(row, 0x3001), Str(row, 0x3003), static_cast<int>(Int(row, 0x0C15, 1))});
    }
  }
  auto at = subs.find(0x671);
  if (at != subs.end()) {
    WXA_ASSIGN_OR_RETURN(Table t, impl_->ReadTc(at->second.first, at->second.second));
    for (uint32_t anid : t.row_ids) {
      auto s = subs.find(anid);
      if (s == subs.end()) return Status::Corruption("pst: attachment subnode missing");
      WXA_ASSIGN_OR_RETURN(PropMap ap, impl_->ReadPc(s->second.first, s->second.second));
      Attachment a;
      a.filename = Str(ap, 0x3707);
      if (a.filename.empty()) a.filename = Str(ap, 0x3704);
      a.mime_type = Str(ap, 0x370E);
      a.content_id = Str(ap, 0x3712);
      a.data = Str(ap, 0x3701);
      a.size = a.data.size();
      m.attachments.push_back(std::move(a));
    }
  }
  return rec;
}

}  // namespace wxa::pst
