// Base64 with CRLF every 76 columns: the scalar and AVX2 encoders against a
// plain bit-by-bit reference, on every length 0..300 and on random sizes.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "formats/mime/base64.h"

namespace wxa::mime {
namespace {

// RFC 4648 section 4, one sextet at a time, then a CRLF after each 76
// characters and after the last line (RFC 2045 section 6.8).
std::string ReferenceBase64Mime(std::string_view in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string flat;
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = 0;
    size_t n = std::min<size_t>(3, in.size() - i);
    for (size_t k = 0; k < 3; ++k) v = (v << 8) | (k < n ? static_cast<unsigned char>(in[i + k]) : 0);
    for (size_t k = 0; k < 4; ++k) flat.push_back(k <= n ? kAlphabet[(v >> (18 - 6 * k)) & 63] : '=');
  }
  std::string out;
  for (size_t i = 0; i < flat.size(); i += 76) out.append(flat.substr(i, 76)).append("\r\n");
  return out;
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string Encode(std::string_view in, Base64Impl impl) {
  std::string out = "prefix";
  AppendBase64Mime(in, &out, impl);
  EXPECT_EQ(out.substr(0, 6), "prefix");
  return out.substr(6);
}

TEST(MimeBase64, SizeFormula) {
  EXPECT_EQ(Base64MimeSize(0), 0u);
  EXPECT_EQ(Base64MimeSize(1), 6u);
  EXPECT_EQ(Base64MimeSize(57), 78u);
  EXPECT_EQ(Base64MimeSize(58), 78u + 6u);
  for (size_t n = 0; n < 1000; ++n) EXPECT_EQ(Base64MimeSize(n), ReferenceBase64Mime(std::string(n, 'x')).size()) << n;
}

TEST(MimeBase64, ScalarMatchesReferenceOnEveryLengthTo300) {
  std::mt19937_64 rng(1);
  for (size_t n = 0; n <= 300; ++n) {
    std::string in = RandomBytes(rng, n);
    ASSERT_EQ(Encode(in, Base64Impl::kScalar), ReferenceBase64Mime(in)) << "length " << n;
  }
}

TEST(MimeBase64, Avx2MatchesScalarOnEveryLengthTo300) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2";
  std::mt19937_64 rng(2);
  for (size_t n = 0; n <= 300; ++n) {
    std::string in = RandomBytes(rng, n);
    ASSERT_EQ(Encode(in, Base64Impl::kAvx2), Encode(in, Base64Impl::kScalar)) << "length " << n;
    ASSERT_EQ(Encode(in, Base64Impl::kAvx2), ReferenceBase64Mime(in)) << "length " << n;
  }
}

TEST(MimeBase64, Avx2MatchesScalarOnRandomSizes) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2";
  std::mt19937_64 rng(3);
  for (int round = 0; round < 200; ++round) {
    size_t n = rng() % (round < 150 ? 5000 : 1 << 20);
    std::string in = RandomBytes(rng, n);
    std::string a = Encode(in, Base64Impl::kAvx2);
    ASSERT_EQ(a, Encode(in, Base64Impl::kScalar)) << "size " << n;
    if (round % 20 == 0) {
      ASSERT_EQ(a, ReferenceBase64Mime(in)) << "size " << n;
    }
  }
}

TEST(MimeBase64, EverySextetAndUnalignedInput) {
  // All 64 sextets at every position of a group, from unaligned addresses.
  std::string in;
  for (int i = 0; i < 256; ++i) in.push_back(static_cast<char>(i));
  for (int i = 255; i >= 0; --i) in.push_back(static_cast<char>(i));
  for (size_t off = 0; off < 8; ++off) {
    std::string_view v = std::string_view(in).substr(off);
    EXPECT_EQ(Encode(v, Base64Impl::kScalar), ReferenceBase64Mime(v)) << off;
    EXPECT_EQ(Encode(v, Base64Impl::kAuto), ReferenceBase64Mime(v)) << off;
  }
}

}  // namespace
}  // namespace wxa::mime
