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

// Incremental SHA-256 for data that arrives in pieces.
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Update(std::string_view data);
  Sha256Digest Finish();

 private:
  void* ctx_;  // EVP_MD_CTX*, owned
};

// Incremental MD5, likewise (media checked against the record's md5sum).
class Md5Stream {
 public:
  Md5Stream();
  ~Md5Stream();
  Md5Stream(const Md5Stream&) = delete;
  Md5Stream& operator=(const Md5Stream&) = delete;
  void Update(std::string_view data);
  Md5Digest Finish();

 private:
  void* ctx_;  // EVP_MD_CTX*, owned
};

}  // namespace wxa::core
