#include "formats/pst/pst_format.h"

#include <isa-l/crc.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace wxa::pst::fmt {
namespace {


}  // namespace

// [MS-PST] 5.3 is the reflected CRC-32 (0xEDB88320) with neither the initial nor the final
// inversion; ISA-L's crc32_gzip_refl (the gzip CRC) applies both, so invert around it. Every
// byte of a PST passes through here: ISA-L folds with PCLMULQDQ where the CPU has it (chosen at
// run time), about 10x zlib's braided loop and 40x a byte-wise table.
uint32_t Crc32(const void* data, size_t n, uint32_t crc) {
  return ~crc32_gzip_refl(~crc, static_cast<const unsigned char*>(data), n);
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

// Strings are most of a message's bytes (bodies, the transport header block), nearly all ASCII:
// runs of 16 ASCII bytes are widened with SSE2 (x86-64's baseline), the rest is decoded one code
// point at a time. Invalid UTF-8 becomes U+FFFD, one per bad byte. Each input byte yields at most
// one UTF-16 unit (a 4-byte sequence yields two), so 2 bytes of output per byte of input bound it.
std::string Utf8ToUtf16(std::string_view s) {
  std::string out;
  AppendUtf16(s, &out);
  return out;
}

void AppendUtf16(std::string_view s, std::string* dst) {
  const size_t base = dst->size();
  dst->resize(base + s.size() * 2);
  std::string& out = *dst;
  auto* o = reinterpret_cast<uint8_t*>(out.data() + base);
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const uint8_t* const end = p + s.size();
  auto put = [&o](uint32_t u) {
    o[0] = static_cast<uint8_t>(u & 0xFF);
    o[1] = static_cast<uint8_t>(u >> 8);
    o += 2;
  };
  auto cont = [](uint8_t b) { return (b & 0xC0) == 0x80; };
  while (p < end) {
#if defined(__SSE2__)
    while (end - p >= 16) {
      __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      if (_mm_movemask_epi8(v) != 0) break;
      const __m128i zero = _mm_setzero_si128();
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_unpacklo_epi8(v, zero));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16), _mm_unpackhi_epi8(v, zero));
      p += 16;
      o += 32;
    }
    if (p == end) break;
#endif
    const uint8_t c = *p;
    const size_t left = static_cast<size_t>(end - p);
    uint32_t cp = 0xFFFD;
    size_t len = 1;
    if (c < 0x80) {
      cp = c;
    } else if ((c >> 5) == 0x6 && left >= 2 && cont(p[1])) {
      uint32_t v = ((c & 0x1Fu) << 6) | (p[1] & 0x3Fu);
      if (v >= 0x80) cp = v, len = 2;
    } else if ((c >> 4) == 0xE && left >= 3 && cont(p[1]) && cont(p[2])) {
      uint32_t v = ((c & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
      if (v >= 0x800 && (v < 0xD800 || v > 0xDFFF)) cp = v, len = 3;
    } else if ((c >> 3) == 0x1E && left >= 4 && cont(p[1]) && cont(p[2]) && cont(p[3])) {
      uint32_t v = ((c & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
      if (v >= 0x10000 && v <= 0x10FFFF) cp = v, len = 4;
    }
    p += len;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      put(0xD800 + (cp >> 10));
      put(0xDC00 + (cp & 0x3FF));
    } else {
      put(cp);
    }
  }
  out.resize(static_cast<size_t>(o - reinterpret_cast<uint8_t*>(out.data())));
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
