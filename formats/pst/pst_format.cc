#include "formats/pst/pst_format.h"

#include <array>

namespace wxa::pst::fmt {
namespace {

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
    t[i] = c;
  }
  return t;
}
const std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

void AppendUtf16Unit(std::string& out, uint16_t u) {
  out.push_back(static_cast<char>(u & 0xFF));
  out.push_back(static_cast<char>(u >> 8));
}

}  // namespace

uint32_t Crc32(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) crc = kCrcTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

const uint8_t kPermuteDecode[256] = {
    71,  241, 180, 230, 11,  106, 114, 72,  133, 78,  158, 235, 226, 248, 148, 83,  224, 187, 160, 2,
    232, 90,  9,   171, 219, 227, 186, 198, 124, 195, 16,  221, 57,  5,   150, 48,  245, 55,  96,  130,
    140, 201, 19,  74,  107, 29,  243, 251, 143, 38,  151, 202, 145, 23,  1,   196, 50,  45,  110, 49,
    149, 255, 217, 35,  209, 0,   94,  121, 220, 68,  59,  26,  40,  197, 97,  87,  32,  144, 61,  131,
    185, 67,  190, 103, 210, 70,  66,  118, 192, 109, 91,  126, 178, 15,  22,  41,  60,  169, 3,   84,
    13,  218, 93,  223, 246, 183, 199, 98,  205, 141, 6,   211, 105, 92,  134, 214, 20,  247, 165, 102,
    117, 172, 177, 233, 69,  33,  112, 12,  135, 159, 116, 164, 34,  76,  111, 191, 31,  86,  170, 46,
    179, 120, 51,  80,  176, 163, 146, 188, 207, 25,  28,  167, 99,  203, 30,  77,  62,  75,  27,  155,
    79,  231, 240, 238, 173, 58,  181, 89,  4,   234, 64,  85,  37,  81,  229, 122, 137, 56,  104, 82,
    123, 252, 39,  174, 215, 189, 250, 7,   244, 204, 142, 95,  239, 53,  156, 132, 43,  21,  213, 119,
    52,  73,  182, 18,  10,  127, 113, 136, 253, 157, 24,  65,  125, 147, 216, 88,  44,  206, 254, 36,
    175, 222, 184, 54,  200, 161, 128, 166, 153, 152, 168, 47,  14,  129, 101, 115, 228, 194, 162, 138,
    212, 225, 17,  208, 8,   139, 42,  242, 237, 154, 100, 63,  193, 108, 249, 236};

std::string Utf8ToUtf16(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 2);
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<uint8_t>(s[i]);
    uint32_t cp = 0xFFFD;
    size_t len = 1;
    if (c < 0x80) {
      cp = c;
    } else if ((c >> 5) == 0x6 && i + 1 < s.size()) {
      len = 2;
      cp = ((c & 0x1F) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3F);
      if ((static_cast<uint8_t>(s[i + 1]) & 0xC0) != 0x80 || cp < 0x80) cp = 0xFFFD, len = 1;
    } else if ((c >> 4) == 0xE && i + 2 < s.size()) {
      len = 3;
      cp = ((c & 0x0F) << 12) | ((static_cast<uint8_t>(s[i + 1]) & 0x3F) << 6) |
           (static_cast<uint8_t>(s[i + 2]) & 0x3F);
      if ((static_cast<uint8_t>(s[i + 1]) & 0xC0) != 0x80 ||
          (static_cast<uint8_t>(s[i + 2]) & 0xC0) != 0x80 || cp < 0x800 ||
          (cp >= 0xD800 && cp <= 0xDFFF))
        cp = 0xFFFD, len = 1;
    } else if ((c >> 3) == 0x1E && i + 3 < s.size()) {
      len = 4;
      cp = ((c & 0x07) << 18) | ((static_cast<uint8_t>(s[i + 1]) & 0x3F) << 12) |
           ((static_cast<uint8_t>(s[i + 2]) & 0x3F) << 6) | (static_cast<uint8_t>(s[i + 3]) & 0x3F);
      if ((static_cast<uint8_t>(s[i + 1]) & 0xC0) != 0x80 ||
          (static_cast<uint8_t>(s[i + 2]) & 0xC0) != 0x80 ||
          (static_cast<uint8_t>(s[i + 3]) & 0xC0) != 0x80 || cp < 0x10000 || cp > 0x10FFFF)
        cp = 0xFFFD, len = 1;
    }
    i += len;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      AppendUtf16Unit(out, static_cast<uint16_t>(0xD800 + (cp >> 10)));
      AppendUtf16Unit(out, static_cast<uint16_t>(0xDC00 + (cp & 0x3FF)));
    } else {
      AppendUtf16Unit(out, static_cast<uint16_t>(cp));
    }
  }
  return out;
}

std::string Utf16ToUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t n = s.size() / 2;
  auto unit = [&](size_t k) {
    return static_cast<uint16_t>(static_cast<uint8_t>(s[2 * k]) |
                                 (static_cast<uint8_t>(s[2 * k + 1]) << 8));
  };
  for (size_t k = 0; k < n; ++k) {
    uint32_t cp = unit(k);
    if (cp >= 0xD800 && cp <= 0xDBFF && k + 1 < n && unit(k + 1) >= 0xDC00 && unit(k + 1) <= 0xDFFF) {
      cp = 0x10000 + ((cp - 0xD800) << 10) + (unit(k + 1) - 0xDC00);
      ++k;
    } else if (cp >= 0xD800 && cp <= 0xDFFF) {
      cp = 0xFFFD;
    }
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

constexpr int64_t kUnixEpochAsFileTimeMs = 11644473600000LL;

uint64_t FileTimeFromUnixMs(int64_t ms) {
  return static_cast<uint64_t>(ms + kUnixEpochAsFileTimeMs) * 10000ULL;
}
int64_t UnixMsFromFileTime(uint64_t ft) {
  return static_cast<int64_t>(ft / 10000ULL) - kUnixEpochAsFileTimeMs;
}

}  // namespace wxa::pst::fmt
