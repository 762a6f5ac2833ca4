// Hashes used for identity (SHA-256) and for verifying media (MD5, as WeCom
// gives it). OpenSSL's EVP does the work; these are thin, allocation-free calls.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace wxa::core {

using Sha256Digest = std::array<unsigned char, 32>;
using Md5Digest = std::array<unsigned char, 16>;

Sha256Digest Sha256(std::string_view data);
Md5Digest Md5(std::string_view data);

// Lowercase hex of any byte range.
std::string ToHex(const unsigned char* data, size_t n);
template <size_t N>
std::string ToHex(const std::array<unsigned char, N>& a) {
  return ToHex(a.data(), N);
}

// Incremental hashing for data that arrives in pieces: SHA-256, and MD5
// (media checked against the record's md5sum).
template <typename DigestT>
class HashStream {
 public:
  HashStream();
  ~HashStream();
  HashStream(const HashStream&) = delete;
  HashStream& operator=(const HashStream&) = delete;
  void Update(std::string_view data);
  DigestT Finish();

 private:
  void* ctx_;  // EVP_MD_CTX*, owned
};
using Sha256Stream = HashStream<Sha256Digest>;
using Md5Stream = HashStream<Md5Digest>;

}  // namespace wxa::core
