// Byte-level facts of the Unicode PST format shared by the writer and the
// reader: sizes and offsets from [MS-PST] 2.2, the CRC of 5.3, the signature
// of 5.5, little-endian helpers, UTF-8 <-> UTF-16LE and FILETIME conversion.
// Internal to formats/pst; not part of the public API.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace wxa::pst::fmt {

constexpr uint64_t kFirstAMapOffset = 0x4400;
constexpr uint64_t kDListOffset = 0x4200;
constexpr uint64_t kAMapCoverage = 496 * 8 * 64;  // 253,952 bytes per AMap page
constexpr uint64_t kPMapEvery = 8;                // one PMap per 8 AMaps
constexpr uint64_t kFMapFirst = 128;              // first FMap sits in AMap interval 128
constexpr uint64_t kFMapEvery = 496;
constexpr uint64_t kFPMapFirst = 128 * 64;  // 8192
constexpr uint64_t kFPMapEvery = 496 * 64;
constexpr size_t kPageSize = 512;
constexpr size_t kPageDataSize = 496;
constexpr size_t kHeaderSize = 564;
constexpr size_t kMaxBlockData = 8176;  // 8192 minus the 16-byte BLOCKTRAILER
constexpr size_t kBlockTrailerSize = 16;
constexpr size_t kMaxHeapAlloc = 3580;
constexpr size_t kXBlockMaxBids = (kMaxBlockData - 8) / 8;     // 1021
constexpr size_t kSLBlockMaxEntries = (kMaxBlockData - 8) / 24;  // 340
constexpr size_t kSIBlockMaxEntries = (kMaxBlockData - 8) / 16;  // 510

// Page types (PAGETRAILER.ptype).
constexpr uint8_t kPtypeBBT = 0x80, kPtypeNBT = 0x81, kPtypeFMap = 0x82, kPtypePMap = 0x83,
                  kPtypeAMap = 0x84, kPtypeFPMap = 0x85, kPtypeDList = 0x86;

// NID types ([MS-PST] 2.2.2.1).
enum NidType : uint32_t {
  kNidTypeInternal = 0x01,
  kNidTypeNormalFolder = 0x02,
  kNidTypeSearchFolder = 0x03,
  kNidTypeNormalMessage = 0x04,
  kNidTypeAttachment = 0x05,
  kNidTypeSearchUpdateQueue = 0x06,
  kNidTypeSearchCriteria = 0x07,
  kNidTypeAssocMessage = 0x08,
  kNidTypeHierarchyTable = 0x0D,
  kNidTypeContentsTable = 0x0E,
  kNidTypeAssocContentsTable = 0x0F,
  kNidTypeSearchContentsTable = 0x10,
  kNidTypeAttachmentTable = 0x11,
  kNidTypeRecipientTable = 0x12,
  kNidTypeLtp = 0x1F,
};
constexpr uint32_t MakeNid(uint32_t type, uint32_t index) { return (index << 5) | type; }
constexpr uint32_t NidType(uint32_t nid) { return nid & 0x1F; }
constexpr uint32_t NidIndex(uint32_t nid) { return nid >> 5; }

// Interval i of the AMap grid: which map pages open it.
inline bool HasPMap(uint64_t i) { return i % kPMapEvery == 0; }
inline bool HasFMap(uint64_t i) { return i >= kFMapFirst && (i - kFMapFirst) % kFMapEvery == 0; }
inline bool HasFPMap(uint64_t i) { return i >= kFPMapFirst && (i - kFPMapFirst) % kFPMapEvery == 0; }
inline uint64_t IntervalBase(uint64_t i) { return kFirstAMapOffset + i * kAMapCoverage; }
// Map pages sit one after another at the start of the interval: AMap, PMap,
// FMap, FPMap (an FMap and an FPMap never share an interval, so an FPMap is
// always at +1024, as Outlook/scanpst expect).
inline uint64_t MapPagesIn(uint64_t i) { return 1 + HasPMap(i) + HasFMap(i) + HasFPMap(i); }
inline uint64_t FMapOffset(uint64_t i) { return IntervalBase(i) + kPageSize * (1 + HasPMap(i)); }
inline uint64_t FPMapOffset(uint64_t i) { return IntervalBase(i) + kPageSize * (1 + HasPMap(i) + HasFMap(i)); }

// [MS-PST] 5.3: table-driven CRC-32 (reflected 0xEDB88320), seed 0, no final xor.
uint32_t Crc32(const void* data, size_t n, uint32_t crc = 0);
// [MS-PST] 5.5: block and page signature.
inline uint16_t ComputeSig(uint64_t ib, uint64_t bid) {
  uint64_t v = ib ^ bid;
  return static_cast<uint16_t>((v >> 16) ^ v);
}
// A block's on-disk footprint: data plus trailer, rounded up to 64 bytes.
inline uint64_t BlockFootprint(uint64_t cb) { return (cb + kBlockTrailerSize + 63) & ~uint64_t{63}; }

// Permute decoding ([MS-PST] 5.1, mpbbI), for reading Outlook-made files.
extern const uint8_t kPermuteDecode[256];

inline void Put16(char* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void Put32(char* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void Put64(char* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint16_t Get16(const char* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline uint32_t Get32(const char* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t Get64(const char* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline void Append8(std::string& s, uint8_t v) { s.push_back(static_cast<char>(v)); }
inline void Append16(std::string& s, uint16_t v) { s.append(reinterpret_cast<const char*>(&v), 2); }
inline void Append32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
inline void Append64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }

// UTF-8 -> UTF-16LE (no BOM, no terminator). Invalid bytes become U+FFFD.
std::string Utf8ToUtf16(std::string_view utf8);
// Appends the UTF-16LE form of `utf8` to *out (reusing its capacity).
void AppendUtf16(std::string_view utf8, std::string* out);
// UTF-16LE -> UTF-8. Unpaired surrogates become U+FFFD.
std::string Utf16ToUtf8(std::string_view utf16);
// FILETIME (100 ns ticks since 1601) <-> Unix milliseconds.
uint64_t FileTimeFromUnixMs(int64_t ms);
int64_t UnixMsFromFileTime(uint64_t ft);

}  // namespace wxa::pst::fmt
