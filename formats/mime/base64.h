// Base64 for MIME bodies (RFC 2045 section 6.8): the standard alphabet with
// '=' padding, a CRLF after every 76 characters and after the last line.
// Two encoders with identical output: a table-driven scalar one and an AVX2
// one, chosen at run time where the CPU has AVX2 (the tests compare them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace wxa::mime {

// Characters per encoded line (RFC 2045: at most 76) and the input bytes
// that fill one.
inline constexpr size_t kBase64LineChars = 76;
inline constexpr size_t kBase64LineBytes = kBase64LineChars / 4 * 3;  // 57

// The exact size of the encoding of n bytes, line breaks included (0 for 0).
constexpr size_t Base64MimeSize(size_t n) {
  const size_t chars = (n + 2) / 3 * 4;
  return chars + (chars + kBase64LineChars - 1) / kBase64LineChars * 2;
}

enum class Base64Impl : uint8_t { kAuto, kScalar, kAvx2 };

// True when this CPU runs the AVX2 encoder (checked once).
bool CpuHasAvx2();

// Writes Base64MimeSize(n) bytes at out (the caller sized it). kAvx2 on a
// CPU without AVX2 falls back to the scalar encoder; kAuto picks the fastest.
void Base64MimeEncode(const unsigned char* in, size_t n, char* out,
                      Base64Impl impl = Base64Impl::kAuto);

// Appends the encoding of `in` to *out.
void AppendBase64Mime(std::string_view in, std::string* out, Base64Impl impl = Base64Impl::kAuto);

}  // namespace wxa::mime
