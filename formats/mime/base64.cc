#include "formats/mime/base64.h"

#include <array>
#include <bit>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define WXA_HAVE_X86 1
#else
#define WXA_HAVE_X86 0
#endif

namespace wxa::mime {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Two output characters per 12 input bits: one lookup per half of a 3-byte
// group instead of one per 6 bits (8 KiB, stays in L1).
using CharPair = std::array<char, 2>;
constexpr std::array<CharPair, 4096> kPairs = [] {
  std::array<CharPair, 4096> t{};
  for (size_t v = 0; v < t.size(); ++v) t[v] = {kAlphabet[v >> 6], kAlphabet[v & 63]};
  return t;
}();

inline void PutPair(char* out, uint32_t v12) { std::memcpy(out, kPairs[v12].data(), 2); }

// 3 bytes -> 4 characters.
inline void Encode3(const unsigned char* p, char* out) {
  const uint32_t v = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2];
  PutPair(out, v >> 12);
  PutPair(out + 2, v & 0xFFF);
}

// 6 bytes -> 8 characters with one 8-byte load: p must have 8 readable bytes.
inline void Encode6(const unsigned char* p, char* out) {
  uint64_t x;
  std::memcpy(&x, p, 8);
  if constexpr (std::endian::native == std::endian::little) x = __builtin_bswap64(x);
  const uint64_t v = x >> 16;  // the 6 bytes, big-endian, in the low 48 bits
  PutPair(out, static_cast<uint32_t>(v >> 36) & 0xFFF);
  PutPair(out + 2, static_cast<uint32_t>(v >> 24) & 0xFFF);
  PutPair(out + 4, static_cast<uint32_t>(v >> 12) & 0xFFF);
  PutPair(out + 6, static_cast<uint32_t>(v) & 0xFFF);
}

inline char* PutCrlf(char* out) {
  out[0] = '\r';
  out[1] = '\n';
  return out + 2;
}

// The last, partial line (0 < n < 57 bytes), with padding and CRLF.
char* EncodeTail(const unsigned char* p, size_t n, char* out) {
  for (; n >= 3; n -= 3, p += 3, out += 4) Encode3(p, out);
  if (n == 1) {
    out[0] = kAlphabet[p[0] >> 2];
    out[1] = kAlphabet[(p[0] & 3) << 4];
    out[2] = '=';
    out[3] = '=';
    out += 4;
  } else if (n == 2) {
    out[0] = kAlphabet[p[0] >> 2];
    out[1] = kAlphabet[((p[0] & 3) << 4) | (p[1] >> 4)];
    out[2] = kAlphabet[(p[1] & 15) << 2];
    out[3] = '=';
    out += 4;
  }
  return PutCrlf(out);
}

void EncodeScalar(const unsigned char* p, size_t n, char* out) {
  while (n >= kBase64LineBytes) {
    // 9 x 6 bytes (the 8-byte load at offset 48 ends at 56, inside the line),
    // then the last 3.
    for (int g = 0; g < 9; ++g) Encode6(p + 6 * g, out + 8 * g);
    Encode3(p + 54, out + 72);
    out = PutCrlf(out + kBase64LineChars);
    p += kBase64LineBytes;
    n -= kBase64LineBytes;
  }
  if (n > 0) EncodeTail(p, n, out);
}

#if WXA_HAVE_X86

// 24 bytes -> 32 characters (the vector method of W. Muła and D. Lemire,
// "Faster Base64 Encoding and Decoding Using AVX2 Instructions", 2018).
// Reads p[0..27]: each 128-bit lane holds 12 input bytes (loaded from p and
// p + 12), spread to one 3-byte group per 32-bit word.
__attribute__((target("avx2"))) inline __m256i EncodeBlock24(const unsigned char* p) {
  const __m256i in = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 12)), 1);
  // Group k (bytes b0 b1 b2 at 3k) becomes the word with bytes b1 b0 b2 b1:
  // its low half is b0:b1 and its high half b1:b2 as 16-bit numbers.
  const __m256i spread = _mm256_shuffle_epi8(
      in, _mm256_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10,  //
                           1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10));
  // Sextets a (b0:b1 bits 15..10) and c (b1:b2 bits 11..6) moved down to
  // bytes 0 and 2 by a high multiply; b (b0:b1 bits 9..4) and d (b1:b2 bits
  // 5..0) moved up to bytes 1 and 3 by a low multiply.
  const __m256i ac = _mm256_mulhi_epu16(_mm256_and_si256(spread, _mm256_set1_epi32(0x0FC0FC00)),
                                        _mm256_set1_epi32(0x04000040));
  const __m256i bd = _mm256_mullo_epi16(_mm256_and_si256(spread, _mm256_set1_epi32(0x003F03F0)),
                                        _mm256_set1_epi32(0x01000010));
  const __m256i sextets = _mm256_or_si256(ac, bd);
  // Sextet -> ASCII by adding an offset chosen by range: 0..25 -> 'A'
  // (+65), 26..51 -> 'a' (+71), 52..61 -> '0' (-4), 62 -> '+' (-19),
  // 63 -> '/' (-16). The offset's index: 0 for 0..25, 1 for 26..51,
  // 2..13 for 52..63.
  __m256i index = _mm256_subs_epu8(sextets, _mm256_set1_epi8(51));
  index = _mm256_sub_epi8(index, _mm256_cmpgt_epi8(sextets, _mm256_set1_epi8(25)));
  const __m256i offsets = _mm256_setr_epi8(65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 0, 0,
                                           65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 0, 0);
  return _mm256_add_epi8(sextets, _mm256_shuffle_epi8(offsets, index));
}

__attribute__((target("avx2"))) void EncodeAvx2(const unsigned char* p, size_t n, char* out) {
  while (n >= kBase64LineBytes) {
    // Two vector blocks (bytes 0..47; the second reads up to byte 51), then
    // 9 bytes with the table (the 8-byte load at 48 ends at 55).
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), EncodeBlock24(p));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32), EncodeBlock24(p + 24));
    Encode6(p + 48, out + 64);
    Encode3(p + 54, out + 72);
    out = PutCrlf(out + kBase64LineChars);
    p += kBase64LineBytes;
    n -= kBase64LineBytes;
  }
  if (n > 0) EncodeTail(p, n, out);
}

#endif

}  // namespace

bool CpuHasAvx2() {
#if WXA_HAVE_X86
  // WXA_BASE64=scalar turns the AVX2 encoder off: the CI performance gate
  // (bench/perf_gate.sh) counts the instructions of the same code on any CPU.
  static const bool has = __builtin_cpu_supports("avx2") && [] {
    const char* v = std::getenv("WXA_BASE64");
    return v == nullptr || std::strcmp(v, "scalar") != 0;
  }();
  return has;
#else
  return false;
#endif
}

void Base64MimeEncode(const unsigned char* in, size_t n, char* out, Base64Impl impl) {
#if WXA_HAVE_X86
  if (impl != Base64Impl::kScalar && CpuHasAvx2()) {
    EncodeAvx2(in, n, out);
    return;
  }
#endif
  EncodeScalar(in, n, out);
}

void AppendBase64Mime(std::string_view in, std::string* out, Base64Impl impl) {
  const size_t at = out->size();
  // resize() zero-fills what the encoder overwrites; C++23's
  // resize_and_overwrite would skip that, but it is cheap next to encoding.
  out->resize(at + Base64MimeSize(in.size()));
  Base64MimeEncode(reinterpret_cast<const unsigned char*>(in.data()), in.size(), out->data() + at, impl);
}

}  // namespace wxa::mime
